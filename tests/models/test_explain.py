"""Explanations: sentences name the declaration's real values, fast on large batches."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import polars as pl
import pytest

from cites_risk.features.contract import DECLARATION, INSPECTION, OFFENCE, D, I
from cites_risk.features.history import History
from cites_risk.features.pipeline import MODEL_COLUMNS, build_features
from cites_risk.features.reference import load_reference
from cites_risk.models.explain import _inputs, explain, sentence_for
from cites_risk.models.training import TrainResult


def test_sentences_name_real_values(trained: TrainResult) -> None:
    result = trained
    features = result.test.features
    explained = explain(result.model, features, top=3)
    assert len(explained) == features.height
    rows = features.to_dicts()
    checked = 0
    for row, items in zip(rows, explained, strict=True):
        weights = [c.weight for c in items]
        assert weights == sorted(weights, reverse=True) and all(w > 0 for w in weights)
        for c in items:
            assert c.sentence and c.feature in result.model.columns
            if c.feature == "cites_source" and row["cites_source"]:
                assert row["cites_source"] in c.sentence
                checked += 1
            if c.feature == "office" and row["office"]:
                assert row["office"] in c.sentence
                checked += 1
            if c.feature.endswith("_hit_rate") and not c.feature.startswith("x_"):
                # A smoothed rate is an estimate and says how many inspections it rests on.
                n = row[c.feature.removesuffix("_hit_rate") + "_inspected"]
                assert (
                    c.sentence.startswith("no earlier inspections")
                    if n == 0
                    else c.sentence.startswith("estimated hit rate")
                    and f" from {n:,.0f} earlier inspection" in c.sentence
                )
                checked += 1
    assert checked > 0


def test_sentence_wording() -> None:
    row = {"importer_hit_rate": 0.25, "importer_inspected": 8.0}
    assert sentence_for("importer_hit_rate", row) == (
        "estimated hit rate 25 % from 8 earlier inspections of importer"
    )
    assert sentence_for("cites_source", {"cites_source": "W"}) == "CITES source code W"
    pair = {"importer_hs_hit_rate": 0.4, "importer_hs_inspected": 5.0}
    assert sentence_for("importer_hs_hit_rate", pair) == (
        "estimated hit rate 40 % from 5 earlier inspections of this importer with this HS code"
    )
    assert sentence_for("origin_hs_prior_decl", {"origin_hs_prior_decl": 0.0}) == (
        "first declaration of this origin country with this HS code"
    )
    row2 = {"x_courier_hit_rate": 0.5, "x_courier_inspected": 4.0}
    assert "with this courier" in sentence_for("x_courier_hit_rate", row2)
    assert sentence_for("x_tax_type", {"x_tax_type": None}) == "tax type not declared"


def test_explain_is_fast_on_many_rows(labelled: pl.DataFrame, trained: TrainResult) -> None:
    result = trained
    many = pl.concat([labelled] * 4)  # ~50k rows
    started = time.perf_counter()
    out = explain(result.model, many, top=3)
    assert len(out) == many.height
    assert time.perf_counter() - started < 30


# A small real history run through ``build_features``: the sentences below read real
# feature rows, so they are checked against what the pipeline actually computes.
DAY = datetime(2022, 3, 1, tzinfo=UTC)
REF = load_reference()


def _decl(i: int, day: int, importer: str, **more: object) -> dict[str, object]:
    return {
        D.ID: f"d{i}",
        D.CONSIGNMENT: f"c{i}",
        D.DECLARED_AT: DAY + timedelta(days=day),
        D.OFFICE: "JFK",
        D.IMPORTER: importer,
        D.EXPORTER: "Beta Trading",
        D.HS: "010690",
        D.ORIGIN: "NG",
        D.EXPORT: "NG",
        D.DESTINATION: "US",
        **more,
    }


@pytest.fixture(scope="module")
def rows() -> dict[str, dict[str, Any]]:
    """Feature rows by declaration id: ACME was inspected once (a hit) before ``d1``; NEWCO
    never, and lodges a two-line consignment in two units; the exporter declared 61 times
    before ``d1``."""
    earlier = [_decl(100 + i, -100 + i, f"Other {i}") for i in range(60)]
    lines = [
        _decl(0, 0, "ACME LTD"),
        _decl(1, 10, "ACME LTD", quantity=980.0, unit="KG", declared_value=1250.0),
        _decl(2, 10, "NEWCO", quantity=3.0, unit="NO", consignment_id="c9"),
        _decl(3, 10, "NEWCO", quantity=5.0, unit="KG", consignment_id="c9"),
    ]
    declarations = pl.DataFrame(earlier + lines, schema=DECLARATION.schema)
    inspections = pl.DataFrame(
        [{I.DECLARATION: "d0", I.INSPECTED_AT: DAY + timedelta(days=1), I.OUTCOME: "hit"}],
        schema=INSPECTION.schema,
    )
    history = History(
        declarations.lazy(), pl.DataFrame(schema=OFFENCE.schema).lazy(), inspections.lazy()
    )
    features = build_features(declarations.lazy(), history, REF).collect()
    return {row[D.ID]: row for row in features.iter_rows(named=True)}


def _says(column: str, row: dict[str, Any]) -> str:
    """The sentence as ``explain`` builds it: from only the columns it materialises."""
    return sentence_for(column, {c: row[c] for c in _inputs(column, set(row))})


def test_one_hit_in_one_inspection_reads_as_an_estimate(rows: dict[str, dict[str, Any]]) -> None:
    row = rows["d1"]
    assert row["importer_inspected"] == 1.0
    # Smoothed toward the overall rate: 1 hit of 1 is ~12 %, not a share of the inspections.
    assert row["importer_hit_rate"] == pytest.approx(0.12, abs=0.005)
    assert _says("importer_hit_rate", row) == (
        "estimated hit rate 12 % from 1 earlier inspection of importer"
    )


def test_never_inspected_says_so_instead_of_a_rate(rows: dict[str, dict[str, Any]]) -> None:
    row = rows["d2"]
    assert row["importer_inspected"] == 0.0
    assert row["importer_hit_rate"] == pytest.approx(0.076, abs=0.005)  # the overall rate
    assert _says("importer_hit_rate", row) == (
        "no earlier inspections of importer (overall hit rate 8 % assumed)"
    )
    assert _says("importer_inspected", row) == "importer: never inspected before"
    assert _says("importer_hs_hit_rate", row).startswith(
        "no earlier inspections of this importer with this HS code"
    )


def test_many_earlier_declarations_are_not_few(rows: dict[str, dict[str, Any]]) -> None:
    assert _says("exporter_prior_decl", rows["d1"]) == "exporter: 61 earlier declarations"
    assert _says("importer_prior_decl", rows["d1"]) == "importer: only 1 earlier declaration"
    assert _says("importer_prior_decl", rows["d2"]) == "importer never declared before (newcomer)"


def test_log_features_read_in_declared_units(rows: dict[str, dict[str, Any]]) -> None:
    single, mixed = rows["d1"], rows["d2"]
    assert _says("consignment_log_quantity", single) == "the consignment totals 980 KG"
    # 3 NO + 5 KG: no one unit for the sum.
    assert _says("consignment_log_quantity", mixed) == (
        "quantities declared on the consignment's lines add up to 8"
    )
    assert _says("consignment_log_value", single) == (
        "declared values of the consignment's lines add up to 1,250"
    )
    assert _says("log_value", single) == "declared value 1,250"
    assert _says("log_value", mixed) == "no value declared"


def test_no_feature_falls_back_to_its_raw_value(rows: dict[str, dict[str, Any]]) -> None:
    """Every feature of the contract has words: no "consignment log quantity 6.88"."""
    for row in rows.values():
        for column in MODEL_COLUMNS:
            text = _says(column, row)
            assert not re.search(r"_|None|\bnan\b|\blog\b", text), (column, text)
            if isinstance(row[column], bool | int | float):
                assert not text.startswith(column.replace("_", " ")), (column, text)
