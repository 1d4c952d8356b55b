"""Shared machinery of the benchmark scripts: load, build features once, train per seed.

Each benchmark reads its source through the project's mapping (the same adapter the CLI
uses), builds point-in-time features with the whole file as history (every feature only
looks strictly before each declaration), trains with :func:`train_and_evaluate` for each
seed and prints per-seed results, mean ± sd, the baselines, run time and peak memory.
"""

from __future__ import annotations

import math
import resource
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import polars as pl

from cites_risk.features.contract import OFFENCE, D
from cites_risk.features.history import History
from cites_risk.features.pipeline import FEATURE_SET, FEATURE_VERSION, build_features
from cites_risk.features.reference import Reference, load_reference
from cites_risk.models.evaluation import ScoreReport, evaluate
from cites_risk.models.training import (
    FIRST_HIT,
    FIRST_RESULT,
    LABEL,
    Split,
    TrainResult,
    known_by,
    label_frame,
    train_and_evaluate,
)
from cites_risk.profiling.sources import load_mapping, load_records

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
METRICS = ("average_precision", "roc_auc", "precision_at_5", "precision_at_10", "recall_at_5")


def utc(day: str) -> datetime:
    return datetime.fromisoformat(day).replace(tzinfo=UTC)


@dataclass
class Dataset:
    name: str
    declarations: pl.DataFrame
    inspections: pl.DataFrame
    extras: dict[str, str]
    raw: pl.DataFrame


def load(paths: Sequence[Path], mapping_name: str, reference: Reference) -> Dataset:
    """Declarations and inspection results of one or more files through a mapping."""
    mapping = load_mapping(mapping_name)
    decls, insps, raws = [], [], []
    for path in paths:
        decls.append(load_records(path, mapping, "declaration", reference).accepted)
        insps.append(load_records(path, mapping, "inspection", reference).accepted)
        raws.append(pl.read_csv(path, infer_schema=False, null_values=list(mapping.null_values)))
    return Dataset(
        mapping_name,
        pl.concat(decls, how="diagonal_relaxed"),
        pl.concat(insps, how="diagonal_relaxed"),
        mapping.extra_kinds,
        pl.concat(raws, how="diagonal_relaxed"),
    )


def features(data: Dataset, reference: Reference) -> pl.DataFrame:
    history = History(
        declarations=data.declarations.lazy(),
        offences=pl.DataFrame(schema=OFFENCE.schema).lazy(),
        inspections=data.inspections.lazy(),
    )
    return build_features(data.declarations.lazy(), history, reference, data.extras).collect()


def plain_lightgbm(
    raw: pl.DataFrame,
    label: np.ndarray,
    times: pl.Series,
    split: Split,
    drop: Sequence[str],
    seed: int,
    known: pl.Series | None = None,
) -> dict[str, float]:
    """LightGBM with default parameters on the source's raw columns: the reference point.

    Numbers that parse become numbers, everything else is label-encoded (integer codes in
    order of appearance, as a quick first model does); trained on train + valid with 100
    rounds, no feature engineering, no history. ``known`` says when each row's label was
    recorded: the rows it learns from are then those ``known_by`` leaves our model at the
    test period's start, so both read the same labels.
    """
    cols = [c for c in raw.columns if c not in drop]
    frame = raw.select(cols)
    converted = []
    for c in cols:
        num = frame.get_column(c).cast(pl.Float64, strict=False)
        if num.null_count() <= frame.get_column(c).null_count():
            converted.append(num.alias(c))
        else:
            codes = frame.get_column(c).cast(pl.Categorical).to_physical().cast(pl.Float64)
            converted.append(codes.alias(c))
    x = pl.DataFrame(converted).to_numpy()
    train, valid, test = split.masks(times)
    fit = np.flatnonzero(train | valid)
    fit_label = label[fit]
    if known is not None:
        fit, fit_label = known_rows(fit, label, times, known, split.test_from)
    booster = lgb.train(
        {"objective": "binary", "verbose": -1, "seed": seed, "num_threads": 2},
        lgb.Dataset(x[fit], fit_label, feature_name=cols),
        num_boost_round=100,
    )
    return evaluate(label[test], np.asarray(booster.predict(x[test])))


def known_rows(
    rows: np.ndarray, label: np.ndarray, times: pl.Series, known: pl.Series, cut: datetime
) -> tuple[np.ndarray, np.ndarray]:
    """The rows among ``rows`` whose label was recorded before ``cut``, and their labels."""
    frame = pl.DataFrame(
        {
            "__row": rows,
            D.DECLARED_AT: times.gather(rows),
            LABEL: label[rows].astype(np.float64),
            FIRST_RESULT: known.gather(rows),
        }
    ).with_columns(pl.when(pl.col(LABEL) > 0).then(pl.col(FIRST_RESULT)).alias(FIRST_HIT))
    kept = known_by(frame, cut)
    return kept.get_column("__row").to_numpy(), kept.get_column(LABEL).to_numpy()


def mean_sd(values: Sequence[float]) -> str:
    arr = np.asarray(values, dtype=float)
    return f"{arr.mean():.3f} ± {arr.std(ddof=1) if len(arr) > 1 else 0.0:.3f}"


def peak_memory_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


@dataclass(frozen=True)
class Task:
    """One label of a benchmark and the bars it must clear (metric -> minimum)."""

    name: str
    positive: pl.Expr | None
    bars: dict[str, float]
    #: Seeds averaged into each model (``train_and_evaluate``); each benchmark seed is a bag.
    bag: int = 1


def run(
    data: Dataset,
    tasks: Sequence[Task],
    split: Split,
    *,
    seeds: Sequence[int],
    raw_drop: Sequence[str],
    raw_label: Callable[[pl.DataFrame, str], np.ndarray],
    raw_times: pl.Series,
    raw_known: pl.Series | None = None,
    trials: int = 0,
    params: dict[str, Any] | None = None,
) -> bool:
    """Train every task for every seed, print the tables; True if every bar is met."""
    print(f"$ {shlex.join([sys.executable, *sys.argv])}")
    print(f"features {FEATURE_SET} v{FEATURE_VERSION}; split {split}")
    reference = load_reference()
    started = time.perf_counter()
    feats = features(data, reference)
    print(f"{feats.height:,} declarations, features built in {time.perf_counter() - started:.1f} s")
    all_ok = True
    for task in tasks:
        labelled = label_frame(feats, data.inspections, task.positive)
        per_seed: list[dict[str, float]] = []
        reports: list[ScoreReport] = []
        for seed in seeds:
            t0 = time.perf_counter()
            result: TrainResult = train_and_evaluate(
                labelled,
                split,
                seed=seed,
                extras=data.extras,
                trials=trials,
                params=params,
                baselines=seed == seeds[0],
                bag=task.bag,
            )
            if seed == seeds[0]:
                reports = result.reports[1:]
                print(f"[{task.name}] sizes {result.sizes}, {task.bag} seed(s) per model")
            per_seed.append(result.metrics)
            shown = "  ".join(f"{m} {result.metrics[m]:.3f}" for m in METRICS)
            print(f"[{task.name}] seed {seed}: {shown}  ({time.perf_counter() - t0:.1f} s)")
        plain = [
            plain_lightgbm(
                data.raw,
                raw_label(data.raw, task.name),
                raw_times,
                split,
                raw_drop,
                seed,
                known=raw_known,
            )
            for seed in seeds
        ]
        print(f"\n[{task.name}] {'scorer':<22}" + "".join(f"{m:>20}" for m in METRICS))
        rows: list[tuple[str, list[dict[str, float]]]] = [
            ("cites-risk LightGBM", per_seed),
            ("plain LightGBM (raw)", plain),
            *((r.name, [r.metrics]) for r in reports),
        ]
        for name, ms in rows:
            cells = "".join(f"{mean_sd([m[k] for m in ms]):>20}" for k in METRICS)
            print(f"[{task.name}] {name:<22}{cells}")
        for metric, bar in task.bars.items():
            got = float(np.mean([m[metric] for m in per_seed]))
            base = float(np.mean([m[metric] for m in plain]))
            ok = got >= bar
            all_ok &= ok
            ratio = got / base if base and not math.isnan(base) else float("nan")
            print(
                f"[{task.name}] {metric}: {got:.3f} (bar {bar:.2f}: {'met' if ok else 'NOT met'}"
                f"; {ratio:.2f}x plain LightGBM)"
            )
        print()
    print(f"total {time.perf_counter() - started:.0f} s, peak memory {peak_memory_mb():.0f} MB")
    return all_ok
