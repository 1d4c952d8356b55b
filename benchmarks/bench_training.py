"""Training time of the risk model's LightGBM on 1 M and 10 M rows.

Run: ``.venv/bin/python benchmarks/bench_training.py [--rows 1000000 10000000] [--trees 300]``.

Rows are the features of a 1 M-declaration synthetic scenario labelled with its ground
truth (planted trafficking), resampled with replacement to each size (float32 matrix, so
10 M rows x ~140 columns is ~5.6 GB before LightGBM bins it). Each size trains in a fresh
subprocess with the project's parameters (``DEFAULT_PARAMS``, 2 threads, categorical
columns as in ``fit_risk_model``) for a fixed number of trees, no early stopping; binning
(Dataset construction) and boosting are timed separately. Baseline: the same data and trees
with LightGBM's defaults (``num_leaves`` 31, no bagging, no categorical handling).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.scale_common import DEFAULT_DATA, header, in_subprocess, peak_rss_mib, scenario


def _features(folder: Path, cache: Path) -> Path:
    """The scenario's model matrix and labels, built once."""
    from cites_risk.features.pipeline import FEATURE_VERSION, build_features, collect_features

    path = cache / f"train-matrix-v{FEATURE_VERSION}.parquet"
    if path.exists():
        return path
    from cites_risk.features.history import History
    from cites_risk.features.reference import load_reference
    from cites_risk.models.preprocess import CategoryCodes, UnitValueBands
    from cites_risk.models.risk_model import categorical_columns, model_columns

    decl = pl.read_parquet(folder / "declarations")
    history = History(
        decl.lazy(),
        pl.scan_parquet(folder / "offences.parquet"),
        pl.scan_parquet(folder / "inspections"),
    )
    feats = collect_features(build_features(decl.lazy(), history, load_reference()))
    truth = pl.read_parquet(folder / "truth")
    cats, cols = categorical_columns(), model_columns()
    prepared = (
        CategoryCodes(cats).fit(feats).transform(UnitValueBands().fit(feats).transform(feats))
    )
    out = prepared.select(pl.col(c).cast(pl.Float32) for c in cols).with_columns(
        truth.get_column("is_trafficking").cast(pl.Float32).alias("__y")
    )
    out.write_parquet(path)
    return path


def run(path: Path, rows: int, trees: int, mode: str) -> dict[str, Any]:
    import lightgbm as lgb

    from cites_risk.models.risk_model import DEFAULT_PARAMS, categorical_columns

    frame = pl.read_parquet(path)
    y_all = frame.get_column("__y").to_numpy()
    x_all = frame.drop("__y").to_numpy()
    cols = frame.drop("__y").columns
    del frame
    idx = np.random.default_rng(0).integers(0, len(y_all), rows)
    x, y = x_all[idx], y_all[idx]
    del x_all
    if mode == "project":
        params = {**DEFAULT_PARAMS, "force_row_wise": True}
        cats = categorical_columns()
    else:
        params = {"objective": "binary", "verbose": -1, "num_threads": 2}
        cats = []
    t0 = time.perf_counter()
    data = lgb.Dataset(x, y, feature_name=cols, categorical_feature=cats or "auto").construct()
    t1 = time.perf_counter()
    lgb.train(params, data, num_boost_round=trees)
    t2 = time.perf_counter()
    return {"bin_s": t1 - t0, "boost_s": t2 - t1}


def main(argv: list[str]) -> None:
    if argv[:1] == ["--child"]:
        _, matrix, rows, trees, mode = argv
        result = run(Path(matrix), int(rows), int(trees), mode)
        result["peak_rss_mib"] = peak_rss_mib()
        print(json.dumps(result))
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, nargs="+", default=[1_000_000, 10_000_000])
    parser.add_argument("--trees", type=int, default=300)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument(
        "--modes", nargs="+", choices=("project", "defaults"), default=["project", "defaults"]
    )
    args = parser.parse_args(argv)
    header()
    files = scenario(args.data, 1_000_000, n_offences=30_000)
    path = _features(files.folder, files.folder)
    for rows in args.rows:
        for mode in args.modes:
            r = in_subprocess(__file__, str(path), str(rows), str(args.trees), mode)
            total = r["bin_s"] + r["boost_s"]
            print(
                f"{rows:>11,} rows, {args.trees} trees, {mode:<8}: {total:7.1f} s "
                f"(binning {r['bin_s']:.1f} s, boosting {r['boost_s']:.1f} s; "
                f"{rows * args.trees / r['boost_s'] / 1e6:.1f} M row-trees/s) "
                f"peak RSS {r['peak_rss_mib']:,.0f} MiB"
            )


if __name__ == "__main__":
    main(sys.argv[1:])
