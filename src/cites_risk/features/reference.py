"""Packaged reference tables (CITES species, domesticated forms, HS codes, country and trade codes).

The Parquet files in ``reference_data/`` are derived from public sources by
``scripts/build_reference.py``; see ``reference_data/SOURCES.md``.
This module only reads them: no network, no environment variables.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import polars as pl

REFERENCE_DIR: Path = Path(__file__).resolve().parent / "reference_data"

TABLE_FILES: dict[str, str] = {
    "species": "cites_species.parquet",
    "species_names": "species_names.parquet",
    "domesticated": "domesticated_forms.parquet",
    "hs_codes": "hs_codes.parquet",
    "cites_hs": "cites_hs.parquet",
    "countries": "countries.parquet",
    "cites_codes": "cites_codes.parquet",
    "term_units": "term_units.parquet",
    "lemis_codes": "lemis_codes.parquet",
}

_NON_ALNUM = re.compile(r"[^a-z0-9]+")
_NON_ASCII_PATTERN = r"[^\x00-\x7F]"


def normalise_name(text: str) -> str:
    """Normalise a taxon / common name for exact-match lookups.

    NFKD, then drop every non-ASCII code point (so accents fold: "é" -> "e"),
    lowercase, turn every run of non-alphanumerics (punctuation, whitespace)
    into one space, and strip.
    """
    folded = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    return _NON_ALNUM.sub(" ", folded.lower()).strip()


def _normalise_ascii_expr(expr: pl.Expr) -> pl.Expr:
    return expr.str.to_lowercase().str.replace_all(r"[^a-z0-9]+", " ").str.strip_chars(" ")


def _normalise_series(series: pl.Series) -> pl.Series:
    # polars' own ``str.normalize`` ships a newer Unicode database than Python's
    # ``unicodedata`` (e.g. U+1CCD6.. "outlined" letters fold to ASCII only in
    # Unicode 16), so the rare non-ASCII values go through ``normalise_name``;
    # ASCII values (the bulk) stay vectorised. Outputs of ``normalise_name``
    # are fixed points of the ASCII pipeline, so one pass handles both.
    series = series.cast(pl.String)
    uniques = series.drop_nulls().unique()
    non_ascii = uniques.filter(uniques.str.contains(_NON_ASCII_PATTERN))
    if non_ascii.len() > 0:
        mapping = {value: normalise_name(value) for value in non_ascii.to_list()}
        series = series.replace(mapping)
    return series.to_frame("v").select(_normalise_ascii_expr(pl.col("v"))).to_series()


def normalise_name_expr(expr: pl.Expr) -> pl.Expr:
    """``normalise_name`` as an elementwise polars expression (nulls stay null)."""
    return expr.map_batches(_normalise_series, return_dtype=pl.String, is_elementwise=True)


@dataclass(frozen=True)
class Reference:
    species: pl.DataFrame
    species_names: pl.DataFrame
    hs_codes: pl.DataFrame
    cites_hs: pl.DataFrame
    countries: pl.DataFrame
    cites_codes: pl.DataFrame
    term_units: pl.DataFrame
    lemis_codes: pl.DataFrame
    #: Domesticated forms CITES does not cover (and the cage birds it names as not included):
    #: names that must never match a listed taxon. See SOURCES.md.
    domesticated: pl.DataFrame

    def country_codes(self) -> frozenset[str]:
        """Valid ISO-2 codes plus CITES/LEMIS pseudo-codes (XX unknown, XF Africa...)."""
        return frozenset(self.countries["iso2"].to_list())

    def codes(self, field: str) -> frozenset[str]:
        """Valid CITES codes for ``field`` in {"term", "unit", "purpose", "source"}."""
        known = set(self.cites_codes["field"].unique().to_list())
        if field not in known:
            raise ValueError(f"unknown CITES code field {field!r}; expected one of {sorted(known)}")
        return frozenset(self.cites_codes.filter(pl.col("field") == field)["code"].to_list())


@functools.cache
def _load(path: Path) -> Reference:
    frames = {name: pl.read_parquet(path / file) for name, file in TABLE_FILES.items()}
    return Reference(**frames)


def load_reference(path: Path | None = None) -> Reference:
    """Read the reference tables once per (resolved) directory."""
    return _load((path or REFERENCE_DIR).resolve())
