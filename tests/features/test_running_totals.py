"""The compiled running totals against their definition, on streams hypothesis draws."""

from __future__ import annotations

import random

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cites_risk.features.running_totals import NO_TIME, Start, fold, running_totals

VALUES = ["a", "b"]


@st.composite
def streams(draw: st.DrawFn) -> pl.DataFrame:
    n = draw(st.integers(0, 40))
    row = st.tuples(
        st.integers(0, 4),  # key: few, so keys repeat
        st.integers(-3, 12),  # instant: few, so instants tie (negative: before 1970)
        st.booleans(),  # no key
        st.floats(-1e3, 1e3, allow_nan=False),
        st.floats(0, 1e12, allow_nan=False),
        st.booleans(),  # mark
    )
    rows = draw(st.lists(row, min_size=n, max_size=n))
    return pl.DataFrame(
        rows,
        schema={
            "key": pl.UInt64,
            "instant": pl.Int64,
            "nokey": pl.Boolean,
            "a": pl.Float64,
            "b": pl.Float64,
            "mark": pl.Boolean,
        },
        orient="row",
    )


def definition(stream: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the sums of its key's rows at earlier instants, the latest earlier mark."""
    rows = stream.to_dicts()
    sums = np.zeros((len(VALUES), len(rows)))
    last = np.full(len(rows), NO_TIME, dtype=np.int64)
    for i, row in enumerate(rows):
        if row["nokey"]:
            continue
        earlier = [r for r in rows if r["key"] == row["key"] and r["instant"] < row["instant"]]
        for k, v in enumerate(VALUES):
            sums[k, i] = sum(r[v] for r in earlier)
        marked = [r["instant"] >> 2 for r in earlier if r["mark"]]
        if marked:
            last[i] = max(marked)
    return sums, last


@settings(max_examples=150, deadline=None)
@given(streams())
def test_totals_are_the_sums_of_earlier_instants_of_the_same_key(stream: pl.DataFrame) -> None:
    sums, last = running_totals(
        stream, VALUES, key="key", instant="instant", nokey="nokey", mark="mark"
    )
    expected_sums, expected_last = definition(stream)
    np.testing.assert_allclose(sums, expected_sums, rtol=1e-12, atol=1e-6)
    np.testing.assert_array_equal(last, expected_last)


def test_many_keys_grow_the_table_and_keep_each_key_apart() -> None:
    # More keys than the first table holds (4,096 slots, doubled at half load).
    n = 20_000
    keys = np.arange(n, dtype=np.uint64) * np.uint64(0x9E3779B97F4A7C15)
    stream = pl.DataFrame(
        {
            "key": np.concatenate([keys, keys]),
            "instant": np.concatenate([np.zeros(n), np.ones(n)]).astype(np.int64) * 4,
            "nokey": np.zeros(2 * n, dtype=bool),
            "a": np.concatenate([np.arange(n), np.zeros(n)]).astype(np.float64),
            "mark": np.concatenate([np.ones(n, dtype=bool), np.zeros(n, dtype=bool)]),
        }
    )
    sums, last = running_totals(
        stream, ["a"], key="key", instant="instant", nokey="nokey", mark="mark"
    )
    # The second row of each key sees the first row's value and time, and nothing else.
    np.testing.assert_array_equal(sums[0, :n], 0.0)
    np.testing.assert_array_equal(sums[0, n:], np.arange(n))
    np.testing.assert_array_equal(last[:n], NO_TIME)
    np.testing.assert_array_equal(last[n:], 0)


def test_rows_of_one_instant_add_in_stream_order() -> None:
    # 1e16 + 1 - 1e16 is 0 in floating point, 1e16 - 1e16 + 1 is 1: the order is fixed.
    stream = pl.DataFrame(
        {
            "key": np.zeros(4, dtype=np.uint64),
            "instant": np.array([0, 0, 0, 4], dtype=np.int64),
            "nokey": np.zeros(4, dtype=bool),
            "a": [1e16, 1.0, -1e16, 0.0],
        }
    )
    sums, _ = running_totals(stream, ["a"], key="key", instant="instant", nokey="nokey", mark=None)
    assert sums[0, 3] == 0.0
    reordered = stream[[0, 2, 1, 3]]
    sums, _ = running_totals(
        reordered, ["a"], key="key", instant="instant", nokey="nokey", mark=None
    )
    assert sums[0, 3] == 1.0


def test_warming_compiles_what_the_history_features_run() -> None:
    """The engine warms the kernel when it loads a model; a request must not compile again."""
    from datetime import UTC, datetime

    from cites_risk.features.history import IDX, KEY, TIME, prior_totals
    from cites_risk.features.running_totals import _kernel, warm

    warm()
    at = [datetime(2024, 1, d, tzinfo=UTC) for d in (1, 2)]
    targets = pl.LazyFrame({IDX: [0, 1], KEY: ["a", "a"], TIME: at})
    events = pl.LazyFrame({KEY: ["a", "a"], TIME: at, "n": [1.0, None], "__mark": [True, False]})
    totals = prior_totals(targets, events, ["n"], last_time=True).collect(engine="in-memory")
    assert totals.get_column("n").to_list() == [0.0, 1.0]
    assert len(_kernel.signatures) == 1


def test_a_target_without_a_time_has_no_past_and_unmarked_events_mark_nothing() -> None:
    from datetime import UTC, datetime

    from cites_risk.features.history import IDX, KEY, TIME, prior_totals

    at = [datetime(2024, 1, d, tzinfo=UTC) for d in (1, 2, 3)]
    targets = pl.LazyFrame(
        {IDX: [0, 1], KEY: ["a", "a"], TIME: [None, at[2]]},
        schema={IDX: pl.UInt32, KEY: pl.String, TIME: pl.Datetime("us", "UTC")},
    )
    events = pl.LazyFrame(
        {KEY: ["a", "a"], TIME: at[:2], "n": [1.0, 1.0], "__mark": [None, True]},
        schema={
            KEY: pl.String,
            TIME: pl.Datetime("us", "UTC"),
            "n": pl.Float64,
            "__mark": pl.Boolean,
        },
    )
    totals = prior_totals(targets, events, ["n"], last_time=True).collect(engine="in-memory")
    assert totals.get_column("n").to_list() == [0.0, 2.0]
    assert totals.get_column("__last").to_list() == [None, at[1]]


@settings(max_examples=100, deadline=None)
@given(streams())
def test_a_fold_is_each_keys_sum_and_latest_mark(stream: pl.DataFrame) -> None:
    first, totals = fold(stream, VALUES, key="key", time="instant", mark="mark")
    sums, latest = totals.sums, totals.last
    keys = stream.get_column("key").to_list()
    assert sorted(keys[i] for i in first) == sorted(set(keys))
    for j, row in enumerate(first):
        mine = stream.filter(pl.col("key") == keys[row])
        for k, v in enumerate(VALUES):
            np.testing.assert_allclose(sums[k, j], mine.get_column(v).sum(), rtol=1e-12, atol=1e-6)
        marked = mine.filter(pl.col("mark")).get_column("instant")
        assert latest[j] == (marked.max() if marked.len() else NO_TIME)


@settings(max_examples=100, deadline=None)
@given(streams(), st.randoms(use_true_random=False))
def test_a_fold_gives_the_same_bits_whatever_order_the_rows_arrive_in(
    stream: pl.DataFrame, rnd: random.Random
) -> None:
    # As with decayed weights, a value is a function of the row's instant.
    weighted = stream.with_columns(
        (pl.col("instant").cast(pl.Float64) * 0.37).exp().alias("a"),
        (pl.col("instant").cast(pl.Float64) * -1.3).exp().alias("b"),
    )
    rows = list(range(weighted.height))
    rnd.shuffle(rows)
    shuffled = weighted[rows]

    def by_key(frame: pl.DataFrame) -> dict[int, tuple[list[float], int]]:
        first, totals = fold(frame, VALUES, key="key", time="instant", mark="mark")
        sums, latest = totals.sums, totals.last
        keys = frame.get_column("key").to_list()
        return {
            keys[r]: ([float(sums[k, j]) for k in range(len(VALUES))], int(latest[j]))
            for j, r in enumerate(first)
        }

    assert by_key(shuffled) == by_key(weighted)


@st.composite
def starts(draw: st.DrawFn) -> list[tuple[int, float, float, int | None]]:
    """A start row per key of some of the keys: its sums and its latest mark (or none)."""
    keys = draw(st.lists(st.integers(0, 6), unique=True, max_size=7))
    return [
        (
            key,
            draw(st.floats(-1e3, 1e3, allow_nan=False)),
            draw(st.floats(0, 1e12, allow_nan=False)),
            draw(st.one_of(st.none(), st.integers(-20, -11))),
        )
        for key in keys
    ]


@settings(max_examples=150, deadline=None)
@given(streams(), starts())
def test_a_start_counts_as_events_before_the_first_row(
    stream: pl.DataFrame, start_rows: list[tuple[int, float, float, int | None]]
) -> None:
    """A carried history's totals enter a stream as its ``Start``: the same to the last bit
    as events of their own before every row (as they were streamed before)."""
    start = Start.of(
        VALUES,
        np.array([key for key, *_ in start_rows], dtype=np.uint64),
        np.array([[a for _, a, _, _ in start_rows], [b for _, _, b, _ in start_rows]]).reshape(
            2, len(start_rows)
        ),
        np.array([NO_TIME if t is None else t for *_, t in start_rows], dtype=np.int64),
    )
    # The sums at instant -8, the latest mark (time t) at instant 4t: both before any row.
    as_events = pl.DataFrame(
        [(key, -8, False, a, b, False) for key, a, b, _ in start_rows]
        + [(key, 4 * t, False, 0.0, 0.0, True) for key, _, _, t in start_rows if t is not None],
        schema=stream.schema,
        orient="row",
    )
    n = as_events.height
    expected = running_totals(
        pl.concat([as_events, stream]),
        VALUES,
        key="key",
        instant="instant",
        nokey="nokey",
        mark="mark",
    )
    sums, last = running_totals(
        stream, VALUES, key="key", instant="instant", nokey="nokey", mark="mark", start=start
    )
    # To the bit: -0.0 is not 0.0 here.
    np.testing.assert_array_equal(sums.view(np.int64), expected[0][:, n:].view(np.int64))
    np.testing.assert_array_equal(last, expected[1][n:])


def _one_value_stream(keys: np.ndarray) -> pl.DataFrame:
    n = keys.shape[0]
    return pl.DataFrame(
        {
            "key": keys,
            "instant": np.zeros(n, dtype=np.int64),
            "nokey": np.zeros(n, dtype=bool),
            "a": np.zeros(n),
            "mark": np.zeros(n, dtype=bool),
        },
        schema={
            "key": pl.UInt64,
            "instant": pl.Int64,
            "nokey": pl.Boolean,
            "a": pl.Float64,
            "mark": pl.Boolean,
        },
    )


def test_a_start_of_a_key_seen_twice_adds_its_rows_as_events_would() -> None:
    start = Start.of(
        ["a"],
        np.array([5, 5, 7], dtype=np.uint64),
        np.array([[1.0, 2.0, 4.0]]),
        np.array([3, 9, NO_TIME]),
    )
    stream = _one_value_stream(np.array([7, 5, 6], dtype=np.uint64))
    sums, last = running_totals(
        stream, ["a"], key="key", instant="instant", nokey="nokey", mark="mark", start=start
    )
    assert sums[0].tolist() == [4.0, 3.0, 0.0]
    assert last.tolist() == [NO_TIME, 9, NO_TIME]
    with pytest.raises(ValueError, match="a start of"):
        running_totals(
            stream, ["b"], key="key", instant="instant", nokey="nokey", mark="mark", start=start
        )


def test_a_large_start_finds_every_key_and_no_other() -> None:
    """Ten thousand keys grow the table twice; neighbouring slots make lookups probe."""
    rng = np.random.default_rng(3)
    keys = np.unique(rng.integers(0, 2**63, 20_000, dtype=np.uint64))
    held, absent = keys[:10_000], keys[10_000:]
    start = Start.of(
        ["a"], held, np.arange(held.shape[0], dtype=np.float64)[None, :] + 1.0, np.zeros(10_000)
    )
    stream = _one_value_stream(np.concatenate([held[::-1], absent]))
    sums, _ = running_totals(
        stream, ["a"], key="key", instant="instant", nokey="nokey", mark="mark", start=start
    )
    np.testing.assert_array_equal(sums[0, :10_000], np.arange(10_000, 0, -1))
    np.testing.assert_array_equal(sums[0, 10_000:], 0.0)


def test_a_fold_hands_over_the_start_its_totals_make() -> None:
    """``fold``'s table is the one ``Start.of`` builds from its rows: a carry's tables need
    not be built again."""
    rng = np.random.default_rng(4)
    n = 5_000
    stream = pl.DataFrame(
        {
            "k": rng.integers(0, 900, n).astype(np.uint64),
            "t": rng.integers(0, 10**6, n),
            "v": rng.random(n) * 10.0 ** rng.integers(-3, 10, n),
            "m": rng.random(n) < 0.2,
        }
    )
    first, folded = fold(stream, ["v"], key="k", time="t", mark="m")
    rebuilt = Start.of(["v"], stream.get_column("k").to_numpy()[first], folded.sums, folded.last)
    probe = _one_value_stream(stream.get_column("k").unique().to_numpy())
    read = [
        running_totals(
            probe.rename({"a": "v"}),
            ["v"],
            key="key",
            instant="instant",
            nokey="nokey",
            mark="mark",
            start=start,
        )
        for start in (folded, rebuilt)
    ]
    np.testing.assert_array_equal(read[0][0].view(np.int64), read[1][0].view(np.int64))
    np.testing.assert_array_equal(read[0][1], read[1][1])
    assert (read[0][0] > 0).all()


@settings(max_examples=150, deadline=None)
@given(streams(), st.integers(-4, 13))
def test_a_fold_onto_an_earlier_fold_is_one_fold_over_both(stream: pl.DataFrame, cut: int) -> None:
    """A history carried again folds the events since onto the carried totals: the same
    bits as one fold over everything, and the carried totals stay as they were."""
    early = stream.filter(pl.col("instant") < cut)
    late = stream.filter(pl.col("instant") >= cut)
    first_early, carried = fold(early, VALUES, key="key", time="instant", mark="mark")
    kept = [a.copy() for a in (carried.table, carried.slots, carried.sums, carried.last)]
    first_late, onto = fold(late, VALUES, key="key", time="instant", mark="mark", onto=carried)
    first_whole, whole = fold(stream, VALUES, key="key", time="instant", mark="mark")

    def by_key(keys: np.ndarray, start: Start) -> dict[int, tuple[list[int], int]]:
        bits = start.sums.view(np.int64)
        return {int(k): (bits[:, i].tolist(), int(start.last[i])) for i, k in enumerate(keys)}

    early_keys = early.get_column("key").to_numpy()[first_early]
    late_keys = late.get_column("key").to_numpy()[first_late]
    assert by_key(np.concatenate([early_keys, late_keys]), onto) == by_key(
        stream.get_column("key").to_numpy()[first_whole], whole
    )
    for before, now in zip(
        kept, (carried.table, carried.slots, carried.sums, carried.last), strict=True
    ):
        np.testing.assert_array_equal(before, now)
    # The carried keys come first, in the carried order, and a stream finds them.
    probe = _one_value_stream(early_keys)
    sums, _ = running_totals(
        probe.with_columns(pl.lit(0.0).alias("b")),
        VALUES,
        key="key",
        instant="instant",
        nokey="nokey",
        mark="mark",
        start=onto,
    )
    np.testing.assert_array_equal(
        sums.view(np.int64), onto.sums[:, : early_keys.shape[0]].view(np.int64)
    )
    with pytest.raises(ValueError, match="cannot fold"):
        fold(late, ["a"], key="key", time="instant", mark="mark", onto=carried)
