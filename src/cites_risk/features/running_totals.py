"""Running totals over a stream of events, per key, read at the start of each instant.

The heart of every history feature (``history.prior_totals``): a stream of targets and
events of many keys; each row needs the sums of its key's events before its instant and
the latest marked event time before it. As polars expressions that was a sort by (key,
time) that moved every column, then a dozen whole-column passes per value (cumulative
sums, shifts, forward fills). Here the stream is ordered by time alone (it arrives nearly
so: a batch, then its events), the keys are numbered by a hash table, and one compiled
pass keeps a row of totals per key. On the key streams of a 150 k-declaration partition
(150-200 k rows, six values) a stream took 20-28 ms and takes 5-15 ms; the 24 streams of
its features 0.83 s of CPU and now 0.33 s.

The sums add each key's events in stream order, restarted per key, so a total never
carries the rounding of other keys' sums (the expressions subtracted one global running
sum from another, which lost digits on decayed counts, whose weights reach 1e10).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl

from cites_risk.features.contract import TIMESTAMP
from cites_risk.features.jit import compiled

#: "No such event" in an integer time column, where a null would leak through.
NO_TIME = -(2**63)
#: Fibonacci hashing: the top bits of key × 2^64/φ pick the slot, whatever bits vary.
_MIX = np.uint64(0x9E3779B97F4A7C15)


@compiled
def _insert(
    keys: np.ndarray,
    codes: np.ndarray,
    start: int,
    table: np.ndarray,
    slots: np.ndarray,
    bits: int,
    count: int,
) -> tuple[int, int]:
    """Code ``keys`` from ``start`` on until the table is half full; return where it stopped
    and how many codes there are."""
    capacity = 1 << bits
    shift = np.uint64(64 - bits)
    for i in range(start, keys.shape[0]):
        if 2 * count >= capacity:
            return i, count
        key = keys[i]
        s = np.int64((key * _MIX) >> shift)
        while True:
            code = slots[s]
            if code < 0:
                table[s] = key
                slots[s] = count
                codes[i] = count
                count += 1
                break
            if table[s] == key:
                codes[i] = code
                break
            s = (s + 1) & (capacity - 1)
    return keys.shape[0], count


@compiled
def _rehash(
    old: np.ndarray, old_slots: np.ndarray, table: np.ndarray, slots: np.ndarray, bits: int
) -> None:
    capacity = 1 << bits
    shift = np.uint64(64 - bits)
    for s in range(old.shape[0]):
        if old_slots[s] >= 0:
            t = np.int64((old[s] * _MIX) >> shift)
            while slots[t] >= 0:
                t = (t + 1) & (capacity - 1)
            table[t] = old[s]
            slots[t] = old_slots[s]


#: A new table's slots, as a power of two.
_FIRST_BITS = 12


@compiled
def _new_table(bits: int) -> tuple[np.ndarray, np.ndarray]:
    """An empty table of ``2**bits`` slots: the keys, and their numbers (-1: free)."""
    return np.empty(1 << bits, dtype=np.uint64), np.full(1 << bits, -1, dtype=np.int64)


@compiled
def _bits(table: np.ndarray) -> int:
    """How many bits number ``table``'s slots (its size is a power of two)."""
    bits = 0
    while (1 << bits) < table.shape[0]:
        bits += 1
    return bits


@compiled
def _index_onto(
    keys: np.ndarray, codes: np.ndarray, table: np.ndarray, slots: np.ndarray, count: int
) -> tuple[int, np.ndarray, np.ndarray]:
    """Number the distinct ``keys`` in order of first appearance, after the ``count`` that
    ``table`` numbers already; return how many there are in all, and the table that finds
    a key's number (``_find``; ``table`` itself, or a larger one).

    Open addressing on the keys (already 64-bit hashes), doubling at half load. The probing
    loop is a function of its own: with the table reassigned inside it, numba compiled it
    ten times slower.
    """
    bits = _bits(table)
    done = 0
    while True:
        done, count = _insert(keys, codes, done, table, slots, bits, count)
        if done == keys.shape[0]:
            return count, table, slots
        bits += 1
        grown, grown_slots = _new_table(bits)
        _rehash(table, slots, grown, grown_slots, bits)
        table = grown
        slots = grown_slots


@compiled
def _codes(keys: np.ndarray, codes: np.ndarray) -> int:
    """``_index_onto`` an empty table, without the table."""
    table, slots = _new_table(_FIRST_BITS)
    count, _, _ = _index_onto(keys, codes, table, slots, 0)
    return count


@compiled
def _find(table: np.ndarray, slots: np.ndarray, bits: int, key: np.uint64) -> int:
    """The number ``_index_onto`` gave ``key`` in its table of ``2**bits`` slots, or -1."""
    capacity = table.shape[0]
    s = np.int64((key * _MIX) >> np.uint64(64 - bits))
    while True:
        code = slots[s]
        if code < 0 or table[s] == key:
            return code
        s = (s + 1) & (capacity - 1)


@dataclass(frozen=True)
class Start:
    """Each key's totals before a stream's first row, found by the key's hash.

    A carried history's totals (``history.Carried``): streaming them as events meant joining
    every carried key against the keys of each partition (~680 k pair values, a quarter of
    a partition's history features); looked up here, only the keys the stream meets cost
    anything. The table is the one the carry's fold numbered the keys with, and the next
    carry folds onto it (``fold``). Its arrays are read-only: a carried history's frames
    hold the sums without a copy.
    """

    #: The values summed, in the order of ``sums``' rows (a stream's must match).
    values: tuple[str, ...]
    table: np.ndarray
    slots: np.ndarray
    #: values × keys, each key at the number ``_index_onto`` gave it.
    sums: np.ndarray
    #: Each key's latest marked time (µs), ``NO_TIME`` if none.
    last: np.ndarray

    @classmethod
    def of(
        cls, values: Sequence[str], hashes: np.ndarray, sums: np.ndarray, last: np.ndarray
    ) -> Start:
        """From rows of keys: their 64-bit hashes, sums (values × rows), latest marks. The
        rows of a hash seen twice add up in row order, as they would as events."""
        n = hashes.shape[0]
        _, start = _fold_onto(
            values,
            np.arange(n, dtype=np.int64),
            np.ascontiguousarray(hashes, dtype=np.uint64),
            np.ascontiguousarray(last, dtype=np.int64),
            np.ascontiguousarray(sums, dtype=np.float64),
            np.ascontiguousarray(last != NO_TIME),
        )
        return start

    @classmethod
    def none(cls, values: Sequence[str]) -> Start:
        """No key has totals before the stream (an empty table: nothing is looked up)."""
        empty = np.zeros(0, dtype=np.int64)
        return cls(
            tuple(values), np.zeros(0, dtype=np.uint64), empty, np.zeros((len(values), 0)), empty
        )


def _totals(
    order: np.ndarray,
    keys: np.ndarray,
    instants: np.ndarray,
    nokey: np.ndarray,
    values: np.ndarray,
    marks: np.ndarray,
    start_table: np.ndarray,
    start_slots: np.ndarray,
    start_sums: np.ndarray,
    start_last: np.ndarray,
    out: np.ndarray,
    last: np.ndarray,
) -> None:
    """Fill ``out`` (rows × values) and ``last`` for every row, visiting rows in ``order``
    (by instant, ties in stream order), each key's totals kept in a table row of its own,
    which starts from the key's ``Start`` (its ``start_`` arrays).

    ``instants`` are microseconds × 4 plus a tie order (``prior_totals``), so ``instant >> 2``
    is the row's time. Rows of one key at one instant all read the totals as they stood
    before the first of them.

    Memory, not arithmetic, is the cost: rows come in time order, not stream order, and
    keys in any order. So a row's totals are one run of memory, a key's running and seen
    totals another (``state``) and its three times a third, and the starts are looked up
    all at once, before the pass, as loads that do not wait on each other. Laid out value
    by value, with a key's state in five arrays, the passes of a 150 k partition's streams
    took 0.25-0.26 CPU-s instead of 0.16-0.18 (a one-off timing).
    """
    n = order.shape[0]
    m = values.shape[0]
    codes = np.empty(n, dtype=np.int64)
    distinct = _codes(keys, codes)
    # Per key: the running totals, then those seen at the start of its current instant.
    state = np.zeros((distinct, 2 * m))
    # Per key: its current instant, its latest mark, and that mark as seen at the instant.
    times = np.full((distinct, 3), NO_TIME, dtype=np.int64)
    if start_table.shape[0] > 0:
        # As if the start were the key's first event: 0 + x is x, to the bit (a sum of
        # counts and weights is never -0.0, the one x for which it is not).
        found = _started(codes, keys, distinct, start_table, start_slots)
        for c in range(distinct):
            if found[c] >= 0:
                times[c, 1] = start_last[found[c]]
        for k in range(m):
            sums = start_sums[k]
            for c in range(distinct):
                if found[c] >= 0:
                    state[c, k] = sums[found[c]]
    for j in range(n):
        row = order[j]
        c = codes[row]
        if instants[row] != times[c, 0]:
            times[c, 0] = instants[row]
            for k in range(m):
                state[c, m + k] = state[c, k]
            times[c, 2] = times[c, 1]
        if nokey[row]:
            for k in range(m):
                out[row, k] = 0.0
            last[row] = NO_TIME
        else:
            for k in range(m):
                out[row, k] = state[c, m + k]
            last[row] = times[c, 2]
        for k in range(m):
            state[c, k] += values[k, row]
        if marks[row]:
            times[c, 1] = instants[row] >> 2


@compiled
def _started(
    codes: np.ndarray, keys: np.ndarray, distinct: int, table: np.ndarray, slots: np.ndarray
) -> np.ndarray:
    """Where each of the ``distinct`` keys ``codes`` numbers is in a start's table, or -1."""
    hashes = np.empty(distinct, dtype=np.uint64)
    for row in range(codes.shape[0]):
        hashes[codes[row]] = keys[row]
    bits = _bits(table)
    found = np.empty(distinct, dtype=np.int64)
    for c in range(distinct):
        found[c] = _find(table, slots, bits, hashes[c])
    return found


_kernel = compiled(_totals)


def warm() -> None:
    """Compile (or load from the cache) before the first stream: ~1 s, once per process.
    ``fold`` too, which carries a history (``features/carry.py``)."""
    stream = pl.DataFrame(
        {"k": [1, 2], "t": [0, 4], "none": [False, True], "v": [1.0, 2.0], "m": [True, False]},
        schema={
            "k": pl.UInt64,
            "t": pl.Int64,
            "none": pl.Boolean,
            "v": pl.Float64,
            "m": pl.Boolean,
        },
    )
    running_totals(stream, ["v"], key="k", instant="t", nokey="none", mark="m")
    start = Start.of(["v"], np.array([1], dtype=np.uint64), np.ones((1, 1)), np.zeros(1, np.int64))
    running_totals(stream, ["v"], key="k", instant="t", nokey="none", mark="m", start=start)
    fold(stream, ["v"], key="k", time="t", mark="m")


def _inputs(*arrays: np.ndarray) -> list[np.ndarray]:
    """The arrays, all read-only: numba compiles once per combination of writable and
    read-only arguments, and polars hands out either, depending on the column."""
    for array in arrays:
        array.setflags(write=False)
    return list(arrays)


def _in_time_order(stream: pl.DataFrame, time: str) -> np.ndarray:
    """Row indices by ``time``, ties in stream order. By time only: streams arrive nearly
    in time order (a batch, then its events), which this sort finds in runs; a sort by key
    as well cost ~20x as much."""
    order = stream.select(pl.arg_sort_by(time, maintain_order=True)).to_series()
    return order.to_numpy().astype(np.int64, copy=False)


def _value_rows(stream: pl.DataFrame, values: list[str]) -> np.ndarray:
    """``values`` × rows, nulls as 0: one copy, column-major, so that each value's column
    is contiguous for the kernels."""
    matrix = stream.select(pl.col(v).fill_null(0.0) for v in values).to_numpy(order="fortran")
    return np.ascontiguousarray(matrix.T)


def as_times(name: str, micros: np.ndarray) -> pl.Series:
    """Microsecond times from the kernels as a timestamp column, ``NO_TIME`` as null."""
    series = pl.Series(name, micros)
    return series.set(series == NO_TIME, None).cast(TIMESTAMP)


def running_totals(
    stream: pl.DataFrame,
    values: list[str],
    *,
    key: str,
    instant: str,
    nokey: str,
    mark: str | None,
    start: Start | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Per row of ``stream`` (in its own order): the totals of ``values`` (values × rows)
    and the latest marked time (µs, ``NO_TIME`` if none) of the row's ``key`` before its
    ``instant``, counting from the key's ``start`` if it has one; ``nokey`` rows get zeros
    and no time.

    ``key`` is an unsigned 64-bit hash, ``instant`` the ``prior_totals`` integer. Rows of a
    key at one instant follow stream order, so sums add in one order from run to run. The
    start comes before every row, and a row's totals count it.
    """
    if start is None:
        start = _no_start(tuple(values))
    elif start.values != tuple(values):
        raise ValueError(f"a start of {start.values} for a stream of {values}")
    n = stream.height
    out = np.empty((n, len(values)))
    last = np.empty(n, dtype=np.int64)
    _kernel(
        *_inputs(
            _in_time_order(stream, instant),
            stream.get_column(key).to_numpy(),
            stream.get_column(instant).to_numpy(),
            stream.get_column(nokey).to_numpy(),
            _value_rows(stream, values),
            stream.get_column(mark).to_numpy() if mark else np.zeros(n, dtype=np.bool_),
            start.table,
            start.slots,
            start.sums,
            start.last,
        ),
        out,
        last,
    )
    return out.T, last


@functools.lru_cache(maxsize=16)
def _no_start(values: tuple[str, ...]) -> Start:
    return Start.none(values)


@compiled
def _fold(
    order: np.ndarray,
    keys: np.ndarray,
    times: np.ndarray,
    values: np.ndarray,
    marks: np.ndarray,
    table: np.ndarray,
    slots: np.ndarray,
    base_sums: np.ndarray,
    base_last: np.ndarray,
    first: np.ndarray,
    sums: np.ndarray,
    latest: np.ndarray,
) -> tuple[int, np.ndarray, np.ndarray]:
    """Per key, the sums of its rows' ``values`` added in ``order`` to its base (the
    ``base_`` arrays, numbered by ``table``: a ``Start``'s, which ``table`` is a copy of),
    and its latest marked time; for a key new to the base, in order of first appearance
    after the base's, a row of it (-1 for the base's). Return how many keys there are in
    all, and the table that numbers them."""
    n = keys.shape[0]
    m = values.shape[0]
    base = base_last.shape[0]
    codes = np.empty(n, dtype=np.int64)
    distinct, table, slots = _index_onto(keys, codes, table, slots, base)
    for c in range(base):
        first[c] = -1
        latest[c] = base_last[c]
        for k in range(m):
            sums[k, c] = base_sums[k, c]
    for c in range(base, distinct):
        first[c] = -1
        latest[c] = NO_TIME
        for k in range(m):
            sums[k, c] = 0.0
    for j in range(n):
        row = order[j]
        c = codes[row]
        if c >= base and first[c] < 0:
            first[c] = row
        for k in range(m):
            sums[k, c] += values[k, row]
        if marks[row] and times[row] > latest[c]:
            latest[c] = times[row]
    return distinct, table, slots


def _fold_onto(
    values: Sequence[str],
    order: np.ndarray,
    keys: np.ndarray,
    times: np.ndarray,
    rows: np.ndarray,
    marks: np.ndarray,
    onto: Start | None = None,
) -> tuple[np.ndarray, Start]:
    """``_fold`` onto ``onto`` (nothing): a row of each new key, and every key's totals."""
    if onto is None:
        onto = _no_start(tuple(values))
    elif onto.values != tuple(values):
        raise ValueError(f"cannot fold {values} onto a start of {onto.values}")
    base = onto.last.shape[0]
    if onto.table.shape[0]:
        # A copy: the start may still be read (a carry from the same history again).
        table, slots = onto.table.copy(), onto.slots.copy()
    else:
        table, slots = _new_table(_FIRST_BITS)
    n = keys.shape[0]
    first = np.empty(base + n, dtype=np.int64)
    sums = np.empty((len(values), base + n))
    latest = np.empty(base + n, dtype=np.int64)
    distinct, table, slots = _fold(
        *_inputs(order, keys, times, rows, marks),
        table,
        slots,
        *_inputs(onto.sums, onto.last),
        first,
        sums,
        latest,
    )
    # Copies: the arrays were sized for every row, the keys are fewer.
    arrays = _inputs(table, slots, sums[:, :distinct].copy(), latest[:distinct].copy())
    return first[base:distinct], Start(tuple(values), *arrays)


def fold(
    stream: pl.DataFrame,
    values: list[str],
    *,
    key: str,
    time: str,
    mark: str,
    onto: Start | None = None,
) -> tuple[np.ndarray, Start]:
    """Totals of ``values`` per distinct ``key`` (an unsigned 64-bit hash) over the whole
    ``stream``, added to those of ``onto`` (a carry's, which came before every row), and
    the latest ``time`` (µs) of its ``mark``-ed rows (``NO_TIME`` if none).

    Returns a row of each key new to ``onto``, in order of first appearance, and the totals
    as a ``Start``: ``onto``'s keys first, in its order, then the new ones. That is what a
    stream after these rows starts from, and what the next fold goes on from: a carry
    carried again folds only the events in between. Each key's values add in time order,
    ties in stream order, as ``running_totals`` adds them: a key's rows at one instant
    carry equal decayed weights, so the totals are the same to the last bit whatever order
    the stream's rows arrive in, which neither a multi-threaded group-by (it adds partial
    sums as threads finish) nor stream order alone promises.
    """
    return _fold_onto(
        values,
        _in_time_order(stream, time),
        stream.get_column(key).to_numpy(),
        stream.get_column(time).to_numpy(),
        _value_rows(stream, values),
        stream.get_column(mark).fill_null(False).to_numpy(),
        onto,
    )
