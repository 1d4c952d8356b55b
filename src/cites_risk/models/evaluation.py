"""Evaluation as customs uses a model: what inspecting the top k % would have found.

Protocol: rank the test period by score, inspect the top ceil(k * N) rows; precision =
positives found / inspected, recall = positives found / all positives.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import overload

import numpy as np
import polars as pl
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    precision_recall_curve,
    roc_auc_score,
)

CAPACITIES: tuple[float, ...] = (0.01, 0.02, 0.05, 0.10)

#: k * N is rounded to this many decimals before the ceil: in binary 0.07 * 100 is
#: 7.000000000000001, and ceil would inspect 8 rows of 100 at 7 %.
_COUNT_DECIMALS = 9


@overload
def capacity_count(share: float, n: int) -> int: ...
@overload
def capacity_count(share: float, n: pl.Expr) -> pl.Expr: ...
def capacity_count(share: float, n: int | pl.Expr) -> int | pl.Expr:
    """ceil(share * n): the rows a capacity of ``share`` inspects among ``n``.

    Every capacity count (evaluation's top k %, selection's capacity per office-day) comes
    from here, so they agree; ``n`` a count or a polars expression of counts.
    """
    if isinstance(n, pl.Expr):
        return (n.cast(pl.Float64) * share).round(_COUNT_DECIMALS).ceil().cast(pl.Int64)
    return math.ceil(round(share * n, _COUNT_DECIMALS))


def capacity_tag(k: float) -> str:
    """The metric-name suffix of capacity ``k``, in percent: 0.05 -> "5", 0.014 -> "1.4".

    Exact (from the shortest decimal of ``k``), so two capacities never share a name.
    """
    return format((Decimal(repr(float(k))) * 100).normalize(), "f")


def top_k(score: np.ndarray, k: float) -> np.ndarray:
    """Indices of the ceil(k * N) highest scores; ties broken by position, reproducibly."""
    n = capacity_count(k, len(score))
    order = np.lexsort((np.arange(len(score)), -score))
    return order[:n]


def expected_found(weights: np.ndarray, score: np.ndarray, n: int) -> float:
    """What inspecting the ``n`` highest scores finds, ties broken at random (expected).

    Rows above the cut count in full; the slots left at the cut go to the rows tied there,
    each worth the tie group's mean. Rule scores tie a lot; breaking ties by row order
    would make the figure depend on how the file happened to be sorted.
    """
    if n <= 0 or len(score) == 0:
        return 0.0
    n = min(n, len(score))
    cut = np.partition(score, len(score) - n)[len(score) - n]
    above = score > cut
    tied = score == cut
    left = n - int(above.sum())
    return float(weights[above].sum() + left * weights[tied].mean())


def capacity_metrics(
    y: np.ndarray,
    score: np.ndarray,
    capacities: Sequence[float] = CAPACITIES,
    value: np.ndarray | None = None,
) -> dict[str, float]:
    """precision@k, recall@k and (with ``value``) value-weighted recall@k for each k.

    Inspecting ceil(k * N) rows; ties at the cut are shared as :func:`expected_found` says.
    """
    y = np.asarray(y, dtype=float)
    score = np.asarray(score, dtype=float)
    total = y.sum()
    out: dict[str, float] = {}
    for k in capacities:
        n = capacity_count(k, len(score))
        found = expected_found(y, score, n)
        tag = capacity_tag(k)
        out[f"precision_at_{tag}"] = float(found / max(1, n))
        out[f"recall_at_{tag}"] = float(found / total) if total else float("nan")
        if value is not None:
            weighted = (y * value).sum()
            out[f"value_recall_at_{tag}"] = (
                expected_found(y * value, score, n) / weighted if weighted else float("nan")
            )
    return out


def ranking_metrics(y: np.ndarray, score: np.ndarray) -> dict[str, float]:
    if len(np.unique(y)) < 2:
        return {"roc_auc": float("nan"), "average_precision": float("nan")}
    return {
        "roc_auc": float(roc_auc_score(y, score)),
        "average_precision": float(average_precision_score(y, score)),
    }


def evaluate(
    y: np.ndarray,
    score: np.ndarray,
    proba: np.ndarray | None = None,
    value: np.ndarray | None = None,
    capacities: Sequence[float] = CAPACITIES,
) -> dict[str, float]:
    """All headline metrics; ``proba`` (calibrated) adds the Brier score."""
    metrics = {**ranking_metrics(y, score), **capacity_metrics(y, score, capacities, value)}
    if proba is not None:
        metrics["brier"] = float(brier_score_loss(y, proba))
    metrics["n"] = float(len(y))
    metrics["positives"] = float(np.sum(y))
    return metrics


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def __contains__(self, value: float) -> bool:
        return self.low <= value <= self.high


def bootstrap(
    y: np.ndarray,
    score: np.ndarray,
    *,
    n_boot: int = 200,
    seed: int = 0,
    capacities: Sequence[float] = CAPACITIES,
    value: np.ndarray | None = None,
) -> dict[str, Interval]:
    """95 % percentile intervals of every metric over resampled test rows.

    Resampling is stratified (positives and negatives separately), so every replicate has
    the test period's number of offences and recall@k is always defined.
    """
    rng = np.random.default_rng(seed)
    y = np.asarray(y, dtype=float)
    samples: dict[str, list[float]] = {}
    pos, neg = np.flatnonzero(y > 0), np.flatnonzero(y <= 0)
    for _ in range(n_boot):
        idx = np.concatenate(
            [rng.choice(pos, len(pos)) if len(pos) else pos, rng.choice(neg, len(neg))]
        )
        v = value[idx] if value is not None else None
        for name, m in evaluate(y[idx], score[idx], capacities=capacities, value=v).items():
            samples.setdefault(name, []).append(m)
    return {
        name: Interval(float(np.nanpercentile(v, 2.5)), float(np.nanpercentile(v, 97.5)))
        for name, v in samples.items()
        if name not in ("n", "positives") and not np.all(np.isnan(v))
    }


@dataclass(frozen=True)
class ScoreReport:
    """One scorer's metrics on one test set, with bootstrap intervals: a row of a table."""

    name: str
    metrics: dict[str, float]
    intervals: dict[str, Interval] = field(default_factory=dict)

    def row(self, keys: Sequence[str] = ("average_precision", "recall_at_5")) -> dict[str, float]:
        return {k: self.metrics.get(k, float("nan")) for k in keys}


def evaluate_scores(
    name: str,
    y: np.ndarray,
    score: np.ndarray,
    *,
    proba: np.ndarray | None = None,
    value: np.ndarray | None = None,
    n_boot: int = 200,
    seed: int = 0,
) -> ScoreReport:
    """Metrics and 95 % bootstrap intervals of any scorer (a model, a rule profile, a baseline).

    ``score`` only has to rank: higher = inspect first; ties keep input order. ``proba``
    (calibrated probabilities) adds the Brier score. Rule profiles' scores come from
    ``profiling``; this function is what makes them comparable to the model on the same rows.
    """
    y = np.asarray(y, dtype=float)
    score = np.asarray(score, dtype=float)
    metrics = evaluate(y, score, proba, value=value)
    intervals = bootstrap(y, score, n_boot=n_boot, seed=seed, value=value) if n_boot else {}
    return ScoreReport(name, metrics, intervals)


def pr_curve(y: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(recall, precision) points of the precision-recall curve."""
    precision, recall, _ = precision_recall_curve(y, score)
    return recall, precision


def capacity_curve(
    y: np.ndarray, score: np.ndarray, points: int = 50, max_share: float = 0.2
) -> pl.DataFrame:
    """Precision and recall when inspecting the top share, for shares up to ``max_share``."""
    shares = np.linspace(max_share / points, max_share, points)
    rows = []
    for k in shares:
        m = capacity_metrics(y, score, (float(k),))
        tag = capacity_tag(k)
        rows.append((float(k), m[f"precision_at_{tag}"], m[f"recall_at_{tag}"]))
    return pl.DataFrame(rows, schema=["share", "precision", "recall"], orient="row")


def weekly_metrics(
    times: pl.Series,
    y: np.ndarray,
    score: np.ndarray,
    capacities: Sequence[float] = (0.05,),
    every: str = "1w",
) -> pl.DataFrame:
    """Backtest by week: each week ranked on its own at each capacity, as a selector would.

    One row per week: declarations, offences, and precision / recall at each capacity
    (recall is null in weeks without an offence).
    """
    frame = pl.DataFrame({"t": times, "y": np.asarray(y, dtype=float), "s": score})
    rows = []
    weeks = frame.with_columns(pl.col("t").dt.truncate(every).alias("week"))
    for (week,), part in weeks.group_by("week"):
        yy = part.get_column("y").to_numpy()
        ss = part.get_column("s").to_numpy()
        row: dict[str, object] = {"week": week, "n": len(yy), "positives": int(yy.sum())}
        for name, v in capacity_metrics(yy, ss, capacities).items():
            row[name] = v if (yy.sum() or not name.startswith("recall")) else None
        rows.append(row)
    return pl.DataFrame(rows).sort("week")


def reliability(y: np.ndarray, proba: np.ndarray, bins: int = 10) -> list[tuple[float, float, int]]:
    """(mean predicted, observed rate, count) per quantile bin of the prediction."""
    order = np.argsort(proba)
    out = []
    for chunk in np.array_split(order, bins):
        if len(chunk):
            out.append((float(proba[chunk].mean()), float(y[chunk].mean()), len(chunk)))
    return out
