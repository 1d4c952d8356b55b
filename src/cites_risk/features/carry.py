"""Carry a history forward: fold everything before a time into per-key totals.

Scoring a batch partition by partition, each against the full history, sorts the whole
history for every key again in every partition: a batch lodged in the history costs time
quadratic in its size. A partition that starts at ``until`` only needs, per key, what the
key had seen by then, and every statistic of declarations and inspection results is a
running sum. ``carry`` folds those events into one row of sums per key value; ``through``
drops what happened after a partition's last declaration. In time order, each partition
then folds only the previous one's events and sorts only its own, and the features are
those of the full history (``tests/features/test_carry.py``).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime

import polars as pl

from cites_risk.features.contract import TIMESTAMP, D, I, O, timestamp_literal
from cites_risk.features.history import (
    CONSIGNMENT_LINES,
    CONSIGNMENTS,
    IDX,
    KEY,
    KEY_VALUES,
    LAST_OFFENCE,
    LODGING,
    TIME,
    Carried,
    History,
    Lookup,
    OffenceIndex,
    inspection_events,
    key_hash,
    lodgings,
)
from cites_risk.features.pipeline import (
    DECLARATION_TEXT_KEYS,
    consignment_events,
    extra_history_keys,
    history_keys,
    key_events,
    keyed_history,
    overall_events,
    partner_events,
    trading_pairs,
    transit_events,
    with_text_keys,
)
from cites_risk.features.running_totals import Start, as_times, fold


def carry(
    history: History,
    until: datetime,
    extras: dict[str, str] | None = None,
    *,
    index_offences: bool = False,
) -> History:
    """``history`` with its declarations, inspection results and offences before ``until``
    folded.

    Declarations scored against the result must be at or after ``until``; ``extras`` are
    those of the model that will score them (their keys are carried too). A carried history
    can be carried again to a later time, which folds only the events in between.
    ``index_offences``: the result will serve many requests, each ``narrowed`` to its own
    offence records (``OffenceIndex``); a batch partition reads them all and skips this.
    """
    if history.carried is not None and until < history.carried.until:
        raise ValueError(
            f"cannot carry a history back from {history.carried.until} to {until}; "
            "carry the full history instead"
        )
    at = timestamp_literal(until)
    declared = pl.col(D.DECLARED_AT).cast(TIMESTAMP)
    keys = history_keys(history, extra_history_keys(extras))
    keyed = keyed_history(
        history,
        with_text_keys(history.declarations, DECLARATION_TEXT_KEYS)
        .with_columns(pl.lit(None, pl.UInt32).alias(IDX))
        .cache(),
    )
    before = pl.col(TIME) < at
    starts: list[list[Start]] = [[] for _ in keys]
    carried = history.carried
    # The carry's time in µs, as the folded streams hold times (``Carried.at``).
    since = 0 if carried is None else int(pl.select(carried.at.dt.epoch("us")).item())
    folded_keys = [
        _folded(
            key_events(keyed, [key]),
            at,
            list(KEY_VALUES),
            None if carried is None else (since, carried.keys[key.name], carried.start([key.name])),
            into,
        )
        for key, into in zip(keys, starts, strict=True)
    ]
    transit = (
        transit_events(keyed)
        .filter(before, pl.col(KEY).is_not_null())
        .group_by(KEY)
        .agg(pl.col("off").sum())
    )
    overall = overall_events(keyed).filter(before).select(pl.col("insp", "hits").sum())
    consignment_start: list[Start] = []
    consignments = _folded(
        consignment_events(keyed, None).with_columns(pl.lit(False).alias("__mark")),
        at,
        [CONSIGNMENT_LINES],
        None if carried is None else (since, carried.consignments, carried.consignment_start()),
        consignment_start,
        last=False,
    )
    pairs = trading_pairs(keyed).filter(pl.col("__first") < at)
    sides = (D.IMPORTER, D.EXPORTER)
    partners = [
        partner_events(keyed, side, None).filter(before).group_by(KEY).agg(pl.col("off").sum())
        for side in sides
    ]
    # Declarations lodged before ``until`` with a result event at or after it: the event is
    # still to come, and its keys are the declaration's (an id lodged twice is two rows).
    lodged = lodgings(history).cache()
    events = inspection_events(history, lodged).select(LODGING, TIME).cache()
    late = (
        lodged.filter(declared < at)
        .join(
            events.filter(pl.col(TIME) >= at).select(LODGING),
            on=LODGING,
            how="semi",
            maintain_order="left",
        )
        .drop(LODGING)
    )
    # The results of a declaration whose events all came before ``until`` are folded; the
    # others are kept whole, so that its events are found again as they were (and those
    # before ``until`` dropped: ``inspection_events``). An id also lodged at or after
    # ``until`` (ids should be unique, but a History does not enforce it) keeps its results.
    as_result = pl.col(D.ID).alias(I.DECLARATION)
    still_lodged = history.declarations.filter(declared >= at).select(as_result)
    folded_results = (
        lodged.select(LODGING, D.ID)
        .join(events, on=LODGING, how="inner")
        .group_by(D.ID)
        .agg(pl.col(TIME).max())
        .filter(pl.col(TIME) < at)
        .select(as_result)
        .join(still_lodged, on=I.DECLARATION, how="anti")
    )
    open_results = history.inspections.join(folded_results, on=I.DECLARATION, how="anti")
    # The in-memory engine: on the benchmark's 1 M-declaration history the fold took 3.2 s
    # there against 5.0 s on polars' default (streaming) engine.
    collected = pl.collect_all(
        [*folded_keys, overall, consignments, pairs, *partners, transit, late, open_results],
        engine="in-memory",
    )
    *key_frames, overall_frame, consignment_frame, pair_frame = collected[: len(keys) + 3]
    *partner_frames, transit_frame, late_frame, open_frame = collected[len(keys) + 3 :]
    index = offence_index(history, until) if index_offences else None
    key_totals = {key.name: frame for key, frame in zip(keys, key_frames, strict=True)}
    return History(
        declarations=history.declarations.filter(declared >= at),
        offences=history.offences if index is None else index.records.lazy(),
        inspections=open_frame.lazy(),
        carried=Carried(
            until=until,
            keys=key_totals,
            overall=overall_frame,
            consignments=consignment_frame,
            pairs=pair_frame,
            partners=dict(zip(sides, partner_frames, strict=True)),
            transit=transit_frame,
            late=late_frame.lazy(),
            offences=index,
            starts={
                **{
                    (key.name,): ((key_totals[key.name],), start)
                    for key, (start,) in zip(keys, starts, strict=True)
                },
                CONSIGNMENTS: ((consignment_frame,), consignment_start[0]),
            },
        ),
    )


def _folded(
    events: pl.LazyFrame,
    at: pl.Expr,
    values: list[str],
    base: tuple[int, pl.DataFrame, Start] | None,
    into: list[Start],
    *,
    last: bool = True,
) -> pl.LazyFrame:
    """Each key value's totals of ``values`` over ``events`` before ``at`` and (``last``)
    its latest offence, added to ``base`` (if the history was carried: when, in µs, the
    carried totals and their ``Start``); the same totals as a ``Start`` appended to
    ``into`` when the frame is collected.

    Summed by a compiled pass in time order (``running_totals.fold``): a group-by added
    each thread's partial sums in the order the threads finished, and the decayed sums
    (weights over many magnitudes) then moved in their last digit from one carry to the
    next, and the scores with them. The pass goes on from the carried totals, looked up in
    their table: a history carried again folds only the events since, where streaming the
    carried rows again hashed every key value ever seen (a batch walk's 150 k chunk of the
    10 M-row benchmark: ~0.9 s a carry). Its table is the one the features start from
    (``Carried.start``).
    """
    stream = events.filter(pl.col(TIME) < at, pl.col(KEY).is_not_null()).select(
        KEY,
        key_hash(stacked=False).alias("__h"),
        pl.col(TIME).cast(TIMESTAMP).dt.epoch("us").alias("__us"),
        *values,
        "__mark",
    )

    def totals(frame: pl.DataFrame) -> pl.DataFrame:
        onto = None
        if base is not None:
            since, carried, onto = base
            if onto.last.shape[0] != carried.height:
                raise RuntimeError("carried totals and their start table disagree")
            # The fold adds these events after the carried totals: they must come after.
            earliest = frame.get_column("__us").min()
            if isinstance(earliest, int) and earliest < since:
                raise ValueError("a carried history holds events from before its carry")
        first, start = fold(frame, values, key="__h", time="__us", mark="__mark", onto=onto)
        into.append(start)
        keys = frame.get_column(KEY).gather(first)
        if base is not None:
            # The carried keys come first, as in the fold. One chunk: a walk carries again
            # per partition, and would add one each time.
            keys = pl.concat([base[1].get_column(KEY), keys], rechunk=True)
        return pl.DataFrame(
            [
                keys,
                *(pl.Series(v, start.sums[i]) for i, v in enumerate(values)),
                *([as_times(LAST_OFFENCE, start.last)] if last else []),
            ]
        )

    schema = pl.Schema(
        {
            KEY: pl.String(),
            **dict.fromkeys(values, pl.Float64()),
            **({LAST_OFFENCE: TIMESTAMP} if last else {}),
        }
    )
    # The whole stream in one call: the optimiser must not slice or filter around it.
    return stream.map_batches(
        totals,
        schema=schema,
        predicate_pushdown=False,
        projection_pushdown=False,
        slice_pushdown=False,
    )


ROW = "__row"
PARTNER = "__partner"
#: Each side of a trade and its partner's.
SIDES = ((D.IMPORTER, D.EXPORTER), (D.EXPORTER, D.IMPORTER))


def offence_index(history: History, until: datetime) -> OffenceIndex:
    """``history``'s offence records indexed for requests scored against it carried to
    ``until``: by the parties in them, with the partners each entity first traded with at
    or after ``until``, and the records a carry to ``until`` leaves unfolded."""
    at = timestamp_literal(until)
    records = history.offences.collect()
    numbered = records.with_row_index(ROW)
    by_party = {
        party: Lookup.of(numbered.select(pl.col(party).alias(KEY), ROW).drop_nulls(KEY), KEY)
        for party in (O.IMPORTER, O.EXPORTER)
    }
    pairs = trading_pairs(history).filter(pl.col("__first") >= at).collect()
    new_partners = {
        side: Lookup.of(pairs.select(pl.col(side).alias(KEY), pl.col(partner).alias(PARTNER)), KEY)
        for side, partner in SIDES
    }
    unfolded = numbered.filter(pl.col(O.DETECTED_AT).cast(TIMESTAMP) >= at).get_column(ROW)
    return OffenceIndex(records, by_party, new_partners, unfolded)


def _met_offences(index: OffenceIndex, declarations: pl.DataFrame) -> pl.DataFrame:
    """The records of ``index`` the features of ``declarations`` can still meet: those not
    folded, and the earlier offences of partners first traded with since the carry, which
    reach the entity in full (``partner_events``). More records would give the same
    features; one fewer would not."""
    met = [index.unfolded]
    for side, partner in SIDES:
        known = index.new_partners[side].rows(declarations.get_column(side))
        # Partners the declarations themselves trade with for the first time.
        parties = pl.concat([known.get_column(PARTNER), declarations.get_column(partner)])
        met.append(index.by_party[partner].rows(parties).get_column(ROW))
    found = pl.concat(met).unique().sort()
    return index.records[found.to_numpy()]


def narrowed(
    history: History, declarations: pl.DataFrame, extras: dict[str, str] | None = None
) -> History:
    """``history`` with its carried totals cut to the key values of ``declarations``, and
    its offence records to those they can meet where the carry indexed them.

    That is all their features read of the totals (their streams look up only their own
    keys), found by binary search in totals sorted once (``Carried.by_key``): for a
    history that outlives many requests, as the service's snapshot does. Against a history
    carried to 1 M declarations (``bench_online``) the totals save ~6 ms of a request's
    hash scans, the offences ~20 ms and the trading pairs ~3 ms. The cut totals are the
    request's own, and so are the tables its streams start from (``Carried.starts``).
    """
    carried = history.carried
    if carried is None:
        return history
    keys = history_keys(history, extra_history_keys(extras))
    values = (
        with_text_keys(declarations.lazy(), DECLARATION_TEXT_KEYS)
        .select(
            *(key.declaration.alias(key.name) for key in keys),
            pl.col(D.CONSIGNMENT),
            # Partner totals are keyed by the raw column, which a history key may not be.
            *(pl.col(side).alias(f"__side_{side}") for side in carried.partners),
        )
        # A request's rows: the streaming engine's start-up was a third of this (2.4 ms
        # for one declaration, 1.8 ms in memory).
        .collect(engine="in-memory")
    )
    index = carried.by_key
    offences = history.offences
    if carried.offences is not None:
        offences = _met_offences(carried.offences, declarations).lazy()
    cut = {
        key.name: index.keys[key.name].rows(values.get_column(key.name))
        for key in keys
        if key.name in index.keys
    }
    return replace(
        history,
        offences=offences,
        carried=replace(
            carried,
            keys={**carried.keys, **cut},
            consignments=index.consignments.rows(values.get_column(D.CONSIGNMENT)),
            # Partner offences read the pairs of the declarations' importers, and of their
            # exporters (``trading_pairs``); a pair may be both.
            pairs=pl.concat(
                [lookup.rows(declarations.get_column(side)) for side, lookup in index.pairs.items()]
            ).unique(),
            partners={
                side: lookup.rows(values.get_column(f"__side_{side}"))
                for side, lookup in index.partners.items()
            },
            # The request's own: the snapshot's are for its whole key frames.
            starts={},
        ),
    )


def through(history: History, end: datetime) -> History:
    """``history`` without the declarations and offences after ``end``.

    Nothing after a declaration's own time reaches its features (consignment lines lodged
    at the same instant do), so declarations up to ``end`` lose nothing. Inspection results
    are kept whole: a declaration's events are read from all of its results
    (``inspection_events``), and those after ``end`` reach no feature of these.
    """
    at = timestamp_literal(end)
    return History(
        declarations=history.declarations.filter(pl.col(D.DECLARED_AT).cast(TIMESTAMP) <= at),
        offences=history.offences.filter(pl.col(O.DETECTED_AT).cast(TIMESTAMP) <= at),
        inspections=history.inspections,
        carried=history.carried,
    )


class HistoryWalk:
    """A history carried along a batch scored partition by partition.

    ``window`` gives each partition the history it needs: carried to its first declaration
    and cut after its last. Partitions in time order fold only the events since the
    previous one; a partition earlier than the last starts again from the full history.
    """

    def __init__(self, history: History, extras: dict[str, str] | None = None) -> None:
        self.full = history
        self.extras = extras
        self.walked = history

    def window(self, start: datetime, end: datetime) -> History:
        carried = self.walked.carried
        base = self.full if carried is not None and start < carried.until else self.walked
        self.walked = carry(base, start, self.extras)
        return through(self.walked, end)

    def for_batch(self, batch: pl.DataFrame) -> History:
        """``window`` over the batch's own time span (the full history if it is empty)."""
        times = batch.get_column(D.DECLARED_AT)
        start, end = times.min(), times.max()
        if not isinstance(start, datetime) or not isinstance(end, datetime):
            return self.full
        return self.window(start, end)
