"""History of pairs of keys: only earlier declarations and results of the same pair count."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import polars as pl
import pytest

from cites_risk.features.contract import DECLARATION, INSPECTION, OFFENCE, D
from cites_risk.features.history import History
from cites_risk.features.pairs import PAIR_COLUMNS, PAIR_KEYS
from cites_risk.features.pipeline import SMOOTHING, build_features, feature_schema
from cites_risk.features.reference import load_reference

REF = load_reference()
DAY = datetime(2022, 3, 1, tzinfo=UTC)


def _decl(i: int, day: int, importer: str | None, hs: str) -> dict[str, object]:
    return {
        D.ID: f"d{i}",
        D.CONSIGNMENT: f"c{i}",
        D.DECLARED_AT: DAY + timedelta(days=day),
        D.OFFICE: "JFK",
        D.IMPORTER: importer,
        D.EXPORTER: "Beta Trading",
        D.DECLARANT: "Broker One",
        D.HS: hs,
        D.ORIGIN: "NG",
        D.EXPORT: "NG",
        D.DESTINATION: "US",
    }


def _features(rows: list[dict[str, object]], hits: dict[str, int]) -> pl.DataFrame:
    """Every declaration in ``hits`` was inspected a day after lodging (day offset > 0: hit)."""
    declarations = pl.DataFrame(rows, schema=DECLARATION.schema)
    lodged = {r[D.ID]: r[D.DECLARED_AT] for r in rows}
    inspections = pl.DataFrame(
        [
            {
                "declaration_id": i,
                "inspected_at": lodged[i] + timedelta(days=1),  # type: ignore[operator]
                "outcome": "hit" if hit else "clear",
                "selected_by": "model",
            }
            for i, hit in hits.items()
        ],
        schema=INSPECTION.schema,
    )
    history = History(
        declarations.lazy(), pl.DataFrame(schema=OFFENCE.schema).lazy(), inspections.lazy()
    )
    return build_features(declarations.lazy(), history, REF).collect()


def test_pair_counts_only_earlier_rows_of_the_same_pair() -> None:
    rows = [
        _decl(0, 0, "ACME LTD", "010690"),  # ACME in live animals: hit
        _decl(1, 5, "ACME LTD", "010690"),  # ACME in live animals again: clear
        _decl(2, 10, "ACME LTD", "050800"),  # ACME in another commodity
        _decl(3, 10, "Gamma Co", "010690"),  # another importer, same commodity
        _decl(4, 20, "ACME LTD", "010690"),  # ACME's third live-animal declaration
        _decl(5, 20, None, "010690"),  # no importer: no pair
    ]
    out = _features(rows, {"d0": 1, "d1": 0}).sort(D.ID)
    prior = out.get_column("importer_hs_prior_decl").to_list()
    inspected = out.get_column("importer_hs_inspected").to_list()
    assert prior == pytest.approx([0.0, 0.6931, 0.0, 0.0, 1.0986, 0.0], abs=1e-4)
    assert inspected == [0.0, 1.0, 0.0, 0.0, 2.0, 0.0]
    rate = out.get_column("importer_hs_hit_rate").to_list()
    # d4 saw one hit in two inspections of its pair; d2 (another commodity) saw none.
    overall = out.get_column("importer_hit_rate").to_list()[4]  # the prior is shared
    global_prior = (overall * (2 + SMOOTHING) - 1.0) / SMOOTHING
    assert rate[4] == pytest.approx((1.0 + global_prior * SMOOTHING) / (2.0 + SMOOTHING))
    assert rate[2] == pytest.approx(global_prior)
    assert rate[1] > rate[2]  # the earlier hit raised ACME's live-animal rate


def test_results_known_after_the_declaration_do_not_count() -> None:
    # Both lodged the same day; the first one's result arrives a day later.
    rows = [_decl(0, 0, "ACME LTD", "010690"), _decl(1, 0, "ACME LTD", "010690")]
    out = _features(rows, {"d0": 1}).sort(D.ID)
    assert out.get_column("importer_hs_inspected").to_list() == [0.0, 0.0]
    assert out.get_column("importer_hs_prior_decl").to_list() == [0.0, 0.0]


def test_pair_columns_are_declared_model_inputs() -> None:
    schema = feature_schema()
    assert set(PAIR_COLUMNS) <= set(schema)
    assert len({p.name for p in PAIR_KEYS}) == len(PAIR_KEYS)
