"""``cites-risk ingest``: a source loaded in chunks against the same source loaded in one
piece, in the same run, at several sizes.

The file repeats the LEMIS sample's 2021 lines as later shipments (``bench_cli_score``'s
``lemis_like``): every line is a declaration and its inspection result. "one piece" runs
with ``--chunk-rows`` as large as the file, which reads, checks and stores it whole, as
ingest did before it read in chunks. Each run is a fresh process with an empty home, and
prints wall time, throughput and peak RSS: in chunks, the peak should not grow with the
file. Run: ``.venv/bin/python -m benchmarks.bench_ingest [--rows 500000 1000000 2000000]``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

from benchmarks.bench_api import ORG
from benchmarks.bench_cli_score import lemis_like, run_mode
from cites_risk.profiling.workflows import INGEST_CHUNK_ROWS


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, nargs="+", default=[500_000, 1_000_000, 2_000_000])
    parser.add_argument("--chunk-rows", type=int, default=INGEST_CHUNK_ROWS)
    args = parser.parse_args()
    print(f"$ {sys.executable} -m benchmarks.bench_ingest " + " ".join(sys.argv[1:]))
    work = Path(tempfile.mkdtemp(prefix="cites-ingest-"))
    try:
        for rows in args.rows:
            source = lemis_like(rows, work / f"lines-{rows}.csv")
            print(f"\n{rows:,} LEMIS-like lines ({source.stat().st_size / 2**20:.0f} MiB CSV)")
            results = {}
            for name, chunk in (("one piece", rows), ("chunks", args.chunk_rows)):
                home = work / "home"
                shutil.rmtree(home, ignore_errors=True)
                env = {
                    "PATH": str(Path(sys.executable).parent),
                    "CITES_RISK_HOME": str(home),
                    "CITES_RISK_OUTPUT_DIR": str(work / "output"),
                    "CITES_RISK_ORGANISATION": ORG,
                }
                command = ["ingest", str(source), "--chunk-rows", str(chunk)]
                r = results[name] = run_mode(name, command, env)
                print(
                    f"{name:<9} (--chunk-rows {chunk:>9,}) {r['seconds']:7.1f} s  "
                    f"{rows / r['seconds']:9,.0f} rows/s  peak RSS {r['peak_rss_mib']:6,.0f} MiB"
                )
            whole, chunks = results["one piece"], results["chunks"]
            print(
                f"chunks against one piece: {whole['seconds'] / chunks['seconds']:.2f}x the "
                f"speed, {chunks['peak_rss_mib'] / whole['peak_rss_mib']:.2f}x the peak memory"
            )
            source.unlink()
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
