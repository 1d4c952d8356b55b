"""Evaluation as customs uses a model: what inspecting the top k % would have found.

Protocol: rank the test period by score, inspect the top ceil(k * N) rows; precision =
positives found / inspected, recall = positives found / all positives.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from sklearn.metrics import average_precision_score, brier_score_loss, roc_auc_score

CAPACITIES: tuple[float, ...] = (0.01, 0.02, 0.05, 0.10)


def top_k(score: np.ndarray, k: float) -> np.ndarray:
    """Indices of the ceil(k * N) highest scores; ties broken by position, reproducibly."""
    n = math.ceil(k * len(score))
    order = np.lexsort((np.arange(len(score)), -score))
    return order[:n]


def capacity_metrics(
    y: np.ndarray,
    score: np.ndarray,
    capacities: Sequence[float] = CAPACITIES,
    value: np.ndarray | None = None,
) -> dict[str, float]:
    """precision@k, recall@k and (with ``value``) value-weighted recall@k for each k."""
    y = np.asarray(y, dtype=float)
    total = y.sum()
    out: dict[str, float] = {}
    for k in capacities:
        idx = top_k(score, k)
        found = y[idx].sum()
        tag = f"{round(k * 100):g}"
        out[f"precision_at_{tag}"] = float(found / max(1, len(idx)))
        out[f"recall_at_{tag}"] = float(found / total) if total else float("nan")
        if value is not None:
            weighted = (y * value).sum()
            out[f"value_recall_at_{tag}"] = (
                float((y[idx] * value[idx]).sum() / weighted) if weighted else float("nan")
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


def bootstrap(
    y: np.ndarray,
    score: np.ndarray,
    *,
    n_boot: int = 200,
    seed: int = 0,
    capacities: Sequence[float] = CAPACITIES,
) -> dict[str, Interval]:
    """95 % percentile intervals of every metric over resampled test rows."""
    rng = np.random.default_rng(seed)
    samples: dict[str, list[float]] = {}
    n = len(y)
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        for name, v in evaluate(y[idx], score[idx], capacities=capacities).items():
            samples.setdefault(name, []).append(v)
    return {
        name: Interval(float(np.nanpercentile(v, 2.5)), float(np.nanpercentile(v, 97.5)))
        for name, v in samples.items()
        if name not in ("n", "positives")
    }


def reliability(y: np.ndarray, proba: np.ndarray, bins: int = 10) -> list[tuple[float, float, int]]:
    """(mean predicted, observed rate, count) per quantile bin of the prediction."""
    order = np.argsort(proba)
    out = []
    for chunk in np.array_split(order, bins):
        if len(chunk):
            out.append((float(proba[chunk].mean()), float(y[chunk].mean()), len(chunk)))
    return out
