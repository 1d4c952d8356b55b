"""Point-in-time history: what was known about a key strictly before a declaration.

Every history feature reduces to one shape: a stream of events (key, time, values) and,
for each declaration, the running totals of that key's events strictly earlier than the
declaration. That is one pass over the events in time order per key (``prior_totals``; a few
declarations put every key in one stream), which is what makes a million declarations
against a large history take seconds, not minutes.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime

import numpy as np
import polars as pl

from cites_risk.features.contract import (
    DECLARATION,
    INSPECTION,
    OFFENCE,
    TIMESTAMP,
    D,
    I,
    Outcome,
    empty,
    timestamp_literal,
)
from cites_risk.features.running_totals import NO_TIME, Start, as_times, running_totals

IDX = "__idx"
TIME = "__t"
KEY = "__key"
#: Which of several keys stacked into one stream an event or target belongs to.
KID = "__kid"
#: Decay constant of the time-decayed offence count: an offence a year ago counts 1/e.
DECAY_DAYS = 365.0
_EPOCH = pl.lit(946_684_800_000_000, pl.Int64)  # 2000-01-01 in microseconds
_US_PER_DAY = 86_400_000_000


@dataclass(frozen=True)
class HistoryKey:
    """A key whose history is tracked: how to read it (as text) from declarations and
    offences."""

    name: str
    declaration: pl.Expr
    offence: pl.Expr | None


@dataclass(frozen=True)
class Lookup:
    """``frame`` sorted by ``column``: the rows with given values, by binary search.

    The searches run in numpy on the column taken out once. A request looks up a few
    dozen values, and a handful of polars calls per lookup (~0.3 ms) were most of it.
    """

    frame: pl.DataFrame
    column: str

    @classmethod
    def of(cls, frame: pl.DataFrame, column: str) -> Lookup:
        return cls(frame.sort(column), column)

    @functools.cached_property
    def _sorted(self) -> np.ndarray:
        return self.frame.get_column(self.column).to_numpy()

    def rows(self, values: pl.Series) -> pl.DataFrame:
        """The rows whose ``column`` is one of ``values`` (nulls match nothing)."""
        dtype = self.frame.schema[self.column]
        if values.dtype != dtype:
            values = values.cast(dtype)
        wanted = {v for v in values.to_list() if v is not None}
        if not wanted or self.frame.is_empty():
            return self.frame.clear()
        keys = self._sorted
        needles = np.array(list(wanted), dtype=keys.dtype)
        first = np.searchsorted(keys, needles, side="left")
        count = np.searchsorted(keys, needles, side="right") - first
        if not count.any():
            return self.frame.clear()
        # Each value's run of rows, laid end to end: its first row plus 0, 1, ... count - 1.
        starts = np.repeat(first - (np.cumsum(count) - count), count)
        return self.frame[starts + np.arange(int(count.sum()))]


@dataclass(frozen=True)
class OffenceIndex:
    """Offence records, and where to find the ones a request can still meet.

    A carry folds the offences before ``until`` into the key and transit totals; what a
    request can still meet is the records since, and the earlier offences of partners an
    entity first traded with after ``until`` (each reaches the entity in full). A service
    scores request after request against one history: ``carry.narrowed`` finds a request's
    records by binary search and hands the query only those, not 70 k records.
    """

    #: The records, as the history holds them.
    records: pl.DataFrame
    #: Per party column (``importer``, ``exporter``): ``__key`` (the party) and ``__row``
    #: (the record's row in ``records``).
    by_party: Mapping[str, Lookup]
    #: Per side (``importer``, ``exporter``): ``__key`` (the entity) and ``__partner``, each
    #: party it first traded with at or after ``until``.
    new_partners: Mapping[str, Lookup]
    #: The rows of the records at or after ``until``.
    unfolded: pl.Series


@dataclass(frozen=True)
class CarriedLookups:
    """``Carried``'s totals, each found by its ``__key`` (``carry.narrowed``)."""

    keys: Mapping[str, Lookup]
    consignments: Lookup
    partners: Mapping[str, Lookup]
    #: The trading pairs by importer and by exporter.
    pairs: Mapping[str, Lookup]


@dataclass(frozen=True)
class Carried:
    """The declarations, inspection results and offences before ``until``, folded.

    Every history statistic of a declaration, an inspection result or an offence record is
    a running sum or, for the days since the last offence, a running maximum, so what a
    key had seen by ``until`` is one row; a declaration at or after ``until`` gets the same
    features from that row as from the events themselves. A batch scored partition by
    partition in time order carries these from one partition to the next and sorts only
    its own events (``features/carry.py`` builds them).

    Offence records stay in the history too: an entity that first trades with a partner
    after ``until`` inherits all of the partner's earlier offences (``partner_events``).
    A History holds only the offences its reader may see (consent), so these totals are
    that reader's too.
    """

    until: datetime
    #: Per history key: ``__key``, the sums of ``KEY_VALUES`` and ``LAST_OFFENCE``.
    keys: Mapping[str, pl.DataFrame]
    #: One row: inspections and hits over all keys (the prior the key rates shrink to).
    overall: pl.DataFrame
    #: ``__key`` (consignment id) and the lines lodged before ``until``.
    consignments: pl.DataFrame
    #: Trading pairs (importer, exporter) and their first trade: partner offences read them.
    pairs: pl.DataFrame
    #: Per side (``importer``, ``exporter``): ``__key`` and ``off``, the partner offences
    #: that reached the entity before ``until`` (``pipeline.partner_events``).
    partners: Mapping[str, pl.DataFrame]
    #: ``__key`` (a transit country) and ``off``, the offences through it before ``until``.
    transit: pl.DataFrame
    #: Declarations lodged before ``until`` whose inspection result is known only at or
    #: after it: the result is still an event, and its keys are the declaration's.
    late: pl.LazyFrame
    #: The offence records indexed, for a history that outlives many requests
    #: (``carry(index_offences=True)``); None otherwise.
    offences: OffenceIndex | None = None
    #: ``start``'s tables, with the frames each was built from: those the carry's folds
    #: handed over, or built when first asked for. Copies share it (the frames are
    #: checked); one cut to a request's keys (``carry.narrowed``) gets its own, so that
    #: the snapshot's tables are not replaced by a request's.
    starts: dict[tuple[str, ...], tuple[tuple[pl.DataFrame, ...], Start]] = field(
        default_factory=dict, repr=False, compare=False
    )

    @functools.cached_property
    def by_key(self) -> CarriedLookups:
        """The same totals, sorted once, each found by binary search."""
        return CarriedLookups(
            keys={name: Lookup.of(frame, KEY) for name, frame in self.keys.items()},
            consignments=Lookup.of(self.consignments, KEY),
            partners={side: Lookup.of(frame, KEY) for side, frame in self.partners.items()},
            pairs={side: Lookup.of(self.pairs, side) for side in (D.IMPORTER, D.EXPORTER)},
        )

    def start(self, names: Sequence[str]) -> Start:
        """The totals of the keys ``names`` (stacked in that order when several, as
        ``stacked`` tags them) as the ``Start`` of their stream (``KEY_VALUES``)."""
        return self._start(tuple(names), tuple(self.keys[name] for name in names), KEY_VALUES)

    def consignment_start(self) -> Start:
        """The line counts of the consignments as the ``Start`` of their stream."""
        return self._start(CONSIGNMENTS, (self.consignments,), (CONSIGNMENT_LINES,))

    def _start(
        self, label: tuple[str, ...], frames: tuple[pl.DataFrame, ...], values: Sequence[str]
    ) -> Start:
        """Built once per frames, or handed over by the carry that folded them (its hash
        table numbered the keys already): each feature build copies the carried history
        (``pipeline.keyed_history``), and the copies share ``starts``. The frames are kept
        with their table, so an entry can never be taken for other frames."""
        built = self.starts.get(label)
        if built is not None and all(a is b for a, b in zip(built[0], frames, strict=True)):
            return built[1]
        frame = pl.concat(
            [f.with_columns(pl.lit(kid, pl.UInt16).alias(KID)) for kid, f in enumerate(frames)],
            how="vertical",
        )
        start = start_of(frame, values, stacked=len(frames) > 1)
        self.starts[label] = (frames, start)
        return start

    @property
    def at(self) -> pl.Expr:
        """``until`` as an expression."""
        return timestamp_literal(self.until)

    @property
    def time(self) -> pl.Expr:
        """When the carried totals happen: just before ``until``, so that every
        declaration at or after it sees them. (Streams start from them, ``start``, so a
        declaration before ``until``, which a carried history must not be asked about,
        would see them too.)"""
        return _just_before(self.until)


@functools.lru_cache(maxsize=64)
def _just_before(until: datetime) -> pl.Expr:
    # Cached by value: a request's history is a copy of the service's, with its own cache.
    return timestamp_literal(until) - pl.duration(microseconds=1)


#: A carried key row's latest offence before ``until`` (null if none): the days since the
#: last offence read it.
LAST_OFFENCE = "__last_offence"
#: The sums of a key's history (declarations, inspection results and offence records), in
#: the order its stream adds them and a carried key row holds them (see ``Carried``).
KEY_VALUES = ("n", "off", "off_decay", "insp", "hits", "hits_recent")
#: A consignment's lines lodged (``Carried.consignments``).
CONSIGNMENT_LINES = "lines"
#: The consignments' entry in ``Carried.starts``, which no key's name can be.
CONSIGNMENTS = ("__consignments",)


@dataclass(frozen=True)
class History:
    """What the engine knew before scoring: declarations, offences and inspection results.

    The caller decides what each organisation may see (consent) before building this.
    ``declarations`` must hold the declarations being scored as well when they have been
    lodged, so that consignment siblings are visible to each other. With ``carried``, the
    declarations before ``carried.until`` are folded into it and only later ones are here;
    every declaration scored against it must then be at or after ``until``.
    """

    declarations: pl.LazyFrame
    offences: pl.LazyFrame
    inspections: pl.LazyFrame
    carried: Carried | None = None

    @functools.cached_property
    def inspected(self) -> pl.LazyFrame:
        """Inspection results joined to their declarations, shared by every history key."""
        return inspected_declarations(self).cache()

    @classmethod
    def empty(cls) -> History:
        return cls(
            declarations=empty(DECLARATION).lazy(),
            offences=empty(OFFENCE).lazy(),
            inspections=empty(INSPECTION).lazy(),
        )


def days_since_epoch(expr: pl.Expr) -> pl.Expr:
    return (expr.cast(TIMESTAMP).dt.epoch("us") - _EPOCH).cast(pl.Float64) / _US_PER_DAY


def decay_weight(time: pl.Expr) -> pl.Expr:
    """exp(t / tau): running sums of it, times exp(-t_now / tau), give decayed counts."""
    return (days_since_epoch(time) / DECAY_DAYS).exp()


def key_hash(stacked: bool) -> pl.Expr:
    """A row's ``__key`` as the 64-bit hash the running totals tell keys apart by (and its
    ``__kid``, stacked): one expression for stream rows and their ``Start`` alike."""
    hashed = pl.col(KEY).hash(seed=7)
    return hashed.xor(pl.col(KID).hash(seed=11)) if stacked else hashed


def start_of(frame: pl.DataFrame, values: Sequence[str], *, stacked: bool) -> Start:
    """``frame``'s rows as the ``Start`` of a stream: a row per key (``__key``, and ``__kid``
    stacked), its sums of ``values`` and its latest offence (``LAST_OFFENCE``, if any)."""
    last = (
        pl.col(LAST_OFFENCE).cast(TIMESTAMP).dt.epoch("us")
        if LAST_OFFENCE in frame.columns
        else pl.lit(None, pl.Int64)
    )
    # Every key is text in the streams: a key of another type would hash to other values.
    columns = frame.with_columns(pl.col(KEY).cast(pl.String)).select(
        key_hash(stacked).alias("__h"),
        last.fill_null(NO_TIME).alias("__last"),
        *(pl.col(v).cast(pl.Float64).fill_null(0.0) for v in values),
    )
    sums = columns.select(values).to_numpy(order="fortran").T
    return Start.of(
        values,
        columns.get_column("__h").to_numpy(),
        sums,
        columns.get_column("__last").to_numpy(),
    )


def prior_totals(
    targets: pl.LazyFrame,
    events: pl.LazyFrame,
    values: list[str],
    *,
    last_time: bool = False,
    inclusive: bool = False,
    own: bool = False,
    stacked: bool = False,
    start: Start | None = None,
) -> pl.LazyFrame:
    """Running totals of ``values`` over events of the same ``__key`` strictly before ``__t``.

    ``targets`` has ``__idx``, ``__key``, ``__t``; ``events`` has ``__key``, ``__t`` and the
    value columns. Returns one row per target, sorted by ``__idx``, with its ``__t``, the
    totals (0 where there were none) and, with ``last_time``, ``__last``: the latest earlier
    event time whose ``__mark`` column is true. ``inclusive`` counts events at the same instant too.

    An event may itself be a target (``own``): ``events`` then has an ``__idx`` column, set
    on those rows (and the target is left out of ``targets``). A declaration scored after it was
    lodged is both, and reading it once instead of twice halves the work of a batch.

    Targets and events go into one stream ordered by (time, order); a target ordered
    before the events of its instant sees only earlier ones (after them: inclusive). A running
    sum per key, read at the start of each row's instant, is the answer, with no join: one
    compiled pass over the stream (``running_totals``). Keys are hashed to 64 bits; a
    collision between two keys is about as likely as a meteorite.

    ``stacked``: targets and events are those of several keys, told apart by ``__kid``
    (see ``stack``); a target then gets a row per key, sorted by (``__idx``, ``__kid``).
    One stream for every key is one pass and a handful of plan nodes instead of a dozen
    per key, which is most of what a single online declaration costs.

    ``start``: each key's totals before every row of the stream (a carried history's,
    ``Carried.start``), hashed as the stream's keys are (``key_hash``). Every row must then
    be at or after the carry, as ``History`` requires.
    """
    # Said by the caller, who knows, rather than read off the events' schema: that would
    # resolve each key's plan once more on every call.
    if inclusive and own:
        raise ValueError("events that are targets are counted strictly before their instant")
    order_target = 2 if inclusive else 0
    hashed = key_hash(stacked)
    kid = [pl.col(KID)] if stacked else []
    t = targets.select(
        hashed.alias("__h"),
        *kid,
        # A target without a time has no past: zeros, like one without a key.
        (pl.col(KEY).is_null() | pl.col(TIME).is_null()).alias("__nokey"),
        pl.col(TIME).cast(TIMESTAMP),
        pl.col(IDX).cast(pl.UInt32),
        pl.lit(order_target, pl.Int8).alias("__order"),
        *(pl.lit(0.0).alias(v) for v in values),
        *([pl.lit(False).alias("__mark")] if last_time else []),
    )
    own_idx = pl.col(IDX).cast(pl.UInt32) if own else pl.lit(None, pl.UInt32)
    e = events.filter(
        (pl.col(KEY).is_not_null() | own_idx.is_not_null()) & pl.col(TIME).is_not_null()
    ).select(
        hashed.alias("__h"),
        *kid,
        pl.col(KEY).is_null().alias("__nokey"),
        pl.col(TIME).cast(TIMESTAMP),
        own_idx.alias(IDX),
        pl.lit(1, pl.Int8).alias("__order"),
        *(pl.col(v).cast(pl.Float64) for v in values),
        *([pl.col("__mark").fill_null(False)] if last_time else []),
    )
    # Time and tie order fused into one integer, the instant the totals are read at.
    stream = pl.concat([t, e], how="vertical").with_columns(
        (pl.col(TIME).dt.epoch("us").fill_null(0) * 4 + pl.col("__order")).alias("__ti")
    )
    kept = [IDX, *kid, TIME]
    columns: list[tuple[str, pl.DataType]] = [
        (IDX, pl.UInt32()),
        *([(KID, pl.UInt16())] if stacked else []),
        (TIME, TIMESTAMP),
        *((v, pl.Float64()) for v in values),
        *([("__last", TIMESTAMP)] if last_time else []),
    ]

    def totals(frame: pl.DataFrame) -> pl.DataFrame:
        sums, last = running_totals(
            frame,
            values,
            key="__h",
            instant="__ti",
            nokey="__nokey",
            mark="__mark" if last_time else None,
            start=start,
        )
        out = [pl.Series(v, sums[i]) for i, v in enumerate(values)]
        if last_time:
            out.append(as_times("__last", last))
        return frame.select(kept).with_columns(out).filter(pl.col(IDX).is_not_null())

    # One compiled pass instead of a dozen expressions per value (``running_totals``).
    # The optimiser must not prune or filter the stream around it: it reads every row.
    return stream.map_batches(
        totals,
        schema=pl.Schema(columns),
        predicate_pushdown=False,
        projection_pushdown=False,
        slice_pushdown=False,
    ).sort(IDX, *kid)


def stack(frames: list[pl.LazyFrame]) -> pl.LazyFrame:
    """The frames of several keys as one, each row tagged ``__kid`` with its key's position."""
    return pl.concat(
        [f.with_columns(pl.lit(i, pl.UInt16).alias(KID)) for i, f in enumerate(frames)],
        how="vertical",
    )


def stacked(
    frame: pl.LazyFrame,
    keys: Sequence[pl.Expr | None],
    *columns: pl.Expr | str,
    by_row: bool = True,
) -> pl.LazyFrame:
    """``frame``'s rows once per key of ``keys``, as ``stack`` gives them from a frame per key:
    ``__key`` the key's value, then ``columns``, then ``__kid`` the key's position (a
    ``None`` key is left out, its position kept).

    ``by_row``: row by row, in one ``select`` and one ``explode``, for a frame of a few
    rows: a frame per key was a branch of the plan each, which a single online request
    paid for in every stream (features 46 -> 33 ms). Key by key otherwise: a frame per key
    is a projection of the same columns, which a long frame concatenates without copying,
    where the explode builds a list per row (a request against a full history of 1 M
    declarations: 2.9 s key by key, 7.0 s row by row). Within one key the rows keep their
    order either way, and that is all the running totals read (each key value's sums in
    stream order).
    """
    tagged = [(kid, key) for kid, key in enumerate(keys) if key is not None]
    if not by_row or len(tagged) == 1:
        return pl.concat(
            [
                frame.select(key.alias(KEY), *columns, pl.lit(kid, pl.UInt16).alias(KID))
                for kid, key in tagged
            ],
            how="vertical",
        )
    kids = pl.Series(KID, [kid for kid, _ in tagged], dtype=pl.UInt16)
    return (
        frame.select(pl.concat_list([key for _, key in tagged]).alias(KEY), *columns)
        .explode(KEY)
        .with_columns(pl.lit(kids).gather(pl.int_range(pl.len()) % len(tagged)).alias(KID))
    )


#: An inspection event's count of inspected declarations (1 for its first result, else 0).
INSPECTED = "__insp"
#: The number of a declaration row results are matched to (a repeated id has several).
LODGING = "__lodging"


def lodgings(history: History) -> pl.LazyFrame:
    """The declarations inspection results belong to, each numbered (``__lodging``): the
    history's own and, carried, those lodged before ``until`` with results still to come."""
    declarations = history.declarations
    if history.carried is not None:
        declarations = pl.concat([declarations, history.carried.late], how="diagonal_relaxed")
    return declarations.with_row_index(LODGING)


def inspection_events(history: History, lodged: pl.LazyFrame) -> pl.LazyFrame:
    """Per declaration of ``lodged`` (``lodgings``): ``__lodging``, ``__t``, ``__insp`` and
    whether the event is a hit (``__hit``).

    A declaration counts as inspected from its first result, and as a hit from its first
    hit: one event at the first result (``__insp`` 1, a hit if it was one), and one more if
    a hit came only later (``__insp`` 0, a hit). Each is what was known from then on: a
    later result never moves an earlier one. A result cannot be known before its
    declaration was lodged, whatever the source says, so its time is at least the
    declaration's. Of a carried history, the events before ``until`` are in its totals.
    """
    results = lodged.select(LODGING, D.ID, D.DECLARED_AT).join(
        history.inspections.select(
            I.DECLARATION,
            I.INSPECTED_AT,
            (pl.col(I.OUTCOME) == Outcome.HIT).alias("__hit"),
        ),
        left_on=D.ID,
        right_on=I.DECLARATION,
        how="inner",
    )
    known = pl.max_horizontal(pl.col(I.INSPECTED_AT), pl.col(D.DECLARED_AT))
    firsts = results.group_by(LODGING).agg(
        known.min().alias("__first"),
        known.filter(pl.col("__hit")).min().alias("__first_hit"),
    )
    first = firsts.select(
        LODGING,
        pl.col("__first").alias(TIME),
        pl.lit(1.0).alias(INSPECTED),
        (pl.col("__first_hit") == pl.col("__first")).fill_null(False).alias("__hit"),
    )
    later_hit = firsts.filter(pl.col("__first_hit") > pl.col("__first")).select(
        LODGING,
        pl.col("__first_hit").alias(TIME),
        pl.lit(0.0).alias(INSPECTED),
        pl.lit(True).alias("__hit"),
    )
    events = pl.concat([first, later_hit], how="vertical")
    if history.carried is not None:
        events = events.filter(pl.col(TIME) >= history.carried.at)
    return events


def inspected_declarations(history: History) -> pl.LazyFrame:
    """The inspection events (``inspection_events``) with their declaration's columns and
    ``outcome`` (hit or clear), in the order the declarations were lodged."""
    lodged = lodgings(history)
    # Each declaration's first result comes before its later hit (as concatenated).
    return lodged.join(
        inspection_events(history, lodged),
        on=LODGING,
        how="inner",
        maintain_order="left_right",
    ).select(
        pl.all().exclude(LODGING, "__hit"),
        pl.when(pl.col("__hit"))
        .then(pl.lit(Outcome.HIT.value))
        .otherwise(pl.lit(Outcome.CLEAR.value))
        .alias(I.OUTCOME),
    )


def smoothed_rate(
    hits: pl.Expr, trials: pl.Expr, prior: float | pl.Expr, strength: float
) -> pl.Expr:
    """Additive smoothing toward ``prior``: few observations say little."""
    return (hits + prior * strength) / (trials + strength)


def log1p(expr: pl.Expr) -> pl.Expr:
    return (expr.cast(pl.Float64) + 1.0).log()
