"""The invariants of ``build_features``, as properties over generated declarations and history.

- a declaration scored alone gets exactly the features it gets inside a batch;
- an offence or inspection dated after a declaration changes nothing for it;
- shuffling the input changes nothing; one output row per declaration, in input order;
- the output schema is the declared schema and has no nulls where the schema says none;
- unknown codes and empty reference tables give defined values, never an exception.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from cites_risk.features.contract import DECLARATION, INSPECTION, OFFENCE, D
from cites_risk.features.history import History
from cites_risk.features.pipeline import (
    NULLABLE,
    build_features,
    collect_features,
    feature_schema,
)
from cites_risk.features.reference import Reference, load_reference

REF = load_reference()
START = datetime(2022, 1, 1, tzinfo=UTC)
ENTITIES = ["ACME LTD", "Beta Trading", "Gamma Co", None]
COUNTRIES = ["NG", "CN", "VN", "US", "MY", "QQ", None]  # QQ is not a country
HS = ["010690", "0508", "440710", "030389", "770000", "12", None]
TAXA = [
    "Manis javanica",
    "Manis javanca",
    "Python regius",
    "Rana catesbeiana",
    "Mantella sp.",
    "Non-CITES entry",
    "",
    None,
]
DESCRIPTIONS = [
    "dried pangolin scales",
    "frozen fish fillets",
    "live ball pythons",
    "wooden handicrafts",
    "ÉCAILLES de pangolin!!",
    None,
]
SETTINGS = settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])

times = st.integers(min_value=0, max_value=60 * 24 * 3600).map(
    lambda s: START + timedelta(seconds=s)
)


@st.composite
def declaration_rows(draw: st.DrawFn, n_min: int = 1, n_max: int = 12) -> list[dict[str, object]]:
    n = draw(st.integers(n_min, n_max))
    rows = []
    for i in range(n):
        rows.append(
            {
                D.ID: f"d{i}",
                D.CONSIGNMENT: f"c{draw(st.integers(0, 3))}",
                D.DECLARED_AT: draw(times),
                D.OFFICE: draw(st.sampled_from(["JFK", "LAX", "MIA"])),
                D.IMPORTER: draw(st.sampled_from(ENTITIES)),
                D.EXPORTER: draw(st.sampled_from(ENTITIES)),
                D.DECLARANT: draw(st.sampled_from(ENTITIES)),
                D.HS: draw(st.sampled_from(HS)),
                D.DESCRIPTION: draw(st.sampled_from(DESCRIPTIONS)),
                D.TAXON: draw(st.sampled_from(TAXA)),
                D.PURPOSE: draw(st.sampled_from(["T", "S", "X", None])),
                D.SOURCE: draw(st.sampled_from(["W", "C", "Q", None])),
                D.PERMIT: draw(st.sampled_from(["P-1", None])),
                D.QUANTITY: draw(st.sampled_from([0.0, 1.0, 250.0, None])),
                D.UNIT: draw(st.sampled_from(["KG", "NO", "bags", None])),
                D.MASS: draw(st.sampled_from([0.0, 12.5, None])),
                D.VALUE: draw(st.sampled_from([0.0, 99.0, 1e6, None])),
                D.ORIGIN: draw(st.sampled_from(COUNTRIES)),
                D.EXPORT: draw(st.sampled_from(COUNTRIES)),
                D.TRANSIT: draw(st.sampled_from([None, [], ["MY"], ["AE", "QQ"]])),
                D.DESTINATION: "US",
            }
        )
    return rows


@st.composite
def offence_rows(draw: st.DrawFn) -> list[dict[str, object]]:
    n = draw(st.integers(0, 8))
    return [
        {
            "offence_id": f"o{i}",
            "detected_at": draw(times),
            "importer": draw(st.sampled_from(ENTITIES)),
            "exporter": draw(st.sampled_from(ENTITIES)),
            "country_origin": draw(st.sampled_from(COUNTRIES)),
            "countries_transit": draw(st.sampled_from([None, ["MY"], ["AE"]])),
            "hs_code": draw(st.sampled_from(HS)),
            "taxon": draw(st.sampled_from(TAXA)),
            "office": "JFK",
            "provider_org": "US-FWS",
            "shared_with": ["*"],
        }
        for i in range(n)
    ]


def _frame(rows: list[dict[str, object]], schema: pl.Schema) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=schema) if rows else pl.DataFrame(schema=schema)


def _history(
    declarations: pl.DataFrame, offences: list[dict[str, object]], inspected: list[int]
) -> History:
    """``inspected``: declarations by position; one named again is inspected again, three
    days later each time, and its outcome may change (a re-inspection finds what the first
    missed, or clears what it flagged)."""
    ids = declarations.get_column(D.ID).to_list()
    times_ = declarations.get_column(D.DECLARED_AT).to_list()
    inspections = []
    for k, i in enumerate(inspected):
        if i >= len(ids):
            continue
        again = inspected[:k].count(i)
        hit = i % 3 == 0 if again == 0 else (i + again) % 2 == 0
        inspections.append(
            {
                "declaration_id": ids[i],
                "inspected_at": times_[i] + timedelta(days=2 + 3 * again),
                "outcome": "hit" if hit else "clear",
                "selected_by": "model",
            }
        )
    return History(
        declarations=declarations.lazy(),
        offences=_frame(offences, OFFENCE.schema).lazy(),
        inspections=_frame(inspections, INSPECTION.schema).lazy(),
    )


def _features(
    declarations: pl.DataFrame, history: History, ref: Reference = REF, *, focused: bool = False
) -> pl.DataFrame:
    """Collected as ``Engine.features`` collects them: on the in-memory engine, and as
    written for a few declarations against a carried history (an online request)."""
    query = build_features(declarations.lazy(), history, ref, focused=focused)
    return collect_features(query, few_rows=focused and history.carried is not None)


@SETTINGS
@given(
    rows=declaration_rows(),
    offences=offence_rows(),
    inspected=st.lists(st.integers(0, 11), max_size=6),
)
def test_single_row_equals_batch(
    rows: list[dict[str, object]], offences: list[dict[str, object]], inspected: list[int]
) -> None:
    declarations = _frame(rows, DECLARATION.schema)
    history = _history(declarations, offences, inspected)
    batch = _features(declarations, history)
    for i in range(declarations.height):
        alone = _features(declarations.slice(i, 1), history)
        assert_frame_equal(alone, batch.slice(i, 1))
        # The online path reads only the history of the row's own keys: same features.
        focused = _features(declarations.slice(i, 1), history, focused=True)
        assert_frame_equal(focused, batch.slice(i, 1))


@SETTINGS
@given(
    rows=declaration_rows(),
    offences=offence_rows(),
    inspected=st.lists(st.integers(0, 11), max_size=6),
)
def test_own_presence_in_history_changes_nothing(
    rows: list[dict[str, object]], offences: list[dict[str, object]], inspected: list[int]
) -> None:
    """Lodged or not, once or twice in the batch: a declaration gets the same features.

    Lodged declarations are sorted in as history events rather than as extra targets; this
    pins that shortcut to the plain definition.
    """
    declarations = _frame(rows, DECLARATION.schema)
    history = _history(declarations, offences, inspected)
    batch = _features(declarations, history)
    twice = _features(pl.concat([declarations, declarations]), history)
    assert_frame_equal(twice.head(declarations.height), batch)
    assert_frame_equal(twice.tail(declarations.height), batch)
    for i in range(declarations.height):
        row = declarations.slice(i, 1)
        others = pl.concat([declarations.slice(0, i), declarations.slice(i + 1)])
        # The row's inspection results stay: the row is scored, not forgotten.
        unlodged = History(others.lazy(), history.offences, history.inspections)
        assert_frame_equal(_features(row, unlodged), batch.slice(i, 1))


@SETTINGS
@given(
    rows=declaration_rows(),
    offences=offence_rows(),
    inspected=st.lists(st.integers(0, 11), max_size=6),
    late=st.integers(1, 3600 * 24 * 30),
)
def test_later_history_changes_nothing_earlier(
    rows: list[dict[str, object]],
    offences: list[dict[str, object]],
    inspected: list[int],
    late: int,
) -> None:
    declarations = _frame(rows, DECLARATION.schema)
    history = _history(declarations, offences, inspected)
    before = _features(declarations, history)
    cutoff = declarations.get_column(D.DECLARED_AT).min()
    assert isinstance(cutoff, datetime)
    when = cutoff + timedelta(seconds=late)
    extra_offence = {
        "offence_id": "late",
        "detected_at": when,
        "importer": "ACME LTD",
        "exporter": "Beta Trading",
        "country_origin": "NG",
        "countries_transit": ["MY"],
        "hs_code": "0508",
        "taxon": "Manis javanica",
        "office": "JFK",
        "provider_org": "US-FWS",
        "shared_with": ["*"],
    }
    later_decl = {**rows[0], D.ID: "later", D.DECLARED_AT: when, D.CONSIGNMENT: "c-late"}
    later_insp = {
        "declaration_id": "later",
        "inspected_at": when,
        "outcome": "hit",
        "selected_by": "random",
    }
    grown = History(
        declarations=pl.concat([declarations, _frame([later_decl], DECLARATION.schema)]).lazy(),
        offences=pl.concat(
            [history.offences.collect(), _frame([extra_offence], OFFENCE.schema)]
        ).lazy(),
        inspections=pl.concat(
            [history.inspections.collect(), _frame([later_insp], INSPECTION.schema)]
        ).lazy(),
    )
    after = _features(declarations, grown)
    unaffected = declarations.get_column(D.DECLARED_AT) <= when
    assert_frame_equal(before.filter(unaffected), after.filter(unaffected))


@SETTINGS
@given(
    rows=declaration_rows(n_min=2),
    offences=offence_rows(),
    inspected=st.lists(st.integers(0, 11), max_size=6),
    seed=st.integers(0, 1000),
)
def test_shuffle_schema_and_nulls(
    rows: list[dict[str, object]],
    offences: list[dict[str, object]],
    inspected: list[int],
    seed: int,
) -> None:
    declarations = _frame(rows, DECLARATION.schema)
    history = _history(declarations, offences, inspected)
    out = _features(declarations, history)
    assert out.schema == feature_schema()
    assert out.get_column(D.ID).to_list() == declarations.get_column(D.ID).to_list()
    shuffled = declarations.sample(fraction=1.0, shuffle=True, seed=seed)
    again = _features(shuffled, history)
    assert_frame_equal(out.sort(D.ID), again.sort(D.ID))
    must_have = [c for c in out.columns if c not in NULLABLE and c != D.ID]
    counts = out.select(must_have).null_count().row(0)
    nulls = {c: n for c, n in zip(must_have, counts, strict=True) if n}
    assert nulls == {}


def test_unknown_codes_and_empty_reference_give_defined_values() -> None:
    rows = [
        {
            D.ID: "x",
            D.DECLARED_AT: START,
            D.OFFICE: "??",
            D.HS: "770000",
            D.ORIGIN: "QQ",
            D.EXPORT: "ZZ",
            D.TRANSIT: ["QQ"],
            D.PURPOSE: "?",
            D.SOURCE: "?",
            D.UNIT: "bags",
            D.TAXON: "Nonexistus imaginarius",
            D.DESCRIPTION: "!!!",
            D.QUANTITY: -5.0,
            D.VALUE: float("inf"),
        }
    ]
    declarations = _frame(rows, DECLARATION.schema)
    empty_ref = replace(
        REF,
        species=REF.species.clear(),
        species_names=REF.species_names.clear(),
        cites_hs=REF.cites_hs.clear(),
        hs_codes=REF.hs_codes.clear(),
        cites_codes=REF.cites_codes.clear(),
    )
    for ref in (REF, empty_ref):
        out = _features(declarations, History.empty(), ref)
        row = out.row(0, named=True)
        assert row["sp_appendix"] == 0 and row["sp_match_via"] == "none"
        assert row["hs_known"] is False and row["hs_cites_category"] == "none"
        assert row["log_quantity"] is None and row["log_value"] is None
        assert row["importer_newcomer"] is True and row["consignment_lines"] == 1.0


@pytest.mark.parametrize(
    ("taxon", "description", "expected_taxon", "appendix", "via"),
    [
        ("Manis javanica", None, "Manis javanica", 1, "scientific"),
        ("Manis javanca", None, "Manis javanica", 1, "fuzzy"),  # misspelt
        ("Mantella sp.", None, "Mantella", 2, "genus"),
        ("Dendrobates sp.", None, "Dendrobates", 2, "genus"),
        (None, "dried scales of sunda pangolin", "Manis javanica", 1, "description"),
        (
            "Non-CITES entry",
            "Écailles de PANGOLIN de Temminck",
            "Manis temminckii",
            1,
            "description",
        ),
    ],
)
def test_species_matching(
    taxon: str | None, description: str | None, expected_taxon: str, appendix: int, via: str
) -> None:
    rows = [
        {
            D.ID: "s",
            D.DECLARED_AT: START,
            D.OFFICE: "JFK",
            D.TAXON: taxon,
            D.DESCRIPTION: description,
        }
    ]
    row = _features(_frame(rows, DECLARATION.schema), History.empty()).row(0, named=True)
    assert (row["sp_taxon"], row["sp_appendix"], row["sp_match_via"]) == (
        expected_taxon,
        appendix,
        via,
    )
    if via == "description" and taxon:
        assert row["sp_misdeclared"] is True


@pytest.mark.parametrize("taxon", ["Salamandra salamandra", "Rana catesbeiana", "Hymenochirus sp."])
def test_unlisted_species_are_not_matched_to_relatives(taxon: str) -> None:
    rows = [{D.ID: "s", D.DECLARED_AT: START, D.OFFICE: "JFK", D.TAXON: taxon}]
    row = _features(_frame(rows, DECLARATION.schema), History.empty()).row(0, named=True)
    assert row["sp_listed"] is False and row["sp_appendix"] == 0


@pytest.mark.parametrize(
    ("taxon", "description", "listed", "misdeclared"),
    [
        ("Ambystoma tigrinum", "SALAMANDER TIGER SPE", False, False),  # not Panthera tigris
        ("Rana pipiens", "FROG NORTHERN LEOPARD BOD", False, False),
        ("Hylomantis lemur", "FROG LEMUR LEAF LIV", False, False),
        ("Mantella baroni", "MANTELLA BARON'S LIV", True, False),  # same genus: consistent
        (None, "tiger skin rug", True, True),  # one word, no other kind named: a real match
        ("Rana catesbeiana", "frozen frog legs with sunda pangolin scales", True, True),
    ],
)
def test_description_words_that_qualify_another_animal(
    taxon: str | None, description: str, listed: bool, misdeclared: bool
) -> None:
    rows = [
        {
            D.ID: "s",
            D.DECLARED_AT: START,
            D.OFFICE: "JFK",
            D.TAXON: taxon,
            D.DESCRIPTION: description,
        }
    ]
    row = _features(_frame(rows, DECLARATION.schema), History.empty()).row(0, named=True)
    assert (row["sp_listed"], row["sp_misdeclared"]) == (listed, misdeclared)


@pytest.mark.parametrize(
    ("term", "unit", "unit_is_cites", "valid"),
    [
        ("LIV", "NO", True, True),  # live animals counted
        ("MEA", "KG", True, True),  # meat weighed
        ("LIV", "M3", True, False),  # live animals by the cubic metre: implausible
        ("LIV", "bags", False, False),
        (None, "KG", True, None),  # no term declared: nothing to check
        ("XYZ", "KG", True, None),  # a term the table does not know
    ],
)
def test_term_unit_plausibility(
    term: str | None, unit: str, unit_is_cites: bool, valid: bool | None
) -> None:
    rows = [{D.ID: "u", D.DECLARED_AT: START, D.OFFICE: "JFK", D.TERM: term, D.UNIT: unit}]
    row = _features(_frame(rows, DECLARATION.schema), History.empty()).row(0, named=True)
    assert (row["unit_is_cites"], row["term_unit_valid"]) == (unit_is_cites, valid)


def test_a_reinspection_adds_what_it_found_without_moving_the_first_result() -> None:
    """A declaration cleared on a documentary check and found on a physical one later:
    from the first result it counts as inspected, from the second as a hit. Timing the
    declaration by its latest result hid the first one in between."""
    base = {
        D.OFFICE: "JFK",
        D.IMPORTER: "ACME LTD",
        D.HS: "0508",
        D.ORIGIN: "NG",
        D.EXPORT: "NG",
    }
    first = START
    rows = [
        {**base, D.ID: "inspected", D.DECLARED_AT: first},
        {**base, D.ID: "between", D.DECLARED_AT: first + timedelta(days=5)},
        {**base, D.ID: "after", D.DECLARED_AT: first + timedelta(days=12)},
    ]
    declarations = _frame(rows, DECLARATION.schema)
    results = [
        ("clear", first + timedelta(days=2)),
        ("hit", first + timedelta(days=10)),
        ("clear", first + timedelta(days=11)),  # a later clearance does not undo the find
    ]
    inspections = _frame(
        [
            {
                "declaration_id": "inspected",
                "inspected_at": at,
                "outcome": o,
                "selected_by": "model",
            }
            for o, at in results
        ],
        INSPECTION.schema,
    )
    history = History(
        declarations=declarations.lazy(),
        offences=_frame([], OFFENCE.schema).lazy(),
        inspections=inspections.lazy(),
    )
    got = _features(declarations, history).select(
        D.ID, "importer_inspected", "importer_recent_hits", "importer_hit_rate"
    )
    seen = {r[D.ID]: r for r in got.iter_rows(named=True)}
    assert seen["inspected"]["importer_inspected"] == 0.0
    assert seen["between"]["importer_inspected"] == 1.0
    assert seen["between"]["importer_recent_hits"] == 0.0
    assert seen["after"]["importer_inspected"] == 1.0
    assert seen["after"]["importer_recent_hits"] > 0.0
    # One inspected declaration, clear then found: the rate moves up, not the count.
    assert seen["after"]["importer_hit_rate"] > seen["between"]["importer_hit_rate"]
