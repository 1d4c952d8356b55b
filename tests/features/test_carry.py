"""A carried history gives the features of the full one (``features/carry.py``)."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from cites_risk.features.carry import carry, narrowed, through
from cites_risk.features.contract import DECLARATION, OFFENCE, D, I
from cites_risk.features.history import CONSIGNMENTS, KEY, KEY_VALUES, History, start_of
from cites_risk.features.pipeline import build_features, collect_features
from tests.conftest import LemisData
from tests.features.test_feature_invariants import (
    REF,
    SETTINGS,
    START,
    _features,
    _frame,
    _history,
    declaration_rows,
    offence_rows,
)


def _times(declarations: pl.DataFrame) -> list[datetime]:
    return sorted(declarations.get_column(D.DECLARED_AT).to_list())


@SETTINGS
@given(
    rows=declaration_rows(n_min=2),
    offences=offence_rows(),
    inspected=st.lists(st.integers(0, 11), max_size=8),
    cut=st.integers(0, 11),
    nudge=st.sampled_from([timedelta(0), timedelta(microseconds=1), timedelta(days=1)]),
)
def test_carried_history_gives_the_features_of_the_full_one(
    rows: list[dict[str, object]],
    offences: list[dict[str, object]],
    inspected: list[int],
    cut: int,
    nudge: timedelta,
) -> None:
    declarations = _frame(rows, DECLARATION.schema)
    history = _history(declarations, offences, inspected)
    times = _times(declarations)
    # At a declaration's own instant, or just before the next one.
    until = times[cut % len(times)] - nudge
    targets = declarations.filter(pl.col(D.DECLARED_AT) >= until)
    carried = carry(history, until)
    assert carried.carried is not None
    # Results two days after a declaration lodged before the cut stay events.
    full = _features(targets, history)
    assert_frame_equal(_features(targets, carried), full)
    assert_frame_equal(_features(targets, carried, focused=True), full)
    # Only results that can still reach a feature are kept: the rest are in the totals.
    kept = set(carried.inspections.collect().get_column(I.DECLARATION))
    late = set(carried.carried.late.collect().get_column(D.ID))
    assert kept <= set(targets.get_column(D.ID)) | late
    # An online request: the totals cut to its own key values give the same features.
    one = targets.head(1)
    cut = narrowed(carried, one)
    assert cut.carried is not None
    assert_frame_equal(_features(one, cut, focused=True), full.head(1))
    importers = set(one.get_column(D.IMPORTER))
    assert set(cut.carried.keys["importer"].get_column(KEY)) <= importers
    exporters = set(one.get_column(D.EXPORTER))
    pairs = cut.carried.pairs.select(D.IMPORTER, D.EXPORTER).rows()
    assert all(i in importers or e in exporters for i, e in pairs)
    # With the offence records indexed, the request is handed only those it can meet.
    indexed = carry(history, until, index_offences=True)
    assert_frame_equal(indexed.offences.collect(), history.offences.collect())
    met = narrowed(indexed, one)
    assert_frame_equal(_features(one, met, focused=True), full.head(1))
    assert met.offences.collect().height <= len(offences)


@SETTINGS
@given(
    rows=declaration_rows(n_min=3),
    offences=offence_rows(),
    inspected=st.lists(st.integers(0, 11), max_size=8),
    cuts=st.lists(st.integers(0, 11), min_size=2, max_size=4),
)
def test_carrying_partition_by_partition_equals_carrying_once(
    rows: list[dict[str, object]],
    offences: list[dict[str, object]],
    inspected: list[int],
    cuts: list[int],
) -> None:
    """The batch scorer's walk: carry to each partition's start, drop what follows its end."""
    declarations = _frame(rows, DECLARATION.schema)
    history = _history(declarations, offences, inspected)
    times = _times(declarations)
    starts = sorted({times[c % len(times)] for c in cuts})
    walked = history
    for start, end in zip(starts, [*starts[1:], times[-1]], strict=True):
        walked = carry(walked, start)
        part = declarations.filter(pl.col(D.DECLARED_AT).is_between(start, end))
        assert_frame_equal(_features(part, through(walked, end)), _features(part, history))
    # Each carry folded the events since the last onto its totals: the same sums as one.
    # Not to the bit for decayed offence counts: an offence's own weight can differ in its
    # last digits between the plans of two carries (so it did before the carried totals
    # were folded onto; the LEMIS test below has no offences and is exact).
    once = carry(history, starts[-1]).carried
    assert walked.carried is not None and once is not None
    for name, totals in once.keys.items():
        stepped = walked.carried.keys[name].sort(KEY)
        assert_frame_equal(
            stepped.drop("off_decay"), totals.sort(KEY).drop("off_decay"), check_exact=True
        )
        assert_frame_equal(stepped, totals.sort(KEY), rel_tol=1e-12)
        # The table the next stream or carry starts from holds the frame's totals.
        handed = walked.carried.starts[(name,)][1]
        built = start_of(walked.carried.keys[name], KEY_VALUES, stacked=False)
        np.testing.assert_array_equal(handed.sums.view(np.int64), built.sums.view(np.int64))
        np.testing.assert_array_equal(handed.last, built.last)
    assert_frame_equal(
        walked.carried.consignments.sort(KEY), once.consignments.sort(KEY), check_exact=True
    )


@SETTINGS
@given(rows=declaration_rows())
def test_carrying_back_in_time_is_refused(rows: list[dict[str, object]]) -> None:
    declarations = _frame(rows, DECLARATION.schema)
    history = _history(declarations, [], [])
    until = _times(declarations)[-1]
    with pytest.raises(ValueError, match="cannot carry a history back"):
        carry(carry(history, until), until - timedelta(seconds=1))


def test_a_carried_history_holding_events_from_before_its_carry_is_refused() -> None:
    """Carried again, the events since the carry are added after the carried totals: an
    event from before it would be counted after totals that should have held it."""
    rows = [
        {D.ID: "a", D.IMPORTER: "ACME LTD", D.DECLARED_AT: START + timedelta(days=1)},
        {D.ID: "b", D.IMPORTER: "ACME LTD", D.DECLARED_AT: START + timedelta(days=20)},
    ]
    declarations = pl.DataFrame(rows, schema=DECLARATION.schema)
    carried = carry(_history(declarations, [], []), START + timedelta(days=10))
    # Built by hand: the carry keeps only what came since, which holds no such row.
    stale = replace(carried, declarations=declarations.lazy())
    with pytest.raises(ValueError, match="holds events from before its carry"):
        carry(stale, START + timedelta(days=30))
    carry(carried, START + timedelta(days=30))


@SETTINGS
@given(rows=declaration_rows(n_min=2), brokers=st.lists(st.sampled_from(["B1", "B2"])))
def test_a_history_carried_without_the_models_extras_is_refused(
    rows: list[dict[str, object]], brokers: list[str]
) -> None:
    broker = [*brokers, *["B1"] * len(rows)]
    schema = pl.Schema({**DECLARATION.schema, "x_broker": pl.String()})
    declarations = pl.DataFrame(
        [{**row, "x_broker": b} for row, b in zip(rows, broker, strict=False)], schema=schema
    )
    history = _history(declarations, [], [0, 1])
    until = _times(declarations)[0]
    extras = {"x_broker": "category"}
    plain = carry(history, until)
    with pytest.raises(ValueError, match=r"carried without the keys \['x_broker'\]"):
        collect_features(build_features(declarations.lazy(), plain, REF, extras))
    # Carried with them, the extras' history is the full history's too.
    with_extras = carry(history, until, extras)
    targets = declarations.filter(pl.col(D.DECLARED_AT) >= until).lazy()
    assert_frame_equal(
        collect_features(build_features(targets, with_extras, REF, extras)),
        collect_features(build_features(targets, history, REF, extras)),
    )


def test_an_id_lodged_before_and_after_the_carry_keeps_its_results() -> None:
    """Ids should be unique, but a History does not enforce it: a result of an id folded
    before the carry must stay when the same id is lodged again after it."""
    rows = [
        {D.ID: "same", D.IMPORTER: "ACME LTD", D.DECLARED_AT: START},
        {D.ID: "same", D.IMPORTER: "ACME LTD", D.DECLARED_AT: START + timedelta(days=10)},
        {D.ID: "later", D.IMPORTER: "ACME LTD", D.DECLARED_AT: START + timedelta(days=20)},
    ]
    declarations = pl.DataFrame(rows, schema=DECLARATION.schema)
    history = _history(declarations, [], [0])
    carried = carry(history, START + timedelta(days=5))
    target = declarations.tail(1)
    assert_frame_equal(_features(target, carried), _features(target, history))


def test_partner_offences_before_the_carry_are_folded_and_later_ones_stay_events() -> None:
    """Importer A trades with exporter X before the carry, B only after it. X's offences:
    one before the carry, one A took part in (never A's partner offence), one after."""
    day = [START + timedelta(days=d) for d in range(30)]
    rows = [
        {D.ID: "a1", D.IMPORTER: "A", D.EXPORTER: "X", D.DECLARED_AT: day[1]},
        {D.ID: "b1", D.IMPORTER: "B", D.EXPORTER: "X", D.DECLARED_AT: day[20]},
        {D.ID: "a2", D.IMPORTER: "A", D.EXPORTER: "X", D.DECLARED_AT: day[25]},
        {D.ID: "b2", D.IMPORTER: "B", D.EXPORTER: "Y", D.DECLARED_AT: day[26]},
    ]
    offences = [
        {"offence_id": "o0", "detected_at": day[5], "importer": "C", "exporter": "X"},
        {"offence_id": "o1", "detected_at": day[6], "importer": "A", "exporter": "X"},
        {"offence_id": "o2", "detected_at": day[15], "importer": None, "exporter": "X"},
    ]
    declarations = pl.DataFrame(rows, schema=DECLARATION.schema)
    history = _history(declarations, [{**o, "shared_with": ["*"]} for o in offences], [])
    carried = carry(history, day[10])
    assert carried.carried is not None
    # Before day 10, only o0 had reached A (o1 is A's own); B had no partner yet.
    folded = carried.carried.partners[D.IMPORTER]
    assert dict(zip(folded.get_column(KEY), folded.get_column("off"), strict=True)) == {"A": 1.0}
    targets = declarations.filter(pl.col(D.DECLARED_AT) >= day[10])
    full = _features(targets, history)
    # b1 trades with X for the first time at that instant: nothing has reached B before it.
    assert full.get_column("importer_partner_offences").to_list() == [0.0, 2.0, 3.0]
    assert_frame_equal(_features(targets, carried), full)
    assert_frame_equal(_features(targets, carried, focused=True), full)
    one = narrowed(carried, targets.slice(1, 1))
    assert one.carried is not None
    assert one.carried.partners[D.IMPORTER].get_column(KEY).to_list() == ["A"]
    assert_frame_equal(_features(targets.slice(1, 1), one, focused=True), full.slice(1, 1))


def test_an_offence_of_no_time_reaches_a_new_partner_carried_as_uncarried() -> None:
    """The store never holds one, but a History built by hand may: an offence of no time
    reaches an importer from its first trade with the offender, carried or not. B first
    trades with X after the carry; X has one offence of no time and one before the carry."""
    day = [START + timedelta(days=d) for d in range(30)]
    rows = [
        {D.ID: "a1", D.IMPORTER: "A", D.EXPORTER: "Z", D.DECLARED_AT: day[1]},
        {D.ID: "b1", D.IMPORTER: "B", D.EXPORTER: "X", D.DECLARED_AT: day[20]},
        {D.ID: "b2", D.IMPORTER: "B", D.EXPORTER: "Y", D.DECLARED_AT: day[25]},
    ]
    offences = [
        {"offence_id": "o0", "detected_at": None, "importer": None, "exporter": "X"},
        {"offence_id": "o1", "detected_at": day[3], "importer": None, "exporter": "X"},
    ]
    declarations = pl.DataFrame(rows, schema=DECLARATION.schema)
    history = _history(declarations, [{**o, "shared_with": ["*"]} for o in offences], [])
    targets = declarations.filter(pl.col(D.DECLARED_AT) >= day[10])
    full = _features(targets, history)
    assert full.get_column("importer_partner_offences").to_list() == [0.0, 2.0]
    assert_frame_equal(_features(targets, carry(history, day[10])), full)


def test_a_request_is_handed_only_the_offences_it_can_meet_and_every_one_of_them() -> None:
    """The carry folds offences met by a key (o_key), a transit country (o_transit) and a
    partner traded with before it (o_old). A request still meets the earlier offences of a
    partner first traded with after the carry (o_new), or by the request itself on an
    earlier line (o_sibling), and every offence since the carry (o_late). o_far meets
    nothing."""
    day = [START + timedelta(days=d) for d in range(40)]
    rows = [
        {D.ID: "h1", D.IMPORTER: "A", D.EXPORTER: "X", D.DECLARED_AT: day[1]},
        {D.ID: "h2", D.IMPORTER: "A", D.EXPORTER: "Y", D.DECLARED_AT: day[20]},
        {D.ID: "h3", D.IMPORTER: "F", D.EXPORTER: "Q", D.DECLARED_AT: day[21]},
    ]
    offence: dict[str, object] = {"shared_with": ["*"], "importer": None, "exporter": None}
    offences: list[dict[str, object]] = [
        {**offence, "offence_id": "o_key", "detected_at": day[2], "country_origin": "CM"},
        {**offence, "offence_id": "o_transit", "detected_at": day[3], "countries_transit": ["AE"]},
        {**offence, "offence_id": "o_old", "detected_at": day[4], "exporter": "X"},
        {**offence, "offence_id": "o_new", "detected_at": day[5], "exporter": "Y"},
        {**offence, "offence_id": "o_sibling", "detected_at": day[6], "exporter": "Z"},
        {**offence, "offence_id": "o_far", "detected_at": day[7], "exporter": "Q"},
        {**offence, "offence_id": "o_late", "detected_at": day[12], "country_origin": "CM"},
    ]
    declarations = pl.DataFrame(rows, schema=DECLARATION.schema)
    history = _history(declarations, offences, [])
    request_rows = [
        {D.ID: "r1", D.IMPORTER: "A", D.EXPORTER: "Z", D.DECLARED_AT: day[30]},
        {
            D.ID: "r2",
            D.IMPORTER: "A",
            D.EXPORTER: "W",
            D.ORIGIN: "CM",
            D.TRANSIT: ["AE"],
            D.DECLARED_AT: day[31],
        },
    ]
    request = pl.DataFrame(request_rows, schema=DECLARATION.schema)
    lodged = replace(history, declarations=pl.concat([declarations, request]).lazy())
    full = _features(request, lodged)
    # o_old, o_new and o_sibling reached A through its partners X, Y and Z.
    assert full.get_column("importer_partner_offences").to_list() == [2.0, 3.0]
    assert full.get_column("origin_offences").to_list() == [0.0, 2.0]
    assert full.get_column("origin_days_since_offence").to_list()[1] == 19.0
    assert full.get_column("transit_offences_max").to_list() == [0.0, 1.0]

    carried = carry(history, day[10], index_offences=True)
    met = narrowed(carried, request)
    assert sorted(met.offences.collect().get_column("offence_id")) == [
        "o_late",
        "o_new",
        "o_sibling",
    ]
    served = replace(met, declarations=pl.concat([met.declarations.collect(), request]).lazy())
    assert_frame_equal(_features(request, served, focused=True), full)


def test_carried_totals_are_the_same_to_the_last_bit_every_time(lemis: LemisData) -> None:
    """Decayed sums add numbers of very different sizes, so their order must not vary."""
    history = History(
        lemis.declarations.lazy(),
        pl.DataFrame(schema=OFFENCE.schema).lazy(),
        lemis.inspections.lazy(),
    )
    until = _times(lemis.declarations)[lemis.declarations.height // 2]
    # Small chunks, as a large history makes them: a group-by's partial sums then met in
    # the order the threads finished.
    with pl.Config(streaming_chunk_size=64):
        runs = [carry(history, until, lemis.extras).carried for _ in range(4)]
    first = runs[0]
    assert first is not None
    for run in runs[1:]:
        assert run is not None
        for name, totals in first.keys.items():
            assert_frame_equal(run.keys[name].sort(KEY), totals.sort(KEY), check_exact=True)


def test_a_batch_shares_the_carried_starts_and_a_request_builds_its_own(
    lemis: LemisData,
) -> None:
    """A carry hands over the tables its fold numbered the keys with; each feature build
    copies the carried history (``keyed_history``) and reads the same tables. A copy with
    other totals never reads them, and a request's totals, cut to its own keys, have
    tables of their own."""
    history = History(
        lemis.declarations.lazy(),
        pl.DataFrame(schema=OFFENCE.schema).lazy(),
        lemis.inspections.lazy(),
    )
    until = _times(lemis.declarations)[lemis.declarations.height // 2]
    walked = carry(history, until, lemis.extras)
    carried = walked.carried
    assert carried is not None
    handed = dict(carried.starts)
    assert set(handed) == {(name,) for name in carried.keys} | {CONSIGNMENTS}
    batch = lemis.declarations.filter(pl.col(D.DECLARED_AT) >= until)
    for part in (batch.head(50), batch.slice(50, 50)):
        build_features(part.lazy(), walked, REF, lemis.extras).collect()
        assert all(carried.starts[label][1] is start for label, (_, start) in handed.items())
    # The handed-over table holds what one built from the totals would.
    origins = carried.keys["origin"]
    assert origins.height > 1
    built = start_of(origins, KEY_VALUES, stacked=False)
    np.testing.assert_array_equal(handed[("origin",)][1].sums, built.sums)
    np.testing.assert_array_equal(handed[("origin",)][1].last, built.last)
    # Same shared tables, other totals: built anew from them.
    other = replace(carried, keys={**carried.keys, "origin": origins.head(1)})
    assert other.start(["origin"]).sums.shape == (len(KEY_VALUES), 1)
    request = batch.head(1)
    cut = narrowed(walked, request, lemis.extras)
    assert cut.carried is not None
    own = cut.carried.keys["origin"]
    assert (
        own.height
        == origins.filter(pl.col(KEY).is_in(request.get_column(D.ORIGIN).implode())).height
    )
    assert cut.carried.start(["origin"]).sums.shape == (len(KEY_VALUES), own.height)
    assert carried.starts[("origin",)][1] is not handed[("origin",)][1]  # ``other``'s
    assert ("origin",) in cut.carried.starts and cut.carried.starts is not carried.starts


def test_carrying_in_steps_gives_the_totals_of_one_carry_to_the_bit(lemis: LemisData) -> None:
    """A carry carried again folds only the events since, onto the carried totals: each
    key's sums add the same numbers in the same order as one carry over everything."""
    history = History(
        lemis.declarations.lazy(),
        pl.DataFrame(schema=OFFENCE.schema).lazy(),
        lemis.inspections.lazy(),
    )
    times = _times(lemis.declarations)
    cuts = [times[len(times) * k // 4] for k in (1, 2, 3)]
    stepped = history
    for cut in cuts:
        stepped = carry(stepped, cut, lemis.extras)
    once = carry(history, cuts[-1], lemis.extras)
    assert stepped.carried is not None and once.carried is not None
    for name, totals in once.carried.keys.items():
        assert totals.height > 0 or name not in ("origin", "taxon")
        assert_frame_equal(stepped.carried.keys[name].sort(KEY), totals.sort(KEY), check_exact=True)
    assert_frame_equal(
        stepped.carried.consignments.sort(KEY),
        once.carried.consignments.sort(KEY),
        check_exact=True,
    )
    lines = stepped.carried.starts[CONSIGNMENTS][1]
    built = start_of(stepped.carried.consignments, ["lines"], stacked=False)
    np.testing.assert_array_equal(lines.sums, built.sums)
