"""Explanations: sentences name the declaration's real values, fast on large batches."""

from __future__ import annotations

import time

import polars as pl

from cites_risk.models.explain import explain, sentence_for
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
                assert f"{100 * row[c.feature]:.0f} %" in c.sentence
                checked += 1
    assert checked > 0


def test_sentence_wording() -> None:
    row = {"importer_hit_rate": 0.25, "importer_inspected": 8.0}
    assert sentence_for("importer_hit_rate", row) == (
        "25 % of earlier inspections of importer found an offence (8 inspected)"
    )
    assert sentence_for("cites_source", {"cites_source": "W"}) == "CITES source code W"
    pair = {"importer_hs_hit_rate": 0.4, "importer_hs_inspected": 5.0}
    assert sentence_for("importer_hs_hit_rate", pair) == (
        "40 % of earlier inspections of this importer with this HS code found an offence"
        " (5 inspected)"
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
