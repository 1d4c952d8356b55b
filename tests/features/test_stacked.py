"""Several keys' events stacked in one stream give each key the totals it gets alone, to the
last bit, whether stacked row by row (a request's few rows) or key by key (long frames)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from cites_risk.features.contract import TIMESTAMP
from cites_risk.features.history import IDX, KEY, KID, TIME, prior_totals, stacked

#: Key expressions as ``_events`` gets them: columns, a derived key, and a key an event
#: kind lacks (an offence has no declarant), whose position must be kept.
KEYS: list[pl.Expr | None] = [
    pl.col("a"),
    None,
    pl.col("b"),
    pl.concat_str(pl.col("a"), pl.col("b"), separator="|"),
]
START = datetime(2021, 1, 1, tzinfo=UTC)
# Magnitudes far apart: a sum in another order would differ in its last digits.
AMOUNTS = [1e10, 1.0, 0.1, -1e10, 3e-7, 7.5]

names = st.sampled_from(["x", "y", None])


@st.composite
def frames(draw: st.DrawFn, *, events: bool) -> pl.DataFrame:
    n = draw(st.integers(1 if not events else 0, 14))
    row = st.tuples(names, names, st.integers(0, 4), st.sampled_from(AMOUNTS), st.booleans())
    rows = draw(st.lists(row, min_size=n, max_size=n))
    frame = pl.DataFrame(
        [(a, b, START + timedelta(days=d), v, m) for a, b, d, v, m in rows],
        schema={
            "a": pl.String,
            "b": pl.String,
            TIME: TIMESTAMP,
            "v": pl.Float64,
            "__mark": pl.Boolean,
        },
        orient="row",
    )
    return frame if events else frame.select("a", "b", TIME).with_row_index(IDX)


def totals(targets: pl.DataFrame, events: pl.DataFrame, *, by_row: bool) -> pl.DataFrame:
    return prior_totals(
        stacked(targets.lazy(), KEYS, IDX, TIME, by_row=by_row),
        stacked(events.lazy(), KEYS, TIME, "v", "__mark", by_row=by_row),
        ["v"],
        last_time=True,
        stacked=True,
    ).collect()


@settings(max_examples=120, deadline=None)
@given(frames(events=False), frames(events=True))
def test_stacked_keys_get_the_totals_each_key_gets_alone(
    targets: pl.DataFrame, events: pl.DataFrame
) -> None:
    by_row = totals(targets, events, by_row=True)
    assert_frame_equal(by_row, totals(targets, events, by_row=False), check_exact=True)
    for kid, key in enumerate(KEYS):
        mine = by_row.filter(pl.col(KID) == kid).drop(KID)
        if key is None:
            assert mine.is_empty()
            continue
        alone = prior_totals(
            targets.lazy().select(IDX, TIME, key.alias(KEY)),
            events.lazy().select(key.alias(KEY), TIME, "v", "__mark"),
            ["v"],
            last_time=True,
        ).collect()
        assert_frame_equal(mine, alone, check_exact=True)
