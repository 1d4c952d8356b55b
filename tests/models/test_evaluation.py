"""Capacity metrics against hand-computed values; bootstrap; weekly backtest."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from cites_risk.models.evaluation import (
    CAPACITIES,
    bootstrap,
    capacity_count,
    capacity_metrics,
    evaluate,
    evaluate_scores,
    reliability,
    top_k,
    weekly_metrics,
)


def test_capacity_metrics_by_hand() -> None:
    # 20 rows, 4 positives; the top 5 % is 1 row, 10 % is 2 rows.
    y = np.zeros(20)
    y[[0, 3, 7, 19]] = 1
    score = np.linspace(1.0, 0.0, 20)  # row 0 highest, then 1, 2, ...
    m = capacity_metrics(y, score, (0.05, 0.10, 0.25))
    assert m["precision_at_5"] == 1.0 and m["recall_at_5"] == 0.25
    assert m["precision_at_10"] == 0.5 and m["recall_at_10"] == 0.25
    # top 5 rows (ceil(0.25 * 20)): rows 0-4, two positives (0 and 3)
    assert m["precision_at_25"] == pytest.approx(2 / 5)
    assert m["recall_at_25"] == pytest.approx(2 / 4)


def test_capacity_rounds_up_and_breaks_ties_by_position() -> None:
    score = np.array([0.5, 0.5, 0.5, 0.1])
    assert list(top_k(score, 0.5)) == [0, 1]
    assert len(top_k(np.zeros(101), 0.01)) == 2  # ceil(1.01)


def test_a_whole_number_of_rows_is_not_rounded_up_by_binary_error() -> None:
    # 0.07 * 100 is 7.000000000000001 in binary: 7 % of 100 rows is 7 rows, not 8.
    y = np.zeros(100)
    y[:8] = 1
    score = np.linspace(1.0, 0.0, 100)  # the 8 positives rank first
    assert len(top_k(score, 0.07)) == 7
    m = capacity_metrics(y, score, (0.07,))
    assert m["precision_at_7"] == 1.0 and m["recall_at_7"] == 7 / 8
    assert capacity_count(0.035, 200) == 7 and capacity_count(0.05, 101) == 6


def test_capacity_count_is_the_same_on_plain_counts_and_polars_columns() -> None:
    # Selection counts capacity in polars, evaluation in Python: they must agree.
    n = np.arange(0, 2001)
    for share in (0.01, 0.035, 0.05, 0.07, 0.085, 0.1, 1 / 3, 1.0):
        counts = pl.DataFrame({"n": n}).select(capacity_count(share, pl.col("n"))).to_series()
        assert counts.to_list() == [capacity_count(share, int(v)) for v in n], share


def test_every_capacity_keeps_a_metric_name_of_its_own() -> None:
    y = np.zeros(1000)
    y[[1, 12]] = 1
    score = np.linspace(1.0, 0.0, 1000)
    m = capacity_metrics(y, score, (0.005, 0.01, 0.014))
    # 5 rows find one offence, 10 rows one, 14 rows both.
    assert m["recall_at_0.5"] == 0.5 and m["recall_at_1"] == 0.5 and m["recall_at_1.4"] == 1.0
    assert m["precision_at_1.4"] == 2 / 14
    # The usual capacities keep the names reports and logged runs use.
    assert [k for k in capacity_metrics(y, score, CAPACITIES) if k.startswith("recall")] == [
        "recall_at_1",
        "recall_at_2",
        "recall_at_5",
        "recall_at_10",
    ]


def test_value_weighted_recall() -> None:
    y = np.array([1.0, 1.0, 0.0, 0.0])
    score = np.array([0.9, 0.1, 0.8, 0.2])
    value = np.array([100.0, 300.0, 5.0, 5.0])
    m = capacity_metrics(y, score, (0.25,), value=value)
    assert m["recall_at_25"] == 0.5
    assert m["value_recall_at_25"] == pytest.approx(100 / 400)


def test_bootstrap_interval_contains_point_estimate() -> None:
    rng = np.random.default_rng(1)
    y = (rng.random(2000) < 0.05).astype(float)
    score = y * 0.6 + rng.random(2000)
    point = evaluate(y, score)
    intervals = bootstrap(y, score, n_boot=100, seed=0)
    for name in ("average_precision", "roc_auc", "recall_at_5", "precision_at_10"):
        assert point[name] in intervals[name], name
        assert intervals[name].low < intervals[name].high


def test_evaluate_scores_is_generic_and_reports_intervals() -> None:
    y = np.array([0, 0, 1, 0, 1, 0, 0, 0, 0, 0] * 20, dtype=float)
    rule = y.copy()  # a perfect rule profile flag
    report = evaluate_scores("rules", y, rule, n_boot=20)
    assert report.name == "rules"
    assert report.metrics["average_precision"] == 1.0
    assert "recall_at_10" in report.intervals


def test_reliability_bins_cover_every_row() -> None:
    proba = np.linspace(0, 1, 100)
    y = (proba > 0.5).astype(float)
    bins = reliability(y, proba, bins=10)
    assert sum(b[2] for b in bins) == 100
    assert bins[0][1] == 0.0 and bins[-1][1] == 1.0


def test_weekly_metrics_rank_each_week_on_its_own() -> None:
    start = datetime(2021, 1, 4, tzinfo=UTC)  # a Monday
    times = pl.Series(
        [start + timedelta(days=d) for d in range(14)], dtype=pl.Datetime("us", "UTC")
    )
    y = np.array([1] + [0] * 6 + [0] * 7, dtype=float)
    score = np.array([0.9] + [0.1] * 6 + [0.8] * 7)
    weekly = weekly_metrics(times, y, score, (0.15,))
    assert weekly.height == 2
    first, second = weekly.row(0, named=True), weekly.row(1, named=True)
    assert first["positives"] == 1 and first["recall_at_15"] == 1.0
    assert second["positives"] == 0 and second["recall_at_15"] is None


def test_ties_at_the_cut_are_shared_not_ordered() -> None:
    from cites_risk.models.evaluation import capacity_metrics

    # Four rows tied at the cut, two of them positive, two slots left for them.
    y = np.array([1, 0, 1, 1, 0, 0, 0, 0, 0, 0], dtype=float)
    score = np.array([0.9, 0.5, 0.5, 0.5, 0.5, 0.1, 0.1, 0.1, 0.1, 0.1])
    m = capacity_metrics(y, score, capacities=(0.3,))
    assert m["precision_at_30"] == pytest.approx((1 + 2 * 0.5) / 3)
    shuffled = np.random.default_rng(0).permutation(10)
    assert capacity_metrics(y[shuffled], score[shuffled], capacities=(0.3,)) == m
