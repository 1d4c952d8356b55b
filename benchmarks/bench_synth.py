"""Throughput and peak memory of the scenario generator.

Run: ``.venv/bin/python benchmarks/bench_synth.py [rows ...]`` (default: 1 M and 5 M).
Each size runs in a fresh subprocess so that peak RSS (``ru_maxrss``) belongs to that size
alone; generation is timed without writing, and writing is timed separately.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DEFAULT_SIZES = (1_000_000, 5_000_000)


def _measure(rows: int) -> dict[str, float]:
    from cites_risk.features.reference import load_reference
    from cites_risk.profiling.synth import Scenario, SynthConfig, write_scenario

    reference = load_reference()
    t0 = time.perf_counter()
    scenario = Scenario(SynthConfig(n_declarations=rows, seed=0), reference)
    built = time.perf_counter() - t0
    t1 = time.perf_counter()
    generated = sum(chunk.declarations.height for chunk in scenario.chunks())
    gen_s = time.perf_counter() - t1
    with tempfile.TemporaryDirectory() as tmp:
        t2 = time.perf_counter()
        write_scenario(Path(tmp), rows, seed=0, reference=reference)
        write_s = time.perf_counter() - t2
    assert generated == rows
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {
        "rows": rows,
        "world_s": round(built, 3),
        "generate_s": round(gen_s, 3),
        "rows_per_s": round(rows / gen_s),
        "generate_and_write_s": round(write_s, 3),
        "written_rows_per_s": round(rows / write_s),
        "peak_rss_mib": round(peak_mib, 1),
    }


def main(argv: list[str]) -> None:
    if argv[:1] == ["--child"]:
        print(json.dumps(_measure(int(argv[1]))))
        return
    sizes = [int(a) for a in argv] or list(DEFAULT_SIZES)
    for rows in sizes:
        child = subprocess.run(
            [sys.executable, __file__, "--child", str(rows)],
            check=True,
            capture_output=True,
            text=True,
        )
        result = json.loads(child.stdout.strip().splitlines()[-1])
        print(
            f"{result['rows']:>10,} rows: generate {result['generate_s']:6.2f} s "
            f"({result['rows_per_s']:>10,} rows/s), with Parquet "
            f"{result['generate_and_write_s']:6.2f} s ({result['written_rows_per_s']:>9,} rows/s), "
            f"peak RSS {result['peak_rss_mib']:7.1f} MiB"
        )


if __name__ == "__main__":
    main(sys.argv[1:])
