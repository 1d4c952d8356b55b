"""``cites-risk score``: a file scored in chunks (``--chunk-rows``) against the same file
scored whole, in the same run.

The file repeats the LEMIS sample's 2021 lines as later shipments (new control numbers, a
week apart per copy) up to ``--rows``; the home is trained on the sample as
``bench_api`` trains it. Each mode runs the command in a fresh process of its own and
prints its wall time, throughput and peak RSS. Run:
``.venv/bin/python -m benchmarks.bench_cli_score [--rows 200000] [--chunk-rows 50000]``.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

from benchmarks.bench_api import ORG, trained_home
from cites_risk.profiling.sources import LEMIS_SAMPLE


def lemis_like(rows: int, path: Path) -> Path:
    text = gzip.decompress(LEMIS_SAMPLE.read_bytes()).decode()
    base = pl.read_csv(io.StringIO(text), infer_schema=False).filter(
        pl.col("shipment_year") == "2021"
    )
    shipped = pl.col("shipment_date").str.to_datetime(time_zone="UTC")
    copies = [
        base.with_columns(
            (pl.col("control_number") + f"-{k}").alias("control_number"),
            (shipped + pl.duration(days=7 * k))
            .dt.strftime("%Y-%m-%dT%H:%M:%SZ")
            .alias("shipment_date"),
        )
        for k in range(rows // base.height + 1)
    ]
    pl.concat(copies).head(rows).write_csv(path)
    return path


#: Runs the command in this process, then reports its own peak RSS: a child per mode.
_CHILD = """
import json, resource, sys
from cites_risk.api.cli import app
try:
    app(sys.argv[1:], standalone_mode=False)
finally:
    print(json.dumps({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def run_mode(name: str, args: list[str], env: dict[str, str]) -> dict[str, float]:
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, *args], env=env, capture_output=True, text=True
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    last = done.stdout.strip().splitlines()[-1]
    return {"seconds": seconds, **json.loads(last)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--chunk-rows", type=int, default=50_000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="cites-cli-score-"))
    try:
        trained = work / "trained"
        trained_home(trained)
        source = lemis_like(args.rows, work / "lines.csv")
        print(f"{args.rows:,} LEMIS-like lines ({source.stat().st_size / 2**20:.0f} MiB CSV)")
        modes = {
            "whole": ["--out", str(work / "whole")],
            "chunks": ["--chunk-rows", str(args.chunk_rows), "--out", str(work / "chunks")],
        }
        results = {}
        for name, extra in modes.items():
            home = work / f"home-{name}"
            shutil.copytree(trained, home)  # each mode lodges the file into its own history
            env = {
                "PATH": str(Path(sys.executable).parent),
                "CITES_RISK_HOME": str(home),
                "CITES_RISK_OUTPUT_DIR": str(work / "output"),
                "CITES_RISK_ORGANISATION": ORG,
            }
            r = results[name] = run_mode(name, ["score", str(source), *extra], env)
            print(
                f"{name:<7} {r['seconds']:7.1f} s  {args.rows / r['seconds']:9,.0f} rows/s  "
                f"peak RSS {r['peak_rss_mib']:6,.0f} MiB"
            )
        whole, chunks = results["whole"], results["chunks"]
        print(
            f"chunks against whole: {whole['seconds'] / chunks['seconds']:.2f}x the speed, "
            f"{chunks['peak_rss_mib'] / whole['peak_rss_mib']:.2f}x the peak memory"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
