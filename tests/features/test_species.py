"""Species matching on the real reference: domesticated forms, infraspecific listings, typos.

CITES does not cover the domesticated forms of listed animals (cattle, sheep, goats, dogs,
donkeys, water buffalo, yak...), and a listing of one subspecies does not list its species.
Everyday livestock trade must therefore never come out as a listed species, neither from the
declared taxon nor from the goods description, while the wild relatives and their misspellings
still do.
"""

from __future__ import annotations

from datetime import UTC, datetime

import polars as pl
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from cites_risk.features import species
from cites_risk.features.contract import DECLARATION, D
from cites_risk.features.history import History
from cites_risk.features.pipeline import build_features
from cites_risk.features.reference import load_reference, normalise_name
from cites_risk.features.species import APPENDIX_RANK, SpeciesMatcher

REF = load_reference()
START = datetime(2022, 1, 1, tzinfo=UTC)


def _species_features(pairs: list[tuple[str | None, str | None]]) -> list[dict[str, object]]:
    """``build_features`` species columns, one dict per (declared taxon, description)."""
    rows = [
        {D.ID: f"s{i}", D.DECLARED_AT: START, D.OFFICE: "JFK", D.TAXON: t, D.DESCRIPTION: d}
        for i, (t, d) in enumerate(pairs)
    ]
    frame = pl.DataFrame(rows, schema=DECLARATION.schema)
    out = build_features(frame.lazy(), History.empty(), REF).collect()
    return out.select("sp_taxon", "sp_appendix", "sp_listed", "sp_match_via").to_dicts()


def _one(taxon: str | None, description: str | None = None) -> dict[str, object]:
    return _species_features([(taxon, description)])[0]


def _not_listed(row: dict[str, object]) -> bool:
    return row["sp_listed"] is False and row["sp_appendix"] == 0


# Each of these came out as a listed species before: fuzzily ("Bos taurus" -> Bos gaurus, I),
# through the species+subspecies listing ("Ovis aries" I, "Capra hircus" III), or through a
# synonym the species index attaches to the wild taxon ("Canis familiaris" -> Canis lupus).
@pytest.mark.parametrize(
    "taxon",
    [
        "Bos taurus",
        "BOS TAURUS L.",
        "Bos taurus indicus",
        "Bos grunniens",
        "Bos frontalis",
        "Bubalus arnee bubalis",
        "Capra hircus",
        "Capra aegagrus hircus",
        "Ovis aries",
        "Ovis aries aries",
        "Canis familiaris",
        "Canis lupus familiaris",
        "Canis lupus dingo",
        "Equus africanus asinus",
        "Felis silvestris catus",
        "Lama guanicoe glama",
    ],
)
def test_domesticated_form_declared_as_taxon_is_not_listed(taxon: str) -> None:
    row = _one(taxon)
    assert _not_listed(row), row


@pytest.mark.parametrize(
    "description",
    [
        "cattle hides Bos taurus",
        "wool of domestic sheep",
        "greasy wool, Ovis aries",
        "goat meat (Capra hircus), frozen",
        "dog chews, Canis lupus familiaris",
        "yak hair Bos grunniens",
        "alpaca yarn Vicugna pacos",
        "buffalo leather Bubalus arnee bubalis",
    ],
)
def test_domesticated_form_in_description_is_not_listed(description: str) -> None:
    row = _one(None, description)
    assert _not_listed(row), row


def test_every_shipped_domesticated_form_gives_no_listed_match() -> None:
    forms = REF.domesticated["form"].to_list()
    assert len(forms) >= 20
    pairs = [(form, None) for form in forms] + [(None, f"frozen meat of {form}") for form in forms]
    rows = _species_features(pairs)
    listed = [(p, r) for p, r in zip(pairs, rows, strict=True) if not _not_listed(r)]
    assert listed == []


def test_domesticated_forms_table_names_its_basis() -> None:
    table = REF.domesticated
    assert table.filter(pl.col("name") != pl.col("form").map_elements(normalise_name)).is_empty()
    assert not table["name"].is_duplicated().any()
    assert set(table["basis"].unique()) <= {
        "annotation_names_form",
        "annotation_domesticated_form",
        "not_in_appendices",
        "domesticated_only",
    }
    # The forms CITES itself names as excluded from a listing are all there.
    named = set(table.filter(pl.col("basis") == "annotation_names_form")["form"].to_list())
    assert {
        "Bos frontalis",
        "Bos grunniens",
        "Bubalus bubalis",
        "Equus asinus",
        "Canis lupus familiaris",
        "Canis lupus dingo",
        "Ovis aries aries",
    } <= named


# (wild listed taxon, a one-letter typo of it, a domesticated form of it, appendix): the wild
# taxon and its typo still match as listed; the domesticated form does not.
@pytest.mark.parametrize(
    ("wild", "typo", "domestic", "appendix"),
    [
        ("Bos gaurus", "Bos gauruss", "Bos taurus", 1),
        ("Bos mutus", "Bos mutuss", "Bos grunniens", 1),
        ("Canis lupus", "Canis lupuss", "Canis lupus familiaris", 1),
        ("Equus africanus", "Equus afrcanus", "Equus africanus asinus", 1),
        ("Felis silvestris", "Felis silvestrs", "Felis silvestris catus", 2),
        ("Bubalus arnee", "Bubalus arnees", "Bubalus arnee bubalis", 3),
        ("Ovis aries ophion", "Ovis aries ophon", "Ovis aries aries", 1),
        ("Capra hircus aegagrus", "Capra hircus aegagras", "Capra hircus", 3),
    ],
)
def test_wild_relative_and_its_typo_match_where_the_domesticated_form_does_not(
    wild: str, typo: str, domestic: str, appendix: int
) -> None:
    exact, misspelt, tame = _species_features([(wild, None), (typo, None), (domestic, None)])
    assert (exact["sp_taxon"], exact["sp_appendix"]) == (wild, appendix)
    assert exact["sp_match_via"] in ("scientific", "synonym")
    assert (misspelt["sp_taxon"], misspelt["sp_appendix"], misspelt["sp_match_via"]) == (
        wild,
        appendix,
        "fuzzy",
    )
    assert _not_listed(tame), tame


def test_longer_listed_name_containing_a_domesticated_form_still_matches() -> None:
    # "Equus caballus" is the domestic horse; Przewalski's horse, "Equus caballus przewalskii"
    # in the index's synonyms, is Appendix I, also misspelt and inside a description.
    horse, wild_horse, misspelt, in_text = _species_features(
        [
            ("Equus caballus", None),
            ("Equus caballus przewalskii", None),
            ("Equus caballus przewalski", None),
            (None, "live Equus caballus przewalskii for zoo"),
        ]
    )
    assert _not_listed(horse)
    assert (wild_horse["sp_taxon"], wild_horse["sp_appendix"]) == ("Equus przewalskii", 1)
    assert (misspelt["sp_taxon"], misspelt["sp_match_via"]) == ("Equus przewalskii", "fuzzy")
    assert (in_text["sp_taxon"], in_text["sp_appendix"]) == ("Equus przewalskii", 1)


# (species, its appendix of its own, a listed subspecies, the subspecies' appendix). Before, the
# species took the most protective appendix of its subspecies: red deer, fallow deer and
# white-tailed deer came out as Appendix I or III, red fox fur as Appendix III.
@pytest.mark.parametrize(
    ("species", "own", "subspecies", "sub_appendix"),
    [
        ("Cervus elaphus", 0, "Cervus elaphus hanglu", 1),
        ("Dama dama", 0, "Dama dama mesopotamica", 1),
        ("Vulpes vulpes", 0, "Vulpes vulpes griffithi", 3),
        ("Odocoileus virginianus", 0, "Odocoileus virginianus mayensis", 3),
        ("Equus hemionus", 2, "Equus hemionus khur", 1),
        ("Ovis ammon", 2, "Ovis ammon hodgsonii", 1),
        ("Python molurus", 2, "Python molurus molurus", 1),
    ],
)
def test_a_subspecies_listing_does_not_list_its_species(
    species: str, own: int, subspecies: str, sub_appendix: int
) -> None:
    whole, part = _species_features([(species, None), (subspecies, None)])
    assert (whole["sp_taxon"], whole["sp_appendix"], whole["sp_listed"]) == (
        species,
        own,
        own > 0,
    )
    assert (part["sp_taxon"], part["sp_appendix"], part["sp_listed"]) == (
        subspecies,
        sub_appendix,
        True,
    )


def test_species_appendix_is_its_own_listing_not_its_subspecies() -> None:
    species = REF.species.filter(pl.col("full_name").is_in(["Ovis aries", "Capra hircus"]))
    got = {
        n: (lst, app) for n, lst, app in species.select("full_name", "listing", "appendix").rows()
    }
    # The raw Species+ listing keeps the subspecies' appendices; ``appendix`` does not.
    assert got == {"Ovis aries": ("I/II", "II"), "Capra hircus": ("III/NC", None)}


# --- property -----------------------------------------------------------------------------

MATCHER = SpeciesMatcher(REF)
APPENDIX = {
    t: APPENDIX_RANK.get(a or "", 0) for t, a in REF.species.select("taxon_id", "appendix").rows()
}


def _forms() -> list[str]:
    return sorted(REF.domesticated["form"].to_list())


FILLER = [
    "cattle",
    "hides",
    "wool",
    "greasy",
    "frozen",
    "meat",
    "leather",
    "wet",
    "salted",
    "skins",
    "hair",
    "yarn",
    "bones",
    "live",
    "chews",
    "breeding",
    "stock",
    "carcasses",
    "bales",
    "of",
    "and",
    "kg",
]
SEPARATORS = [" ", "  ", "\t", "-", ", ", "_", " / "]


def _listed(match: object) -> bool:
    taxon_id = getattr(match, "taxon_id", None)
    return taxon_id is not None and APPENDIX.get(taxon_id, 0) > 0


@st.composite
def written_forms(draw: st.DrawFn) -> str:
    """A domesticated form as a clerk might type it: any case, any separators, an author."""
    words = draw(st.deferred(lambda: st.sampled_from(_forms()))).split(" ")
    cased = [
        "".join(c.upper() if draw(st.booleans()) else c.lower() for c in word) for word in words
    ]
    text = cased[0]
    for word in cased[1:]:
        text += draw(st.sampled_from(SEPARATORS)) + word
    return text + draw(st.sampled_from(["", " L.", " (Linnaeus, 1758)", " sp.", ".", " "]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    form=written_forms(),
    before=st.lists(st.sampled_from(FILLER), max_size=3),
    after=st.lists(st.sampled_from(FILLER), max_size=3),
)
def test_a_domesticated_form_never_adds_a_listed_match(
    form: str, before: list[str], after: list[str]
) -> None:
    filler = " ".join(before + after)
    # The surrounding words alone name nothing listed (they are chosen not to).
    assume(not _listed(MATCHER.match_description(filler)))
    assert not _listed(MATCHER.match_taxon(form))
    assert not _listed(MATCHER.match_description(" ".join([*before, form, *after])))


# --- remembered matches ---------------------------------------------------------------------

TEXTS = [
    "Dendrobates tinctorius",
    "Dendrobates tinctorus",
    "Bos taurus",
    "live poison dart frog Dendrobates auratus",
    "cattle hides",
    "Python regius",
    "Pyhton regius",
    "Agalychnis callidryas",
]


def _direct(texts: list[str], description: bool) -> dict[str, tuple[int, str, float]]:
    match = MATCHER.match_description if description else MATCHER.match_taxon
    found = {t: match(t) for t in texts}
    return {t: (m.taxon_id, m.via, m.confidence) for t, m in found.items() if m is not None}


def _framed(matcher: SpeciesMatcher, texts: list[str], description: bool) -> dict[str, tuple]:
    frame = matcher.frame(pl.Series(texts), description)
    return {t: (i, v, c) for t, i, v, c in frame.iter_rows()}


def test_remembered_matches_equal_fresh_ones_chunk_after_chunk(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A small memory, so that it fills and starts afresh within the test.
    monkeypatch.setattr(species, "MEMO_LIMIT", 3)
    matcher = SpeciesMatcher(REF)
    expected = {d: _direct(TEXTS, d) for d in (False, True)}
    # Same texts, different answers as taxon and as description: the memory keeps them apart.
    assert expected[False] and expected[True] and expected[False] != expected[True]
    for chunk in (TEXTS[:5], TEXTS, TEXTS[3:], list(reversed(TEXTS)), TEXTS):
        for description in (False, True):
            assert _framed(matcher, chunk, description) == {
                t: m for t, m in expected[description].items() if t in chunk
            }
            assert len(matcher._memo[description]) <= 3
