"""LightGBM vs compiled predictions and explanations of a 300-tree risk model: rows/s, ratio.

Run: ``.venv/bin/python benchmarks/bench_predict.py [--rows 1000000] [--trees 300]``.
The model is trained once on a synthetic scenario and cached under ``--data``; compilation
is timed once (cold) and then loaded from the cache (warm). Both predictors use the same
float64 matrix and the same number of threads; the compiled margins are checked against
LightGBM's (max absolute difference printed). Then the same for explanations: LightGBM's
``pred_contrib`` against ``models/treeshap.py`` on the first ``--shap-rows`` rows.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.scale_common import DEFAULT_DATA, header, peak_rss_mib, percentiles, trained_model


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--trees", type=int, default=300)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--shap-rows", type=int, default=5_000)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = parser.parse_args()
    header()
    from cites_risk.models.compiled import (
        CompiledPredictor,
        LightGBMPredictor,
        cache_dir_for,
        compile_booster,
    )
    from cites_risk.models.risk_model import RiskModel

    folder = trained_model(args.data, trees=args.trees)
    model = RiskModel.load(folder)
    print(f"model: {model.booster.num_trees()} trees, {len(model.columns)} columns ({folder})")
    rng = np.random.default_rng(0)
    # Realistic inputs: rows of the scenario's own features, resampled to --rows.
    sample = pl.read_parquet(
        next((args.data).glob("synth-1000000-*/declarations/part-00000.parquet"))
    )
    from cites_risk.features.history import History
    from cites_risk.features.pipeline import build_features
    from cites_risk.features.reference import load_reference

    feats = build_features(sample.head(100_000).lazy(), History.empty(), load_reference()).collect()
    base = model.matrix(feats)
    x = np.ascontiguousarray(base[rng.integers(0, base.shape[0], args.rows)])

    cache = cache_dir_for(folder)
    shutil.rmtree(cache, ignore_errors=True)
    t0 = time.perf_counter()
    compile_booster(model.booster, cache, threads=args.threads)
    cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled = CompiledPredictor.for_model(model, cache, threads=args.threads)
    warm = time.perf_counter() - t0
    print(f"compile {cold:.1f} s (cold), load from cache {warm:.2f} s; backend {compiled.backend}")
    lgbm = LightGBMPredictor(model.booster, threads=args.threads)

    def rate(predict: object) -> tuple[float, np.ndarray]:
        best, out = float("inf"), np.zeros(0)
        for _ in range(args.repeat):
            t = time.perf_counter()
            out = predict.margin(x)  # type: ignore[attr-defined]
            best = min(best, time.perf_counter() - t)
        return args.rows / best, out

    r_lgb, m_lgb = rate(lgbm)
    r_cmp, m_cmp = rate(compiled)
    print(f"LightGBM  {r_lgb:>12,.0f} rows/s  ({args.threads} threads, best of {args.repeat})")
    print(f"compiled  {r_cmp:>12,.0f} rows/s  -> {r_cmp / r_lgb:.2f}x LightGBM")
    print(f"max |compiled - LightGBM| margin: {np.max(np.abs(m_cmp - m_lgb)):.2e}")
    # Single-declaration latency (the API's path): one row, one thread.
    single = CompiledPredictor.for_model(model, cache, threads=1)
    for name, p in (
        ("LightGBM", LightGBMPredictor(model.booster, threads=1)),
        ("compiled", single),
    ):
        samples = []
        for i in range(300):
            row = x[i : i + 1]
            t = time.perf_counter()
            p.margin(row)
            samples.append(time.perf_counter() - t)
        print(f"one row {name:<9} {percentiles(samples)}")
    explanations(model.booster, x[: args.shap_rows], args.threads)
    print(f"peak RSS {peak_rss_mib():.0f} MiB")


def explanations(booster: Any, x: np.ndarray, threads: int) -> None:
    """TreeSHAP: LightGBM's ``pred_contrib`` against the compiled one, same rows and threads."""
    from cites_risk.models.treeshap import TreeShap

    compiled = TreeShap(booster, threads=threads)
    compiled.contributions(x[:1])  # loads the compiled kernel
    t = time.perf_counter()
    expected = booster.predict(x, pred_contrib=True, num_threads=threads)
    r_lgb = len(x) / (time.perf_counter() - t)
    t = time.perf_counter()
    got = compiled.contributions(x)
    r_cmp = len(x) / (time.perf_counter() - t)
    print(f"TreeSHAP, {len(x):,} rows, {threads} threads:")
    print(f"  LightGBM pred_contrib {r_lgb:>9,.0f} rows/s")
    print(f"  compiled              {r_cmp:>9,.0f} rows/s  -> {r_cmp / r_lgb:.2f}x LightGBM")
    print(f"  max |compiled - LightGBM| contribution: {np.max(np.abs(got - expected)):.2e}")
    one = TreeShap(booster, threads=1)
    for name, explain in (
        ("LightGBM", lambda row: booster.predict(row, pred_contrib=True, num_threads=1)),
        ("compiled", one.contributions),
    ):
        samples = []
        for i in range(300):
            row = x[i : i + 1]
            t = time.perf_counter()
            explain(row)
            samples.append(time.perf_counter() - t)
        print(f"  one row {name:<9} {percentiles(samples)}")


if __name__ == "__main__":
    main()
