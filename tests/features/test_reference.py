from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cites_risk.features.reference import (
    REFERENCE_DIR,
    Reference,
    load_reference,
    normalise_name,
    normalise_name_expr,
)

SAMPLE = REFERENCE_DIR.parents[1] / "profiling" / "sample_data" / "lemis_amphibian_2016_2021.csv.gz"
SHARED_LEMIS = (
    Path(__file__).resolve().parents[2].parent
    / "shared"
    / "data"
    / "lemis-amphibian"
    / "amphibian_LEMIS_2016_to_2021.csv"
)

EXPECTED_SCHEMAS: dict[str, dict[str, pl.DataType]] = {
    "species": {
        "taxon_id": pl.Int64(),
        "full_name": pl.String(),
        "rank": pl.String(),
        "kingdom": pl.String(),
        "phylum": pl.String(),
        "class_name": pl.String(),
        "order_name": pl.String(),
        "family": pl.String(),
        "genus": pl.String(),
        "listing": pl.String(),
        "appendix": pl.String(),
        "cites_accepted": pl.Boolean(),
        "range_iso2": pl.List(pl.String()),
        "annotation": pl.String(),
    },
    "species_names": {"name": pl.String(), "taxon_id": pl.Int64(), "name_kind": pl.String()},
    "domesticated": {
        "name": pl.String(),
        "form": pl.String(),
        "name_kind": pl.String(),
        "cites_name": pl.String(),
        "wild_taxon": pl.String(),
        "basis": pl.String(),
        "note": pl.String(),
    },
    "hs_codes": {
        "hscode": pl.String(),
        "level": pl.Int8(),
        "description": pl.String(),
        "parent": pl.String(),
        "section": pl.String(),
        "section_name": pl.String(),
    },
    "cites_hs": {
        "hs_prefix": pl.String(),
        "category": pl.String(),
        "kingdom": pl.String(),
        "cover": pl.Boolean(),
        "note": pl.String(),
    },
    "countries": {
        "iso2": pl.String(),
        "name": pl.String(),
        "cites_party_since": pl.Date(),
        "cites_pseudo": pl.Boolean(),
        "former_code": pl.Boolean(),
    },
    "cites_codes": {"field": pl.String(), "code": pl.String(), "description": pl.String()},
    "term_units": {"term": pl.String(), "unit": pl.String()},
    "lemis_codes": {
        "field": pl.String(),
        "code": pl.String(),
        "value": pl.String(),
        "post_feb_2013": pl.Boolean(),
    },
}

TRICKY = [
    "Manis javanica",
    "  MANIS   Javanica  ",
    "Pangolin à écailles tricuspides",
    "Colibrí barbiesmeralda",
    "Temminck's Ground Pangolin",
    "Black-bellied\tPangolin\n",
    "Ornithoptera priamus \u00d7 O. victoriae",
    "Straße Œuvre ﬁsh ½ ™",
    # full-width "Manis javanica"
    "\uff2d\uff41\uff4e\uff49\uff53\u3000\uff4a\uff41\uff56\uff41\uff4e\uff49\uff43\uff41",
    "İstanbul ΣΊΣΥΦΟΣ",
    "\U0001ccd6\ua7f1 Unicode-16 compat letters",
    "---",
    "",
]


@pytest.fixture(scope="module")
def ref() -> Reference:
    return load_reference()


def resolve(ref: Reference, text: str, kind: str | None = None) -> pl.DataFrame:
    names = ref.species_names.filter(pl.col("name") == normalise_name(text))
    if kind is not None:
        names = names.filter(pl.col("name_kind") == kind)
    return names.join(ref.species, on="taxon_id")


def test_tables_have_documented_schema(ref: Reference) -> None:
    for table, expected in EXPECTED_SCHEMAS.items():
        frame: pl.DataFrame = getattr(ref, table)
        assert dict(frame.schema) == expected, table
        assert frame.height > 0, table


def test_load_reference_is_cached(ref: Reference) -> None:
    assert load_reference() is ref
    assert load_reference(REFERENCE_DIR) is ref


def test_manis_javanica_is_appendix_i(ref: Reference) -> None:
    hits = resolve(ref, "manis javanica", "scientific")
    assert hits["full_name"].to_list() == ["Manis javanica"]
    assert hits["appendix"].to_list() == ["I"]


def test_synonym_resolves(ref: Reference) -> None:
    # Species+ lists "Phataginus tricuspis (Rafinesque, 1821)" as a synonym of Manis tricuspis.
    hits = resolve(ref, "Phataginus tricuspis", "synonym")
    assert hits["full_name"].to_list() == ["Manis tricuspis"]
    assert hits["appendix"].to_list() == ["I"]


def test_english_common_name_resolves(ref: Reference) -> None:
    hits = resolve(ref, "Sunda Pangolin", "common_en")
    assert hits["full_name"].to_list() == ["Manis javanica"]


def test_french_common_name_with_accents_resolves(ref: Reference) -> None:
    hits = resolve(ref, "Pangolin à écailles tricuspides", "common_fr")
    assert hits["full_name"].to_list() == ["Manis tricuspis"]


def test_species_names_are_normalised_and_unique(ref: Reference) -> None:
    names = ref.species_names
    assert names.select(pl.col("name").str.len_chars().min()).item() >= 4
    assert names.filter(pl.col("name") != normalise_name_expr(pl.col("name"))).height == 0
    assert not names.select(pl.struct(pl.all()).is_duplicated().any()).item()
    assert set(names["name_kind"].unique()) == {
        "scientific",
        "synonym",
        "common_en",
        "common_fr",
        "common_es",
    }


def test_appendix_is_most_protective(ref: Reference) -> None:
    loxodonta = ref.species.filter(pl.col("full_name") == "Loxodonta africana")
    assert loxodonta["listing"].item() == "I/II"
    assert loxodonta["appendix"].item() == "I"
    nc_only = ref.species.filter(pl.col("listing") == "NC")
    assert nc_only["appendix"].null_count() == nc_only.height


@pytest.mark.parametrize("text", TRICKY)
def test_normalise_expr_agrees_on_tricky_strings(text: str) -> None:
    got = pl.DataFrame({"t": [text]}).select(normalise_name_expr(pl.col("t"))).item()
    assert got == normalise_name(text)


def test_normalise_examples() -> None:
    assert normalise_name("  MANIS   Javanica  ") == "manis javanica"
    assert normalise_name("Pangolin à écailles") == "pangolin a ecailles"
    assert normalise_name("Temminck's Ground-Pangolin") == "temminck s ground pangolin"
    assert normalise_name("\uff2d\uff41\uff4e\uff49\uff53") == "manis"


def test_normalise_expr_keeps_nulls() -> None:
    out = pl.DataFrame({"t": ["Á b", None]}).select(normalise_name_expr(pl.col("t")))
    assert out.to_series().to_list() == ["a b", None]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(), min_size=1, max_size=20))
def test_normalise_expr_agrees_property(texts: list[str]) -> None:
    got = pl.DataFrame({"t": texts}).select(normalise_name_expr(pl.col("t"))).to_series()
    assert got.to_list() == [normalise_name(t) for t in texts]


def test_cites_hs_prefixes_are_real_hs_codes(ref: Reference) -> None:
    hs = set(ref.hs_codes["hscode"].to_list())
    missing = set(ref.cites_hs["hs_prefix"].to_list()) - hs
    assert not missing
    assert set(ref.cites_hs["kingdom"].drop_nulls().unique()) <= {"Animalia", "Plantae"}


def test_hs_codes_keep_leading_zeros(ref: Reference) -> None:
    live_reptiles = ref.hs_codes.filter(pl.col("hscode") == "010620")
    assert live_reptiles["level"].item() == 6
    assert live_reptiles["parent"].item() == "0106"
    assert set(ref.hs_codes["level"].unique()) == {2, 4, 6}


def test_countries(ref: Reference) -> None:
    codes = ref.country_codes()
    assert {"NG", "CN", "XX", "NA"} <= codes
    pseudo = set(ref.countries.filter(pl.col("cites_pseudo"))["iso2"].to_list())
    assert {"XX", "XF", "XS"} <= pseudo
    assert "NG" not in pseudo


def test_cites_codes(ref: Reference) -> None:
    assert set(ref.cites_codes["field"].unique()) == {"term", "unit", "purpose", "source"}
    assert "I" in ref.codes("source")
    assert "IVC" in ref.codes("term")
    assert "KIL" in ref.codes("unit")
    with pytest.raises(ValueError, match="unknown CITES code field"):
        ref.codes("colour")


def test_term_units_blank_unit_means_count(ref: Reference) -> None:
    ivory_carvings = ref.term_units.filter(pl.col("term") == "IVC")
    assert None in ivory_carvings["unit"].to_list()
    assert "KIL" in ivory_carvings["unit"].to_list()


def test_lemis_codes(ref: Reference) -> None:
    countries = ref.lemis_codes.filter(pl.col("field") == "country")
    assert countries.filter(pl.col("code") == "NA")["value"].item() == "Namibia"


def test_lemis_sample_loads() -> None:
    sample = pl.read_csv(SAMPLE, infer_schema=False)
    assert sample.height == 16_366
    assert sample.width == 28


@pytest.mark.skipif(not SHARED_LEMIS.exists(), reason="shared public data not mounted")
def test_lemis_sample_is_byte_identical() -> None:
    with gzip.open(SAMPLE, "rb") as handle:
        packed = handle.read()
    assert hashlib.sha256(packed).digest() == hashlib.sha256(SHARED_LEMIS.read_bytes()).digest()
