"""The benchmarks' plain LightGBM reads the labels our model reads at the test start."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import polars as pl
from benchmarks.common import known_rows


def _utc(year: int, month: int, day: int) -> datetime:
    return datetime(year, month, day, tzinfo=UTC)


def test_rows_labelled_after_the_cut_are_left_out() -> None:
    cut = _utc(2020, 1, 1)
    times = pl.Series([_utc(2019, 3, 1), _utc(2019, 6, 1), _utc(2019, 9, 1), _utc(2019, 12, 1)])
    # Refused in 2019; refused but recorded in 2020; cleared in 2019; never recorded.
    known = pl.Series([_utc(2019, 4, 1), _utc(2020, 2, 1), _utc(2019, 10, 1), None])
    label = np.array([1.0, 1.0, 0.0, 0.0])
    rows, labels = known_rows(np.arange(4), label, times, known, cut)
    assert rows.tolist() == [0, 2]
    assert labels.tolist() == [1.0, 0.0]


def test_only_the_given_rows_are_considered() -> None:
    cut = _utc(2020, 1, 1)
    times = pl.Series([_utc(2019, 1, 1)] * 3)
    known = pl.Series([_utc(2019, 2, 1)] * 3)
    rows, labels = known_rows(np.array([2, 0]), np.array([1.0, 0.0, 0.0]), times, known, cut)
    assert sorted(rows.tolist()) == [0, 2]
    assert dict(zip(rows.tolist(), labels.tolist(), strict=True)) == {0: 1.0, 2: 0.0}
