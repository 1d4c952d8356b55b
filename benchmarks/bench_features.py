"""``build_features`` on 1 M synthetic declarations against a ~100 k-record history.

Run: ``.venv/bin/python benchmarks/bench_features.py [--rows 1000000] [--offences 30000]``.

Three stages, each in a fresh subprocess (its own peak RSS), on the same data:

* ``build_features``: the whole feature set (every column the model reads);
* ``history subset (polars)``: the project's entity-history features for importer, exporter,
  declarant and office only (prior declarations, offences, decayed offences, days since the
  last offence, inspections, smoothed hit rate, recent hits, offence rate), the same work as
  the baseline;
* ``pandas baseline``: a straightforward pandas implementation of that subset (a sort and
  a ``merge_asof`` per key and event type: ``pandas_scoring.key_history``, which the pandas
  stage of ``bench_scoring`` uses for every key), checked equal to the polars subset.

The history is the scenario itself (every declaration sees the ones lodged strictly before
it), its offence records and its inspection results.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.scale_common import (
    DEFAULT_DATA,
    header,
    in_subprocess,
    peak_rss_mib,
    scenario,
)
from cites_risk.features.pipeline import HISTORY_STATS

KEYS = ("importer", "exporter", "declarant", "office")


def _load(folder: Path) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    return (
        pl.read_parquet(folder / "declarations"),
        pl.read_parquet(folder / "offences.parquet"),
        pl.read_parquet(folder / "inspections"),
    )


def stage_full(folder: Path) -> dict[str, Any]:
    from cites_risk.features.history import History
    from cites_risk.features.pipeline import build_features, collect_features
    from cites_risk.features.reference import load_reference

    decl, off, insp = _load(folder)
    ref = load_reference()
    history = History(decl.lazy(), off.lazy(), insp.lazy())
    t0 = time.perf_counter()
    out = collect_features(build_features(decl.lazy(), history, ref))
    return {"seconds": time.perf_counter() - t0, "shape": list(out.shape)}


def _polars_subset(decl: pl.DataFrame, off: pl.DataFrame, insp: pl.DataFrame) -> pl.DataFrame:
    from cites_risk.features import pipeline as p
    from cites_risk.features.contract import TIMESTAMP, D
    from cites_risk.features.history import IDX, TIME, History

    base = decl.lazy().with_row_index(IDX).with_columns(pl.col(D.DECLARED_AT).cast(TIMESTAMP))
    keys = [k for k in p.HISTORY_KEYS if k.name in KEYS]
    history = History(p.lodged(base, decl.lazy(), keys).cache(), off.lazy(), insp.lazy())
    targets = base.with_columns(pl.col(D.DECLARED_AT).alias(TIME))
    return p.collect_features(p.key_history(targets, history, keys))


def stage_subset(folder: Path) -> dict[str, Any]:
    decl, off, insp = _load(folder)
    t0 = time.perf_counter()
    out = _polars_subset(decl, off, insp)
    return {"seconds": time.perf_counter() - t0, "shape": list(out.shape)}


def pandas_subset(decl: pl.DataFrame, off: pl.DataFrame, insp: pl.DataFrame) -> Any:
    """The baseline: plain pandas, per key a sort and merge_asof for each event type.

    The same code as the pandas stage of ``bench_scoring`` (``pandas_scoring.key_history``),
    with every declaration both a target and part of the history.
    """
    from benchmarks.pandas_scoring import key_history, micros

    d = decl.select("declaration_id", "declared_at", *KEYS).to_pandas()
    o = off.select("detected_at", *KEYS).to_pandas()
    i = insp.select("declaration_id", "inspected_at", "outcome").to_pandas()
    d["t"] = micros(d["declared_at"])
    o["t"] = micros(o["detected_at"])
    return key_history(d, d, o, i, [(key, True) for key in KEYS])


def stage_pandas(folder: Path) -> dict[str, Any]:
    decl, off, insp = _load(folder)
    t0 = time.perf_counter()
    out = pandas_subset(decl, off, insp)
    seconds = time.perf_counter() - t0
    # Same answers as the project's polars implementation (checked outside the timing).
    ref = _polars_subset(decl, off, insp)
    worst = 0.0
    for key in KEYS:
        for stat in HISTORY_STATS:
            a = out[f"{key}_{stat}"].to_numpy(dtype=float)
            b = ref[f"{key}_{stat}"].to_numpy().astype(float)
            # A value on one side only is a difference; nulls on both sides are not.
            diff = np.where(np.isnan(a) & np.isnan(b), 0.0, np.abs(a - b))
            worst = max(worst, float(np.nan_to_num(diff, nan=np.inf).max()))
    return {"seconds": seconds, "shape": list(out.shape), "max_abs_diff": worst}


STAGES = {"full": stage_full, "subset": stage_subset, "pandas": stage_pandas}


def main(argv: list[str]) -> None:
    if argv[:1] == ["--child"]:
        result = STAGES[argv[1]](Path(argv[2]))
        result["peak_rss_mib"] = peak_rss_mib()
        import json

        print(json.dumps(result))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--offences", type=int, default=30_000)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args(argv)
    header()
    files = scenario(args.data, args.rows, n_offences=args.offences)
    sizes = files.manifest()["sizes"]
    print(
        f"{sizes['declarations']:,} declarations; history: {sizes['offences']:,} offences + "
        f"{sizes['inspections']:,} inspection results "
        f"(= {sizes['offences'] + sizes['inspections']:,} records) + the declarations themselves"
    )
    results = {name: in_subprocess(__file__, name, str(files.folder)) for name in STAGES}
    for name, label in (
        ("full", "build_features (all features)"),
        ("subset", "history subset, polars"),
        ("pandas", "history subset, pandas baseline"),
    ):
        r = results[name]
        print(
            f"{label:<34} {r['seconds']:7.2f} s  {args.rows / r['seconds']:>10,.0f} rows/s  "
            f"{r['shape'][1]:>4} columns  peak RSS {r['peak_rss_mib']:6.0f} MiB"
        )
    ratio = results["pandas"]["seconds"] / results["subset"]["seconds"]
    print(
        f"polars subset vs pandas: {ratio:.1f}x faster "
        f"(max |difference| {results['pandas']['max_abs_diff']:.1e})"
    )
    print(
        f"build_features target <= 10 s: {'met' if results['full']['seconds'] <= 10 else 'NOT met'}"
    )


if __name__ == "__main__":
    main(sys.argv[1:])
