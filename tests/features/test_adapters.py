"""The shipped mappings turn real sources into contract records."""

from __future__ import annotations

import polars as pl

from cites_risk.features.contract import OFFENCE, D
from cites_risk.features.reference import Reference
from cites_risk.profiling.sources import LEMIS_SAMPLE, load_mapping, load_records
from tests.conftest import shared


def test_lemis_declarations_and_refusals(reference: Reference) -> None:
    mapping = load_mapping("lemis")
    decl = load_records(LEMIS_SAMPLE, mapping, "declaration", reference)
    insp = load_records(LEMIS_SAMPLE, mapping, "inspection", reference)
    assert decl.rows_read == 16_366
    # Every rejected row is accounted for: accepted + rejected == read.
    assert decl.accepted.height + decl.rejects.get_column("row").n_unique() == 16_366
    assert insp.accepted.height == 16_366
    # Refused is action R (457 rows), not disposition R (re-export).
    assert insp.accepted.filter(pl.col("outcome") == "hit").height == 457
    first = decl.accepted.row(0, named=True)
    assert first[D.TAXON] == "Rana catesbeinana"
    assert first[D.MASS] == 19749.0  # unit KG
    grams = decl.accepted.filter(pl.col(D.UNIT) == "GM").row(0, named=True)
    assert grams[D.MASS] == grams[D.QUANTITY] / 1000
    assert decl.accepted.get_column("x_species_code").null_count() == 0


def test_kcs_declarations_carry_extras(reference: Reference) -> None:
    path = shared("customs-declarations-kcs/df_syn_valid_eng.csv")
    mapping = load_mapping("kcs")
    decl = load_records(path, mapping, "declaration", reference)
    assert decl.accepted.height == 8_134 and decl.rejects.height == 0
    assert decl.accepted.schema["x_tax_rate"] == pl.Float64
    insp = load_records(path, mapping, "inspection", reference)
    assert insp.accepted.get_column("finding").value_counts().height == 3


def test_routes_seizures_become_offences(reference: Reference) -> None:
    path = shared("wildlife-seizures/routes_airport_seizures_2009_2016.csv")
    loaded = load_records(path, load_mapping("routes_seizures"), "offence", reference)
    assert loaded.rows_read == 773
    assert loaded.accepted.height + loaded.rejects.get_column("row").n_unique() == 773
    assert loaded.accepted.height > 740
    assert loaded.accepted.schema == OFFENCE.schema
    transit = loaded.accepted.filter(pl.col("offence_id") == "ROUTES-2").row(0, named=True)
    assert transit["countries_transit"] == ["AE"]  # "Dubai, UAE"
    assert transit["country_destination"] == "AU"
    assert transit["shared_with"] == ["*"]
