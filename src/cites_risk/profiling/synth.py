"""A realistic, deterministic scenario generator: declarations, offences, inspections, truth.

The scenario is grounded in the packaged reference tables (real HS 2022 codes, ISO-2
countries, CITES species with their range states) and plants named trafficking patterns
with ground truth, so that models and rules can be trained and measured on something
that behaves like a customs data stream without touching confidential data.

Determinism and scale come from one design decision: rows are generated in fixed-size
internal *blocks* (``BLOCK_ROWS``), each with its own RNG derived from ``(seed, block)``,
from entity tables that are built once up front. Output chunks are slices of the block
stream, so the data is identical whatever ``chunk_rows`` is, and memory is bounded by
one chunk. Everything inside a block is vectorised numpy; strings are built by polars.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import polars as pl
import pyarrow as pa

from cites_risk.features.contract import (
    DECLARATION,
    INSPECTION,
    OFFENCE,
    D,
    I,
    O,
    Outcome,
    Record,
    SelectedBy,
    conform,
)
from cites_risk.features.reference import Reference, normalise_name

GENERATOR_VERSION = "1.0.0"
#: Rows per internal block. Fixed: changing it changes the data for a given seed.
BLOCK_ROWS = 1 << 16

IntArray = npt.NDArray[np.int64]
FloatArray = npt.NDArray[np.float64]
BoolArray = npt.NDArray[np.bool_]

TRUTH_SCHEMA = pl.Schema(
    {"declaration_id": pl.String, "is_trafficking": pl.Boolean, "pattern": pl.String}
)

PATTERNS: tuple[str, ...] = (
    "cover_commodity",
    "misdeclared_species",
    "transit_hub",
    "repeat_offender",
    "partner_of_offender",
    "newcomer",
    "undervaluation",
    "split_consignment",
    "origin_outside_range",
)
_NONE = len(PATTERNS)  # pattern code of a legitimate consignment
_PAT = {name: code for code, name in enumerate(PATTERNS)}

# RNG stream ids: entity tables, offence history and each block draw from separate streams
# so that adding draws to one never shifts the others.
_STREAM_WORLD, _STREAM_HISTORY, _STREAM_BLOCK = 1, 2, 3

_US_PER_DAY = 86_400 * 1_000_000
_UNIT_NO, _UNIT_KG = 0, 1
_UNITS = pl.Series(["NO", "KG"])


@dataclass(frozen=True)
class PatternRates:
    """Share of *consignments* carrying each planted pattern (they are mutually exclusive).

    The defaults sum to 0.7 % of consignments; split consignments have many lines, so the
    share of trafficking *declarations* is a little higher (about 0.75-0.8 %).
    """

    cover_commodity: float = 0.0012
    misdeclared_species: float = 0.0010
    transit_hub: float = 0.0008
    repeat_offender: float = 0.0008
    partner_of_offender: float = 0.0006
    newcomer: float = 0.0007
    undervaluation: float = 0.0008
    split_consignment: float = 0.0003
    origin_outside_range: float = 0.0008

    def as_dict(self) -> dict[str, float]:
        return {f.name: float(getattr(self, f.name)) for f in fields(self)}

    def __post_init__(self) -> None:
        if any(r < 0 for r in self.as_dict().values()) or sum(self.as_dict().values()) > 0.5:
            raise ValueError("pattern rates must be >= 0 and sum to at most 0.5")


@dataclass(frozen=True)
class SynthConfig:
    """Everything that determines a scenario. Same config + same reference -> same data."""

    n_declarations: int
    seed: int = 0
    start: date = date(2024, 1, 1)
    days: int = 365
    #: Offence records generated independently of inspections (history and foreign
    #: intelligence). ``None``: scaled to the number of declarations.
    n_offences: int | None = None
    rates: PatternRates = field(default_factory=PatternRates)
    #: Importing country: the customs administration the scenario is about.
    destination: str = "KR"
    inspecting_org: str = "KR-KCS"
    n_offices: int = 40

    def __post_init__(self) -> None:
        if self.n_declarations < 0 or self.days < 1 or self.n_offices < 5:
            raise ValueError("need n_declarations >= 0, days >= 1 and n_offices >= 5")
        if self.n_offences is not None and self.n_offences < 0:
            raise ValueError("n_offences must be >= 0")

    @property
    def history_size(self) -> int:
        if self.n_offences is not None:
            return self.n_offences
        return max(40, self.n_declarations // 2_500)


@dataclass(frozen=True)
class SynthChunk:
    """One slice of the scenario. Concatenating all chunks gives the whole scenario.

    ``offences`` holds the seizures made by this chunk's inspections; chunk 0 also carries
    the offence history (records before the period, and foreign records during it).
    """

    index: int
    declarations: pl.DataFrame
    inspections: pl.DataFrame
    truth: pl.DataFrame
    offences: pl.DataFrame


# --- grounding constants -----------------------------------------------------------------

# Rough shares of partner countries in an East-Asian importer's trade (orders of magnitude
# from public trade statistics); every other valid country gets a small floor weight.
_TRADE_WEIGHTS: dict[str, float] = {
    "CN": 22, "US": 10, "JP": 8, "VN": 6, "DE": 5, "AU": 4, "TW": 4, "ID": 3, "MY": 3,
    "TH": 2.5, "IN": 2.5, "SG": 2, "HK": 2, "SA": 2, "IT": 1.5, "FR": 1.5, "GB": 1.5,
    "NL": 1.2, "CA": 1.2, "PH": 1.2, "MX": 1, "BR": 1, "RU": 1, "CL": 0.8, "AE": 0.8,
    "ES": 0.7, "NZ": 0.6, "BE": 0.6, "CH": 0.6, "BD": 0.5, "TR": 0.5, "PK": 0.4, "PE": 0.4,
    "AR": 0.4, "PL": 0.4, "SE": 0.4, "ZA": 0.4, "NG": 0.3, "KH": 0.3, "MM": 0.3, "EC": 0.3,
    "CO": 0.3, "AT": 0.3, "KE": 0.2, "LK": 0.2, "LA": 0.2, "TZ": 0.15, "MZ": 0.1, "MG": 0.1,
    "CM": 0.1, "CD": 0.05, "KR": 0.5,
}  # fmt: skip
_COUNTRY_FLOOR = 0.02
#: Hubs legitimate cargo is commonly routed through.
_LEGIT_HUBS: dict[str, float] = {
    "SG": 3, "HK": 3, "AE": 2, "NL": 1.5, "CN": 1.5, "DE": 1, "JP": 1, "MY": 1, "QA": 1,
    "TH": 0.8, "TR": 0.8,
}  # fmt: skip
#: Transit and staging hubs named in seizure reports (UNODC World Wildlife Crime Report).
TRAFFICKING_HUBS: tuple[str, ...] = (
    "NG", "VN", "MY", "SG", "AE", "HK", "TH", "LA", "CD", "MZ", "KE", "TZ",
)  # fmt: skip

# Transport mode by office kind; offices are named after their kind so the mode is legible.
_OFFICE_KINDS: tuple[tuple[str, str, float], ...] = (
    ("SEA", "sea", 0.30),
    ("AIR", "air", 0.25),
    ("POST", "post", 0.15),
    ("ROAD", "road", 0.15),
    ("RAIL", "rail", 0.05),
    ("INL", "sea", 0.10),  # inland clearance offices clear containers landed at sea ports
)

# LEMIS amphibian sample 2016-2021 (src/cites_risk/profiling/sample_data): of 16,366
# records 91 % are counted (NO) and 8 % weighed (KG); log(quantity) has mean 4.05 and
# sd 2.38 for NO and mean 8.20, sd 2.73 for KG. Purpose and source shares measured there.
_LEMIS_KG_SHARE = 0.08
_LEMIS_LOG_NO = (4.05, 2.38)
_LEMIS_LOG_KG = (8.20, 2.73)
_PURPOSES: dict[str, float] = {
    "T": 0.763, "S": 0.201, "P": 0.018, "E": 0.010, "M": 0.004, "B": 0.001, "Q": 0.001,
    "Z": 0.001, "H": 0.001,
}  # fmt: skip
_SOURCES: dict[str, float] = {
    "W": 0.566, "C": 0.369, "R": 0.033, "U": 0.017, "F": 0.014, "D": 0.001,
}  # fmt: skip
# General commerce (not in LEMIS): mostly weighed goods, a wide lognormal in kg.
_GENERAL_KG_SHARE = 0.8
_GENERAL_LOG_KG = (5.5, 2.2)
_GENERAL_LOG_NO = (4.0, 1.8)
#: log(kg per counted item) for counted goods.
_LOG_ITEM_KG = (-1.5, 1.4)
# Declared values: log(USD per kg) per HS code ~ N(2.0, 1.2), per-origin shift N(0, 0.3),
# per-line noise N(0, 0.55). LEMIS values are withheld in the sample, so these are assumed.
_HS_LOG_UV = (2.0, 1.2)
_ORIGIN_LOG_UV_SD = 0.3
_LINE_LOG_UV_SD = 0.55
#: Approximate 2024 exchange rates (units per USD).
_CURRENCIES: tuple[tuple[str, float, float], ...] = (
    ("USD", 1.0, 0.78),
    ("EUR", 0.92, 0.08),
    ("CNY", 7.2, 0.06),
    ("JPY", 150.0, 0.04),
    ("KRW", 1350.0, 0.04),
)
#: De-minimis style threshold (USD) that split consignments stay under.
SPLIT_VALUE_THRESHOLD = 150.0

_PROVIDERS: tuple[tuple[str, str, float], ...] = (
    # provider_org, its country (None: international), share of foreign records
    ("US-FWS", "US", 0.35),
    ("NL-CUSTOMS", "NL", 0.25),
    ("WCO-CEN", "", 0.40),
)

# Commodity phrases for HS headings (the cover loads named in seizure reports and the
# most common CITES-relevant goods); other codes use their HS description.
_HS4_PHRASES: dict[str, tuple[str, ...]] = {
    "0106": ("live reptiles", "live birds", "live pet animals"),
    "0202": ("frozen beef", "frozen boneless beef cuts"),
    "0301": ("live tropical fish", "live ornamental fish"),
    "0302": ("chilled fish", "fresh chilled fish"),
    "0303": ("frozen fish", "frozen whole fish", "frozen mackerel"),
    "0304": ("frozen fish fillets", "fish fillets"),
    "0305": ("dried fish", "dried fish maw", "salted dried fish"),
    "0306": ("frozen shrimp",),
    "0307": ("frozen squid", "live clams"),
    "0308": ("dried sea cucumber", "frozen sea urchin"),
    "0505": ("feathers",),
    "0506": ("animal bones", "bone meal"),
    "0507": ("horn and hoof products", "cattle horns"),
    "0508": ("sea shells", "dried coral decorations"),
    "0511": ("fish scales", "animal products"),
    "0602": ("live ornamental plants", "potted plants", "plant seedlings"),
    "0603": ("cut flowers",),
    "0713": ("dried beans", "dried lentils"),
    "0801": ("cashew nuts", "dried coconut"),
    "1201": ("soya beans",),
    "1209": ("seeds for sowing", "cassia seeds"),
    "1211": ("dried medicinal herbs", "ginseng roots", "dried herbs"),
    "3003": ("traditional medicine", "herbal medicine"),
    "3004": ("herbal medicine pills", "traditional medicine capsules"),
    "4103": ("raw hides and skins",),
    "4113": ("finished leather",),
    "4115": ("composition leather",),
    "4202": ("handbags", "leather wallets", "travel bags"),
    "4203": ("leather belts", "leather gloves"),
    "4304": ("artificial fur garments",),
    "4401": ("firewood", "wood chips"),
    "4403": ("timber logs", "hardwood logs"),
    "4407": ("sawn timber", "sawn hardwood"),
    "4409": ("wood flooring",),
    "4418": ("wooden doors and windows", "builders joinery"),
    "4420": ("wooden handicrafts", "wood carvings"),
    "6802": ("stone slabs", "marble tiles"),
    "7117": ("imitation jewellery", "costume jewellery"),
    "9202": ("guitars", "violins"),
    "9206": ("drums", "percussion instruments"),
    "9503": ("plastic toys", "toys"),
    "9601": ("bone carvings",),
    "9703": ("sculptures", "art carvings"),
}

# Which species a CITES-relevant heading carries when a specimen is declared.
_CATEGORY_GROUP: dict[str, str] = {
    "live_animals": "live_animals",
    "fish": "fish",
    "molluscs": "marine",
    "coral_shells": "marine",
    "aquatic_invertebrates": "marine",
    "leather_goods": "reptiles",
    "raw_hides": "reptiles",
    "tanned_hides": "reptiles",
    "furskins": "mammals",
    "animal_products": "animals",
    "ivory_horn": "animals",
    "worked_ivory": "animals",
    "meat": "animals",
    "live_plants": "plants",
    "cut_flowers": "plants",
    "medicinal_plants": "plants",
    "plant_extracts": "plants",
    "timber": "plants",
    "wood_products": "plants",
    "musical_instruments": "plants",
}
_GROUP_CLASSES: dict[str, tuple[str, ...]] = {
    "live_animals": ("Reptilia", "Aves", "Amphibia", "Arachnida", "Insecta"),
    "fish": ("Actinopteri", "Elasmobranchii"),
    "marine": ("Anthozoa", "Hydrozoa", "Gastropoda", "Bivalvia", "Holothuroidea"),
    "reptiles": ("Reptilia",),
    "mammals": ("Mammalia",),
    "animals": ("Mammalia", "Aves", "Reptilia"),
    "plants": (),  # kingdom Plantae
}
#: Description templates per species group: prefix, suffix around the species name.
_GROUP_TEMPLATES: dict[str, tuple[tuple[str, str], ...]] = {
    "live_animals": (("live ", ""), ("", ", live specimens"), ("captive-bred ", "")),
    "fish": (("live ", ""), ("ornamental fish (", ")")),
    "marine": (("", " shells"), ("dried ", ""), ("live ", " for aquaria")),
    "reptiles": (("", " leather handbags"), ("", " skin belts"), ("", " skins")),
    "mammals": (("", " furskins"), ("", " fur apparel")),
    "animals": (("", " specimens"), ("", " products")),
    "plants": (("", " plants"), ("artificially propagated ", ""), ("", " wood products")),
}


@dataclass(frozen=True)
class _Contraband:
    genera: tuple[str, ...]
    product: str
    true_hs4: tuple[str, ...]
    cover_hs4: tuple[str, ...]
    unit: int
    generic: str
    lookalikes: tuple[str, ...]
    concealments: tuple[str, ...]


# The goods seized most often (UNODC World Wildlife Crime Report 2024, CITES ETIS/MIKE),
# the headings they belong to and the cover loads they were found under.
_CONTRABAND: tuple[_Contraband, ...] = (
    _Contraband(("Manis",), "pangolin scales", ("0507", "0511"),
                ("0303", "0801", "1209", "0202", "0511"), _UNIT_KG, "animal scales", (),
                ("mis-declared as frozen fish", "declared as cashew nuts",
                 "declared as cassia seeds", "declared as fish scales")),
    _Contraband(("Loxodonta", "Elephas"), "elephant ivory", ("0507", "9601"),
                ("4403", "4407", "1201", "6802", "9206", "0713"), _UNIT_KG, "bone carvings",
                ("Bos taurus",),
                ("hidden in hollowed timber logs", "concealed under soya beans",
                 "hidden in false bottom", "concealed among stone slabs")),
    _Contraband(("Ceratotherium", "Diceros", "Rhinoceros"), "rhino horn", ("0507",),
                ("9703", "7117", "4420"), _UNIT_KG, "horn carvings", ("Bubalus bubalis",),
                ("declared as wood carvings", "hidden in personal luggage",
                 "disguised as art sculptures")),
    _Contraband(("Dalbergia", "Pterocarpus"), "rosewood", ("4403", "4407"),
                ("4401", "4418", "4409"), _UNIT_KG, "hardwood logs", ("Tectona grandis",),
                ("declared as firewood", "mis-described as builders joinery",
                 "mis-declared as non-CITES timber")),
    _Contraband(("Aquilaria", "Gyrinops"), "agarwood", ("1211", "4401"), ("1211", "4401"),
                _UNIT_KG, "wood chips", ("Santalum album",),
                ("declared as firewood chips", "mixed with dried herbs")),
    _Contraband(("Carcharhinus", "Sphyrna"), "dried shark fins", ("0305",), ("0303", "0305"),
                _UNIT_KG, "dried fish fins", ("Scomber japonicus",),
                ("mixed with non-CITES fins", "mis-declared as dried fish")),
    _Contraband(("Anguilla",), "live glass eels", ("0301",), ("0302", "0303"), _UNIT_KG,
                "live fish fry", ("Anguilla japonica",),
                ("mis-declared as chilled fish", "hidden in suitcases in oxygenated bags")),
    _Contraband(("Totoaba",), "totoaba swim bladders", ("0305", "0511"), ("0305", "0303"),
                _UNIT_KG, "dried fish maw", ("Cynoscion regalis",),
                ("declared as dried fish maw", "hidden among frozen fish")),
    _Contraband(("Hippocampus",), "dried seahorses", ("0511", "0305"), ("0305", "0308"),
                _UNIT_KG, "dried seafood", (), ("mixed with dried seafood",)),
    _Contraband(("Python", "Crocodylus", "Varanus", "Caiman"), "reptile skins",
                ("4103", "4113", "4202"), ("4115", "4202", "4203"), _UNIT_NO,
                "leather goods", ("Bos taurus",),
                ("declared as composition leather", "declared as cow leather")),
    _Contraband(("Psittacus", "Ara", "Cacatua", "Amazona"), "live parrots", ("0106",),
                ("0106", "9503"), _UNIT_NO, "live birds", ("Serinus canaria",),
                ("hidden in plastic bottles", "declared as captive-bred canaries")),
    _Contraband(("Astrochelys", "Geochelone", "Testudo", "Cuora", "Chelonoidis"),
                "live tortoises", ("0106",), ("9503", "0106"), _UNIT_NO, "live reptiles",
                ("Trachemys scripta",), ("declared as toys", "wrapped in socks in luggage")),
    _Contraband(("Panthera",), "big cat bones", ("0506",), ("1211", "0202"), _UNIT_KG,
                "animal bones", ("Bos taurus",),
                ("declared as cattle bones", "mixed with dried medicinal herbs")),
    _Contraband(("Moschus", "Ursus"), "musk pods and bear bile", ("0510", "3001"),
                ("1211",), _UNIT_KG, "traditional medicine", (),
                ("declared as traditional medicine", "mixed with dried medicinal herbs")),
    _Contraband(("Tridacna",), "giant clam shells", ("0307", "0508"), ("7117", "9602"),
                _UNIT_KG, "sea shells", ("Mercenaria mercenaria",),
                ("declared as imitation jewellery", "declared as vegetable ivory carvings")),
    _Contraband(("Acropora", "Euphyllia"), "live corals", ("0508", "0106"), ("7117",),
                _UNIT_NO, "aquarium decorations", (), ("declared as artificial coral",)),
    _Contraband(("Dendrobium", "Paphiopedilum"), "wild orchids", ("0602", "1211"),
                ("1211",), _UNIT_NO, "ornamental plants", ("Rosa chinensis",),
                ("declared as artificially propagated", "mixed with dried herbs")),
    _Contraband(("Ariocarpus", "Astrophytum", "Euphorbia"), "wild cacti and succulents",
                ("0602",), ("1209",), _UNIT_NO, "succulent plants", ("Echeveria elegans",),
                ("declared as artificially propagated", "declared as seeds for sowing")),
)  # fmt: skip

_PATTERN_CONCEALMENT: dict[str, str] = {
    "misdeclared_species": "declared as a non-CITES look-alike species",
    "newcomer": "imported through a newly registered company",
    "undervaluation": "undervalued invoice",
    "split_consignment": "split into small parcels under the threshold",
    "origin_outside_range": "false declaration of origin",
}


# --- small vectorised helpers ------------------------------------------------------------


@dataclass(frozen=True)
class _Ragged:
    """Variable-length integer lists, flattened, for vectorised "pick one of my items"."""

    offsets: IntArray
    lengths: IntArray
    values: IntArray

    @classmethod
    def from_lists(cls, lists: Sequence[Sequence[int]]) -> _Ragged:
        lengths = np.array([len(x) for x in lists], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
        flat = [v for x in lists for v in x]
        return cls(offsets, lengths, np.array(flat, dtype=np.int64))

    def pick(self, keys: IntArray, u: FloatArray) -> IntArray:
        """One uniformly chosen item of each key's list (every key's list must be non-empty)."""
        pos = self.offsets[keys] + (u * self.lengths[keys]).astype(np.int64)
        return self.values[pos]


def _cdf(weights: npt.ArrayLike) -> FloatArray:
    w = np.asarray(weights, dtype=np.float64)
    c = np.cumsum(w)
    return c / c[-1]


def _draw(cdf: FloatArray, rng: np.random.Generator, size: int) -> IntArray:
    """Indices drawn with the probabilities ``cdf`` encodes (inverse-CDF, vectorised)."""
    idx = np.searchsorted(cdf, rng.random(size), side="right")
    return np.minimum(idx, len(cdf) - 1).astype(np.int64)


def _zipf_cdf(n: int, exponent: float, offset: float) -> FloatArray:
    """Heavy-tailed activity: entity k trades in proportion to (k + offset) ** -exponent."""
    return _cdf((np.arange(n, dtype=np.float64) + offset) ** -exponent)


def _gather(values: pl.Series, idx: IntArray, name: str) -> pl.Series:
    """``values[idx]`` with null where ``idx < 0``."""
    missing = idx < 0
    if not missing.any():
        return values.gather(idx).alias(name)
    out = values.gather(np.where(missing, 0, idx))
    return out.set(pl.Series(missing), None).alias(name)


def _country_lists(countries: pl.Series, first: IntArray, second: IntArray, name: str) -> pl.Series:
    """A list[str] column from up to two country indices per row (-1: absent).

    Built from Arrow offsets: ``concat_list(...).list.drop_nulls()`` is ~40x slower here.
    ``second`` is only ever present where ``first`` is.
    """
    lengths = (first >= 0).astype(np.int32) + (second >= 0)
    offsets = np.zeros(len(first) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    flat = np.stack([first, second], axis=1).ravel()
    values = countries.gather(flat[flat >= 0]).to_arrow()
    # from_buffers, not pa.array(ndarray): the latter imports pandas (~1 s, once).
    arrow_offsets = pa.Array.from_buffers(pa.int32(), len(offsets), [None, pa.py_buffer(offsets)])
    return pl.Series(name, pa.ListArray.from_arrays(arrow_offsets, values))


# --- the world: entity and reference tables built once per scenario ----------------------


@dataclass(frozen=True)
class _Species:
    table: pl.DataFrame
    names: pl.Series  # full scientific name
    label: pl.Series  # common English name when known, else scientific
    appendix: pl.Series
    app1: BoolArray
    ranges: _Ragged  # country indices of each species' range
    range_keys: IntArray  # sorted species * n_countries + country, for membership tests
    groups: dict[str, IntArray]  # species group -> species indices
    group_cdf: dict[str, FloatArray]


@dataclass(frozen=True)
class _Hs:
    codes: pl.Series  # level-6 codes
    descriptions: pl.Series
    general_cdf: FloatArray  # general commerce popularity
    log_uv: FloatArray  # typical log(USD/kg) per code
    cites: IntArray  # codes under a CITES-relevant (non-cover) heading
    cites_cdf: FloatArray
    group: IntArray  # species group index per code, -1 if none
    is_cites: BoolArray
    with_species: IntArray  # CITES-relevant codes whose heading maps to a species group
    by_hs4: dict[str, IntArray]


@dataclass(frozen=True)
class _Trade:
    """Contraband kinds resolved against the reference tables."""

    kinds: tuple[_Contraband, ...]
    species: _Ragged  # species indices per kind
    true_hs: _Ragged
    cover_hs: _Ragged
    unit: IntArray
    product: pl.Series
    generic: pl.Series
    lookalike_names: pl.Series  # flattened look-alike names (non-CITES)
    lookalikes: _Ragged  # indices into lookalike_names per kind, may be empty
    concealments: pl.Series
    concealment_lists: _Ragged


@dataclass(frozen=True)
class _Entities:
    importers: pl.Series
    exporters: pl.Series
    declarants: pl.Series
    importer_cdf: FloatArray
    exporter_cdf: FloatArray
    declarant_cdf: FloatArray
    exporter_home: IntArray  # country index
    partners: npt.NDArray[np.int64]  # (n_importers, 4) exporter indices
    broker: IntArray  # primary declarant per importer
    offices: pl.Series
    office_cdf: FloatArray
    office_mode: IntArray
    office_by_mode: dict[str, IntArray]


@dataclass(frozen=True)
class _Offenders:
    """Entities with offences on record before the period, and their modus operandi."""

    importers: IntArray
    exporters: IntArray
    imp_kind: IntArray  # contraband kind per offending importer
    exp_kind: IntArray
    imp_origin: IntArray
    exp_origin: IntArray
    is_importer: BoolArray  # per importer index
    is_exporter: BoolArray  # per exporter index

    @property
    def empty(self) -> bool:
        return len(self.importers) == 0 or len(self.exporters) == 0


_MODES: tuple[str, ...] = ("sea", "air", "post", "road", "rail")


@dataclass(frozen=True)
class _World:
    config: SynthConfig
    countries: pl.Series
    country_cdf: FloatArray
    country_log_uv: FloatArray
    legit_hub_cdf: FloatArray
    legit_hubs: IntArray
    trafficking_hubs: IntArray
    is_trafficking_hub: BoolArray
    dest: int
    species: _Species
    hs: _Hs
    trade: _Trade
    entities: _Entities
    offenders: _Offenders
    rates_cdf: FloatArray  # cumulative pattern rates (already zeroed where impossible)
    purposes: pl.Series
    purpose_cdf: FloatArray
    sources: pl.Series
    source_cdf: FloatArray
    currencies: pl.Series
    currency_fx: FloatArray
    currency_cdf: FloatArray
    start_us: int
    span_us: int


def _countries(ref: Reference, destination: str) -> pl.Series:
    c = ref.countries.filter(~pl.col("cites_pseudo") & ~pl.col("former_code"))
    codes = c["iso2"].sort()
    if destination not in set(codes.to_list()):
        raise ValueError(f"destination {destination!r} is not a valid ISO-2 country")
    return codes


def _country_weights(codes: list[str], destination: str) -> FloatArray:
    w = np.array([_TRADE_WEIGHTS.get(c, _COUNTRY_FLOOR) for c in codes], dtype=np.float64)
    w[codes.index(destination)] = 0.0  # nothing is imported from the importing country
    return w


def _index_of(codes: list[str], wanted: Sequence[str]) -> IntArray:
    pos = {c: i for i, c in enumerate(codes)}
    return np.array([pos[c] for c in wanted if c in pos], dtype=np.int64)


def _build_species(ref: Reference, codes: list[str], rng: np.random.Generator) -> _Species:
    pos = {c: i for i, c in enumerate(codes)}
    sp = ref.species.filter(
        (pl.col("rank") == "SPECIES")
        & pl.col("appendix").is_not_null()
        & (pl.col("range_iso2").list.len() > 0)
    ).sort("taxon_id")
    common = (
        ref.species_names.filter(pl.col("name_kind") == "common_en")
        .sort("taxon_id", "name")
        .group_by("taxon_id", maintain_order=True)
        .agg(pl.col("name").first().alias("common"))
    )
    sp = sp.join(common, on="taxon_id", how="left")
    ranges = [[pos[c] for c in r if c in pos] for r in sp["range_iso2"].to_list()]
    keep = np.array([len(r) > 0 for r in ranges])
    sp = sp.filter(pl.Series(keep))
    ranges = [r for r in ranges if r]
    n_c = len(codes)
    keys = np.sort(np.array([s * n_c + c for s, r in enumerate(ranges) for c in r], np.int64))
    groups: dict[str, IntArray] = {}
    cdfs: dict[str, FloatArray] = {}
    for group, classes in _GROUP_CLASSES.items():
        mask = sp["kingdom"] == "Plantae" if not classes else sp["class_name"].is_in(list(classes))
        members = np.flatnonzero(mask.fill_null(False).to_numpy()).astype(np.int64)
        # Popularity is a seeded permutation: a few species dominate legal trade.
        groups[group] = rng.permutation(members)
        cdfs[group] = _zipf_cdf(len(members), 1.1, 3.0)
    return _Species(
        table=sp,
        names=sp["full_name"],
        label=sp.select(pl.coalesce("common", "full_name")).to_series(),
        appendix=sp["appendix"],
        app1=(sp["appendix"] == "I").to_numpy(),
        ranges=_Ragged.from_lists(ranges),
        range_keys=keys,
        groups=groups,
        group_cdf=cdfs,
    )


def _hs_phrase(code: str, description: str, k: int) -> str:
    phrases = _HS4_PHRASES.get(code[:4])
    if phrases:
        return phrases[k % len(phrases)]
    text = description.lower().replace(";", ",").strip()
    if len(text) <= 60:
        return text
    # Cut at a clause boundary so the phrase still reads like a description.
    head = text[:60]
    return head.rsplit(",", 1)[0] if "," in head else head.rsplit(" ", 1)[0]


def _build_hs(ref: Reference, rng: np.random.Generator) -> _Hs:
    h6 = ref.hs_codes.filter(pl.col("level") == 6).sort("hscode")
    codes: list[str] = h6["hscode"].to_list()
    descriptions = [
        _hs_phrase(c, d, i) for i, (c, d) in enumerate(zip(codes, h6["description"], strict=True))
    ]
    cites = ref.cites_hs
    category = np.full(len(codes), "", dtype=object)
    for prefix, cat in zip(cites["hs_prefix"], cites["category"], strict=True):
        for i, c in enumerate(codes):
            if c.startswith(prefix):
                category[i] = cat
    group_names = list(_GROUP_CLASSES)
    group = np.array(
        [group_names.index(_CATEGORY_GROUP[c]) if c in _CATEGORY_GROUP else -1 for c in category],
        dtype=np.int64,
    )
    is_cites = category != ""
    relevant = np.flatnonzero((category != "") & (category != "cover_commodity"))
    by_hs4: dict[str, list[int]] = {}
    for i, c in enumerate(codes):
        by_hs4.setdefault(c[:4], []).append(i)
    return _Hs(
        codes=pl.Series(codes),
        descriptions=pl.Series(descriptions),
        # A seeded popularity order over all codes: a few headings dominate trade.
        general_cdf=_cdf((rng.permutation(len(codes)) + 8.0) ** -1.0),
        log_uv=rng.normal(*_HS_LOG_UV, size=len(codes)),
        cites=relevant.astype(np.int64),
        cites_cdf=_cdf(rng.pareto(1.5, size=len(relevant)) + 0.1),
        group=group,
        is_cites=is_cites.astype(np.bool_),
        with_species=relevant[group[relevant] >= 0].astype(np.int64),
        by_hs4={k: np.array(v, dtype=np.int64) for k, v in by_hs4.items()},
    )


def _cites_names(ref: Reference) -> set[str]:
    """Normalised names (any kind) of taxa that are CITES-listed."""
    listed = ref.species.filter(pl.col("appendix").is_not_null())["taxon_id"]
    names = ref.species_names.filter(pl.col("taxon_id").is_in(listed.implode()))["name"]
    return set(names.to_list())


def _build_trade(ref: Reference, sp: _Species, hs: _Hs) -> _Trade:
    listed = _cites_names(ref)
    genus = sp.table["genus"]
    kinds: list[_Contraband] = []
    species_lists: list[list[int]] = []
    true_hs: list[list[int]] = []
    cover_hs: list[list[int]] = []
    # Cover loads must sit under a heading the reference flags as a known cover.
    cover_ok = set(ref.cites_hs.filter("cover")["hs_prefix"].to_list())
    for kind in _CONTRABAND:
        members = np.flatnonzero(genus.is_in(list(kind.genera)).fill_null(False).to_numpy())
        t = [int(i) for h in kind.true_hs4 for i in hs.by_hs4.get(h, [])]
        c = [int(i) for h in kind.cover_hs4 if h in cover_ok for i in hs.by_hs4.get(h, [])]
        if len(members) and t and c:  # a kind the reference cannot ground is left out
            kinds.append(kind)
            species_lists.append([int(m) for m in members])
            true_hs.append(t)
            cover_hs.append(c)
    # Look-alikes must really be non-CITES names, or "misdeclared" would not be a lie.
    look: list[str] = []
    look_lists: list[list[int]] = []
    for kind in kinds:
        ok = [n for n in kind.lookalikes if normalise_name(n) not in listed]
        look_lists.append(list(range(len(look), len(look) + len(ok))))
        look.extend(ok)
    conc: list[str] = []
    conc_lists: list[list[int]] = []
    for kind in kinds:
        conc_lists.append(list(range(len(conc), len(conc) + len(kind.concealments))))
        conc.extend(kind.concealments)
    return _Trade(
        kinds=tuple(kinds),
        species=_Ragged.from_lists(species_lists),
        true_hs=_Ragged.from_lists(true_hs),
        cover_hs=_Ragged.from_lists(cover_hs),
        unit=np.array([k.unit for k in kinds], dtype=np.int64),
        product=pl.Series([k.product for k in kinds]),
        generic=pl.Series([k.generic for k in kinds]),
        lookalike_names=pl.Series(look, dtype=pl.String),
        lookalikes=_Ragged.from_lists(look_lists),
        concealments=pl.Series(conc),
        concealment_lists=_Ragged.from_lists(conc_lists),
    )


def _ids(prefix: str, n: int, rng: np.random.Generator) -> pl.Series:
    # Ids are a permutation of 0..n-1 so the busiest entity is not always "...0000000".
    perm = pl.Series(rng.permutation(n).astype(np.int64))
    width = max(6, len(str(n)))
    return pl.select(pl.format(prefix + "{}", perm.cast(pl.String).str.zfill(width))).to_series()


def _build_offices(cfg: SynthConfig, rng: np.random.Generator) -> tuple[pl.Series, IntArray]:
    names: list[str] = []
    modes: list[int] = []
    counts = np.maximum(1, np.round([s * cfg.n_offices for _, _, s in _OFFICE_KINDS]))
    for (kind, mode, _), count in zip(_OFFICE_KINDS, counts.astype(int), strict=True):
        for k in range(count):
            names.append(f"{cfg.destination}-{kind}{k + 1:02d}")
            modes.append(_MODES.index(mode))
    order = rng.permutation(len(names))
    return pl.Series([names[i] for i in order]), np.array(modes, dtype=np.int64)[order]


def _build_entities(
    cfg: SynthConfig, country_cdf: FloatArray, rng: np.random.Generator
) -> _Entities:
    n = max(cfg.n_declarations, 1)
    n_imp = int(np.clip(n // 40, 200, 2_000_000))
    n_exp = int(np.clip(n // 30, 250, 2_000_000))
    n_dcl = int(np.clip(n // 400, 30, 100_000))
    offices, office_mode = _build_offices(cfg, rng)
    exp_cdf = _zipf_cdf(n_exp, 1.05, 5.0)
    partners = _draw(exp_cdf, rng, n_imp * 4).reshape(n_imp, 4)
    office_w = rng.lognormal(0.0, 1.2, size=len(offices))
    return _Entities(
        importers=_ids("IMP-", n_imp, rng),
        exporters=_ids("EXP-", n_exp, rng),
        declarants=_ids("DCL-", n_dcl, rng),
        importer_cdf=_zipf_cdf(n_imp, 1.1, 5.0),
        exporter_cdf=exp_cdf,
        declarant_cdf=_zipf_cdf(n_dcl, 0.9, 2.0),
        exporter_home=_draw(country_cdf, rng, n_exp),
        partners=partners,
        broker=_draw(_zipf_cdf(n_dcl, 0.9, 2.0), rng, n_imp),
        offices=offices,
        office_cdf=_cdf(office_w),
        office_mode=office_mode,
        office_by_mode={m: np.flatnonzero(office_mode == i) for i, m in enumerate(_MODES)},
    )


def _origin_for_kind(
    world_species: _Species, trade: _Trade, kind: IntArray, u: FloatArray, u2: FloatArray
) -> IntArray:
    species = trade.species.pick(kind, u)
    return world_species.ranges.pick(species, u2)


def _build_offenders(
    cfg: SynthConfig, ent: _Entities, sp: _Species, trade: _Trade, rng: np.random.Generator
) -> _Offenders:
    n_off = round(cfg.history_size * 0.45)
    n_imp_off = n_off * 6 // 10
    n_exp_off = n_off - n_imp_off
    n_imp, n_exp = len(ent.importers), len(ent.exporters)
    # Offenders are drawn from outside the busiest entities: big firms rarely smuggle.
    imps = np.sort(rng.choice(np.arange(10, n_imp), size=min(n_imp_off, n_imp - 10), replace=False))
    exps = np.sort(rng.choice(np.arange(10, n_exp), size=min(n_exp_off, n_exp - 10), replace=False))
    n_kinds = len(trade.kinds)
    imp_kind = rng.integers(0, n_kinds, size=len(imps)).astype(np.int64)
    exp_kind = rng.integers(0, n_kinds, size=len(exps)).astype(np.int64)
    is_imp = np.zeros(n_imp, dtype=np.bool_)
    is_imp[imps] = True
    is_exp = np.zeros(n_exp, dtype=np.bool_)
    is_exp[exps] = True
    return _Offenders(
        importers=imps.astype(np.int64),
        exporters=exps.astype(np.int64),
        imp_kind=imp_kind,
        exp_kind=exp_kind,
        imp_origin=_origin_for_kind(
            sp, trade, imp_kind, rng.random(len(imps)), rng.random(len(imps))
        ),
        exp_origin=_origin_for_kind(
            sp, trade, exp_kind, rng.random(len(exps)), rng.random(len(exps))
        ),
        is_importer=is_imp,
        is_exporter=is_exp,
    )


def _codes_cdf(shares: dict[str, float], valid: frozenset[str]) -> tuple[pl.Series, FloatArray]:
    kept = {k: v for k, v in shares.items() if k in valid}
    return pl.Series(list(kept)), _cdf(list(kept.values()))


def _effective_rates(cfg: SynthConfig, offenders: _Offenders) -> FloatArray:
    rates = cfg.rates.as_dict()
    if offenders.empty:  # nobody has a record, so nobody can re-offend or be a partner
        rates["repeat_offender"] = 0.0
        rates["partner_of_offender"] = 0.0
    return np.cumsum([rates[p] for p in PATTERNS]).astype(np.float64)


def _build_world(cfg: SynthConfig, ref: Reference) -> _World:
    rng = np.random.default_rng([cfg.seed, 0, _STREAM_WORLD])
    countries = _countries(ref, cfg.destination)
    codes: list[str] = countries.to_list()
    country_cdf = _cdf(_country_weights(codes, cfg.destination))
    species = _build_species(ref, codes, rng)
    hs = _build_hs(ref, rng)
    trade = _build_trade(ref, species, hs)
    if not trade.kinds:
        raise ValueError("reference tables ground no contraband kind; cannot plant patterns")
    entities = _build_entities(cfg, country_cdf, rng)
    offenders = _build_offenders(cfg, entities, species, trade, rng)
    legit_hubs = _index_of(codes, list(_LEGIT_HUBS))
    traff_hubs = _index_of(codes, TRAFFICKING_HUBS)
    is_hub = np.zeros(len(codes) + 1, dtype=np.bool_)  # last slot: "no country" (-1)
    is_hub[traff_hubs] = True
    purposes, purpose_cdf = _codes_cdf(_PURPOSES, ref.codes("purpose"))
    sources, source_cdf = _codes_cdf(_SOURCES, ref.codes("source"))
    start = datetime.combine(cfg.start, datetime.min.time(), tzinfo=UTC)
    return _World(
        config=cfg,
        countries=countries,
        country_cdf=country_cdf,
        country_log_uv=rng.normal(0.0, _ORIGIN_LOG_UV_SD, size=len(codes)),
        legit_hub_cdf=_cdf([_LEGIT_HUBS[codes[i]] for i in legit_hubs]),
        legit_hubs=legit_hubs,
        trafficking_hubs=traff_hubs,
        is_trafficking_hub=is_hub,
        dest=codes.index(cfg.destination),
        species=species,
        hs=hs,
        trade=trade,
        entities=entities,
        offenders=offenders,
        rates_cdf=_effective_rates(cfg, offenders),
        purposes=purposes,
        purpose_cdf=purpose_cdf,
        sources=sources,
        source_cdf=source_cdf,
        currencies=pl.Series([c for c, _, _ in _CURRENCIES]),
        currency_fx=np.array([fx for _, fx, _ in _CURRENCIES]),
        currency_cdf=_cdf([s for _, _, s in _CURRENCIES]),
        start_us=int(start.timestamp()) * 1_000_000,
        span_us=cfg.days * _US_PER_DAY,
    )


# --- one block of consignments -----------------------------------------------------------


@dataclass
class _Cons:
    """Consignment-level attributes (shared by all lines of a consignment)."""

    pattern: IntArray
    first: IntArray  # first line (block-local)
    count: IntArray
    time_us: IntArray
    office: IntArray
    importer: IntArray  # -1: newcomer
    exporter: IntArray
    declarant: IntArray
    export: IntArray
    transit1: IntArray
    transit2: IntArray


@dataclass
class _Lines:
    """Line-level attributes. Indices are -1 where a value is absent."""

    cons: IntArray
    pattern: IntArray
    hs: IntArray
    origin: IntArray
    species: IntArray  # declared species
    lookalike: IntArray
    generic: IntArray  # contraband kind whose generic name is the declared taxon
    desc_template: IntArray  # template index when the description names the species
    desc_generic: IntArray  # contraband kind whose generic phrase is the description
    purpose: IntArray
    source: IntArray
    permit: BoolArray
    unit: IntArray
    quantity: FloatArray
    mass: FloatArray
    value_factor: FloatArray
    value_fixed: FloatArray  # NaN unless a pattern fixes the USD value
    kind: IntArray  # contraband kind actually shipped
    actual: IntArray  # species actually shipped (trafficking only)
    concealment: IntArray


@dataclass(frozen=True)
class _Sel:
    """The consignments of one pattern and their lines, for per-consignment broadcasting."""

    cons: IntArray
    lines: IntArray
    line_pos: IntArray  # position in ``cons`` of each line's consignment

    @property
    def k(self) -> int:
        return len(self.cons)

    def bcast(self, values: npt.NDArray[Any]) -> npt.NDArray[Any]:
        return values[self.line_pos]


def _select(c: _Cons, ln: _Lines, code: int) -> _Sel:
    cons = np.flatnonzero(c.pattern == code).astype(np.int64)
    lines = np.flatnonzero(ln.pattern == code).astype(np.int64)
    pos = np.full(len(c.pattern), -1, dtype=np.int64)
    pos[cons] = np.arange(len(cons))
    return _Sel(cons, lines, pos[ln.cons[lines]])


_TEMPLATES: tuple[tuple[str, str], ...] = tuple(t for ts in _GROUP_TEMPLATES.values() for t in ts)
_TEMPLATE_PREFIX = pl.Series([p for p, _ in _TEMPLATES])
_TEMPLATE_SUFFIX = pl.Series([s for _, s in _TEMPLATES])
_GROUP_TEMPLATE_LISTS = _Ragged.from_lists(
    [
        [_TEMPLATES.index(t) for t in _GROUP_TEMPLATES[g]]
        for g in _GROUP_CLASSES  # group index order
    ]
)


def _line_counts(rng: np.random.Generator, pattern: IntArray) -> IntArray:
    # Most declarations carry one to three lines; split consignments carry many small ones.
    counts = np.minimum(rng.geometric(0.6, size=len(pattern)), 12).astype(np.int64)
    traffic = pattern != _NONE
    counts[traffic] = np.minimum(rng.geometric(0.8, size=int(traffic.sum())), 3)
    split = pattern == _PAT["split_consignment"]
    counts[split] = rng.integers(8, 25, size=int(split.sum()))
    return counts


def _consignments(w: _World, rng: np.random.Generator, row0: int, rows: int) -> _Cons:
    u = rng.random(rows)
    pattern = np.searchsorted(w.rates_cdf, u, side="right").astype(np.int64)
    counts = _line_counts(rng, pattern)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    k = int(np.searchsorted(first, rows, side="left"))  # consignments starting in the block
    pattern, counts, first = pattern[:k], counts[:k], first[:k]
    counts[-1] = rows - first[-1]  # the block's last consignment is cut at its edge
    ent = w.entities
    importer = _draw(ent.importer_cdf, rng, k)
    slot = _draw(_cdf([0.55, 0.25, 0.12, 0.08]), rng, k)
    exporter = ent.partners[importer, slot]
    fresh = rng.random(k) < 0.10  # a new trading relationship
    exporter[fresh] = _draw(ent.exporter_cdf, rng, int(fresh.sum()))
    declarant = ent.broker[importer].copy()
    other = rng.random(k) < 0.15
    declarant[other] = _draw(ent.declarant_cdf, rng, int(other.sum()))
    export = ent.exporter_home[exporter].copy()
    elsewhere = rng.random(k) < 0.15
    export[elsewhere] = _draw(w.country_cdf, rng, int(elsewhere.sum()))
    office = _draw(ent.office_cdf, rng, k)
    # Declarations arrive in row order over the period: the stream is chronological.
    pos = (row0 + first + rng.random(k) * counts) / max(w.config.n_declarations, 1)
    time_us = w.start_us + (pos * w.span_us).astype(np.int64)
    transit1 = _legit_transit(w, rng, office, export)
    newcomer = rng.random(k) < 0.004  # legitimate first-time importers
    importer[newcomer] = -1
    return _Cons(
        pattern=pattern,
        first=first,
        count=counts,
        time_us=time_us,
        office=office,
        importer=importer,
        exporter=exporter,
        declarant=declarant,
        export=export,
        transit1=transit1,
        transit2=np.full(k, -1, dtype=np.int64),
    )


def _legit_transit(
    w: _World, rng: np.random.Generator, office: IntArray, export: IntArray
) -> IntArray:
    k = len(office)
    mode = w.entities.office_mode[office]
    routed = (mode <= _MODES.index("air")) & (rng.random(k) < 0.12)
    hub = w.legit_hubs[_draw(w.legit_hub_cdf, rng, k)]
    return np.where(routed & (hub != export), hub, -1).astype(np.int64)


def _empty_lines(c: _Cons, rows: int) -> _Lines:
    cons = np.repeat(np.arange(len(c.count), dtype=np.int64), c.count)
    neg = np.full(rows, -1, dtype=np.int64)
    return _Lines(
        cons=cons,
        pattern=c.pattern[cons],
        hs=neg.copy(),
        origin=neg.copy(),
        species=neg.copy(),
        lookalike=neg.copy(),
        generic=neg.copy(),
        desc_template=neg.copy(),
        desc_generic=neg.copy(),
        purpose=neg.copy(),
        source=neg.copy(),
        permit=np.zeros(rows, dtype=np.bool_),
        unit=np.full(rows, _UNIT_KG, dtype=np.int64),
        quantity=np.zeros(rows),
        mass=np.zeros(rows),
        value_factor=np.ones(rows),
        value_fixed=np.full(rows, np.nan),
        kind=neg.copy(),
        actual=neg.copy(),
        concealment=neg.copy(),
    )


def _quantities(
    rng: np.random.Generator,
    unit: IntArray,
    log_no: tuple[float, float],
    log_kg: tuple[float, float],
) -> tuple[FloatArray, FloatArray]:
    n = len(unit)
    kg = unit == _UNIT_KG
    q = np.where(
        kg,
        np.round(rng.lognormal(*log_kg, size=n), 1),
        np.ceil(rng.lognormal(*log_no, size=n)),
    )
    q = np.clip(q, 0.1, 5e6)
    item_kg = rng.lognormal(*_LOG_ITEM_KG, size=n)
    mass = np.where(kg, q, np.round(q * item_kg, 3))
    return q, np.maximum(mass, 0.001)


def _legit_goods(w: _World, rng: np.random.Generator, c: _Cons, ln: _Lines) -> None:
    rows = len(ln.cons)
    # A few per cent of lines are goods under a CITES-relevant heading; under a third of
    # those name a listed species (most leather, fish or plants traded are not listed).
    cites = rng.random(rows) < 0.03
    ln.hs = _draw(w.hs.general_cdf, rng, rows)
    ln.hs[cites] = w.hs.cites[_draw(w.hs.cites_cdf, rng, int(cites.sum()))]
    ln.origin = c.export[ln.cons].copy()
    elsewhere = rng.random(rows) < 0.25
    ln.origin[elsewhere] = _draw(w.country_cdf, rng, int(elsewhere.sum()))
    ln.unit = np.where(rng.random(rows) < _GENERAL_KG_SHARE, _UNIT_KG, _UNIT_NO).astype(np.int64)
    group = w.hs.group[ln.hs]
    declared = np.flatnonzero(cites & (group >= 0) & (rng.random(rows) < 0.3))
    _declare_species(w, rng, ln, declared, group[declared])
    ln.quantity, ln.mass = _quantities(rng, ln.unit, _GENERAL_LOG_NO, _GENERAL_LOG_KG)
    spec = ln.species >= 0
    q, m = _quantities(rng, ln.unit[spec], _LEMIS_LOG_NO, _LEMIS_LOG_KG)
    ln.quantity[spec], ln.mass[spec] = q, m
    # Samples, gifts and related-party prices: some honest lines look undervalued too.
    cheap = rng.random(rows) < 0.003
    ln.value_factor[cheap] = np.exp(-rng.normal(1.5, 0.6, size=int(cheap.sum())))


def _species_in_groups(w: _World, rng: np.random.Generator, groups: IntArray) -> IntArray:
    out = np.empty(len(groups), dtype=np.int64)
    for g, name in enumerate(_GROUP_CLASSES):  # a handful of groups: vectorised per group
        at = np.flatnonzero(groups == g)
        if len(at):
            out[at] = w.species.groups[name][_draw(w.species.group_cdf[name], rng, len(at))]
    return out


def _declare_species(
    w: _World, rng: np.random.Generator, ln: _Lines, at: IntArray, groups: IntArray
) -> None:
    """Legal CITES trade on the lines ``at``: named species, permit, purpose, source, origin."""
    n = len(at)
    species = _species_in_groups(w, rng, groups)
    ln.species[at] = species
    ln.desc_template[at] = _GROUP_TEMPLATE_LISTS.pick(groups, rng.random(n))
    purpose = _draw(w.purpose_cdf, rng, n)
    source = _draw(w.source_cdf, rng, n)
    # Appendix I specimens may be traded commercially only if captive-bred.
    app1 = w.species.app1[species] & (purpose == _index_in(w.purposes, "T"))
    source[app1] = _index_in(w.sources, "C")
    ln.purpose[at], ln.source[at] = purpose, source
    ln.permit[at] = rng.random(n) < 0.97
    ln.unit[at] = np.where(rng.random(n) < _LEMIS_KG_SHARE, _UNIT_KG, _UNIT_NO)
    # Wild specimens come from the range; captive-bred ones often from elsewhere (legal noise
    # for the origin-outside-range signal).
    wild = np.isin(source, [_index_in(w.sources, code) for code in ("W", "R", "U")])
    in_range = wild | (rng.random(n) < 0.6)
    ranged = w.species.ranges.pick(species, rng.random(n))
    ln.origin[at] = np.where(in_range, ranged, ln.origin[at])


def _index_in(series: pl.Series, value: str) -> int:
    return int(series.to_list().index(value))


# --- planted patterns --------------------------------------------------------------------


def _uniform(rng: np.random.Generator, n_items: int, size: int) -> IntArray:
    return rng.integers(0, n_items, size=size).astype(np.int64)


def _smuggle(
    w: _World,
    rng: np.random.Generator,
    ln: _Lines,
    sel: _Sel,
    kind: IntArray,
    cover: BoolArray,
    origin: IntArray | None = None,
) -> None:
    """Put contraband of ``kind`` (per consignment) on the selected lines.

    Under ``cover`` it is declared as the cover commodity; otherwise under its true
    heading with a vague description. Nothing names a species and no permit is shown.
    """
    t = w.trade
    k = sel.k
    actual = t.species.pick(kind, rng.random(k))
    hs = np.where(cover, t.cover_hs.pick(kind, rng.random(k)), t.true_hs.pick(kind, rng.random(k)))
    if origin is None:
        origin = w.species.ranges.pick(actual, rng.random(k))
    lines = sel.lines
    ln.kind[lines] = sel.bcast(kind)
    ln.actual[lines] = sel.bcast(actual)
    ln.hs[lines] = sel.bcast(hs)
    ln.origin[lines] = sel.bcast(origin)
    ln.desc_generic[lines] = np.where(sel.bcast(cover), -1, sel.bcast(kind))
    ln.concealment[lines] = t.concealment_lists.pick(sel.bcast(kind), rng.random(len(lines)))
    _clear_declaration(ln, lines)
    unit = np.where(sel.bcast(cover), _UNIT_KG, t.unit[sel.bcast(kind)]).astype(np.int64)
    ln.unit[lines] = unit
    # Cover loads are bulk (reefers of "frozen fish"); uncovered contraband is smaller.
    q, m = _quantities(rng, unit, (2.5, 1.0), (4.5, 1.5))
    bulk = sel.bcast(cover)
    q_bulk, m_bulk = _quantities(rng, unit, (2.5, 1.0), (6.5, 1.2))
    ln.quantity[lines] = np.where(bulk, q_bulk, q)
    ln.mass[lines] = np.where(bulk, m_bulk, m)


def _clear_declaration(ln: _Lines, lines: IntArray) -> None:
    for arr in (ln.species, ln.lookalike, ln.generic, ln.desc_template, ln.purpose, ln.source):
        arr[lines] = -1
    ln.permit[lines] = False


def _set_office(
    w: _World, rng: np.random.Generator, c: _Cons, sel: _Sel, shares: dict[str, float]
) -> None:
    """Route some of the selected consignments through offices of the given modes."""
    u = rng.random(sel.k)
    edge = 0.0
    for mode, share in shares.items():
        offices = w.entities.office_by_mode[mode]
        pick = (u >= edge) & (u < edge + share)
        if len(offices) and pick.any():
            c.office[sel.cons[pick]] = offices[_uniform(rng, len(offices), int(pick.sum()))]
        edge += share


def _hub_route(w: _World, rng: np.random.Generator, c: _Cons, sel: _Sel, p_second: float) -> None:
    hubs = w.trafficking_hubs
    c.transit1[sel.cons] = hubs[_uniform(rng, len(hubs), sel.k)]
    second = hubs[_uniform(rng, len(hubs), sel.k)]
    use = (rng.random(sel.k) < p_second) & (second != c.transit1[sel.cons])
    c.transit2[sel.cons] = np.where(use, second, -1)


def _kinds(w: _World, rng: np.random.Generator, size: int) -> IntArray:
    return _uniform(rng, len(w.trade.kinds), size)


def _plant_cover_commodity(
    w: _World, rng: np.random.Generator, c: _Cons, ln: _Lines, sel: _Sel
) -> None:
    kind = _kinds(w, rng, sel.k)
    _smuggle(w, rng, ln, sel, kind, np.ones(sel.k, dtype=np.bool_))
    # Small, rarely seen firms front these loads; exports often leave via a hub.
    c.importer[sel.cons] = _uniform(rng, len(w.entities.importers), sel.k)
    c.exporter[sel.cons] = _uniform(rng, len(w.entities.exporters), sel.k)
    origin = ln.origin[_first_lines(c, sel)]
    via_hub = rng.random(sel.k) < 0.5
    hubs = w.trafficking_hubs[_uniform(rng, len(w.trafficking_hubs), sel.k)]
    c.export[sel.cons] = np.where(via_hub, hubs, origin)
    _set_office(w, rng, c, sel, {"sea": 0.7})


def _first_lines(c: _Cons, sel: _Sel) -> IntArray:
    """First line of each selected consignment."""
    return c.first[sel.cons]


def _plant_misdeclared_species(
    w: _World, rng: np.random.Generator, c: _Cons, ln: _Lines, sel: _Sel
) -> None:
    t = w.trade
    kind = _kinds(w, rng, sel.k)
    _smuggle(w, rng, ln, sel, kind, np.zeros(sel.k, dtype=np.bool_))
    lines = sel.lines
    lk = sel.bcast(kind)
    # A look-alike species name where the kind has one, otherwise a generic trade name.
    at = np.flatnonzero((t.lookalikes.lengths[lk] > 0) & (rng.random(len(lines)) < 0.6))
    ln.generic[lines] = lk
    ln.generic[lines[at]] = -1
    ln.lookalike[lines[at]] = t.lookalikes.pick(lk[at], rng.random(len(at)))
    # Some carry a permit for the look-alike, which fools a permit-presence rule.
    ln.permit[lines] = rng.random(len(lines)) < 0.2
    ln.concealment[lines] = _pattern_concealment(w, "misdeclared_species")
    # Pet-trade sized: small consignments, declared like the live animals they pretend to be.
    small = rng.lognormal(3.0, 1.2, size=len(lines))
    ln.mass[lines] = np.minimum(ln.mass[lines], small)
    kg = ln.unit[lines] == _UNIT_KG
    ln.quantity[lines] = np.where(kg, np.round(ln.mass[lines], 1), ln.quantity[lines])
    _set_office(w, rng, c, sel, {"air": 0.35, "post": 0.15})


def _pattern_concealment(w: _World, pattern: str) -> int:
    base = len(w.trade.concealments)
    return base + list(_PATTERN_CONCEALMENT).index(pattern)


def _plant_transit_hub(
    w: _World, rng: np.random.Generator, c: _Cons, ln: _Lines, sel: _Sel
) -> None:
    kind = _kinds(w, rng, sel.k)
    _smuggle(w, rng, ln, sel, kind, rng.random(sel.k) < 0.5)
    _hub_route(w, rng, c, sel, p_second=0.4)
    via = rng.random(sel.k) < 0.5  # re-exported from the hub itself
    c.export[sel.cons] = np.where(via, c.transit1[sel.cons], c.export[sel.cons])
    _set_office(w, rng, c, sel, {"air": 0.6, "sea": 0.3})


def _plant_repeat_offender(
    w: _World, rng: np.random.Generator, c: _Cons, ln: _Lines, sel: _Sel
) -> None:
    off, ent = w.offenders, w.entities
    by_importer = rng.random(sel.k) < 0.6
    j_imp = _uniform(rng, len(off.importers), sel.k)
    j_exp = _uniform(rng, len(off.exporters), sel.k)
    imp = off.importers[j_imp]
    exp = off.exporters[j_exp]
    cons = sel.cons
    # An offending importer ships again with the partner and broker of its past offence.
    c.importer[cons] = np.where(by_importer, imp, c.importer[cons])
    c.exporter[cons] = np.where(by_importer, ent.partners[imp, 0], exp)
    c.declarant[cons] = np.where(by_importer, ent.broker[imp], c.declarant[cons])
    c.export[cons] = ent.exporter_home[c.exporter[cons]]
    kind = np.where(by_importer, off.imp_kind[j_imp], off.exp_kind[j_exp])
    same_route = rng.random(sel.k) < 0.6
    origin = np.where(by_importer, off.imp_origin[j_imp], off.exp_origin[j_exp])
    ranged = w.species.ranges.pick(w.trade.species.pick(kind, rng.random(sel.k)), rng.random(sel.k))
    _smuggle(w, rng, ln, sel, kind, rng.random(sel.k) < 0.5, np.where(same_route, origin, ranged))


def _plant_partner_of_offender(
    w: _World, rng: np.random.Generator, c: _Cons, ln: _Lines, sel: _Sel
) -> None:
    off, ent = w.offenders, w.entities
    j = _uniform(rng, len(off.importers), sel.k)
    # A supplier of an offender (not the one named in its record) now ships to someone else.
    slot = 1 + _uniform(rng, ent.partners.shape[1] - 1, sel.k)
    c.exporter[sel.cons] = ent.partners[off.importers[j], slot]
    c.export[sel.cons] = ent.exporter_home[c.exporter[sel.cons]]
    kind = np.where(rng.random(sel.k) < 0.5, off.imp_kind[j], _kinds(w, rng, sel.k))
    _smuggle(w, rng, ln, sel, kind, rng.random(sel.k) < 0.5)


def _plant_newcomer(w: _World, rng: np.random.Generator, c: _Cons, ln: _Lines, sel: _Sel) -> None:
    c.importer[sel.cons] = -1
    _smuggle(w, rng, ln, sel, _kinds(w, rng, sel.k), rng.random(sel.k) < 0.3)
    ln.concealment[sel.lines] = _pattern_concealment(w, "newcomer")
    _set_office(w, rng, c, sel, {"air": 0.45, "post": 0.25})


def _plant_undervaluation(
    w: _World, rng: np.random.Generator, c: _Cons, ln: _Lines, sel: _Sel
) -> None:
    kind = _kinds(w, rng, sel.k)
    _smuggle(w, rng, ln, sel, kind, np.zeros(sel.k, dtype=np.bool_))
    lines = sel.lines
    # Declared properly, but invoiced at a fraction of the going price (laundering).
    ln.species[lines] = ln.actual[lines]
    ln.desc_generic[lines] = -1
    ln.desc_template[lines] = _GROUP_TEMPLATE_LISTS.pick(
        _group_of_kind(w, ln.kind[lines]), rng.random(len(lines))
    )
    ln.purpose[lines] = _index_in(w.purposes, "T")
    ln.source[lines] = np.where(
        rng.random(len(lines)) < 0.5, _index_in(w.sources, "W"), _index_in(w.sources, "C")
    )
    ln.permit[lines] = rng.random(len(lines)) < 0.85
    ln.value_factor[lines] = np.exp(-rng.normal(2.3, 0.6, size=len(lines)))
    ln.concealment[lines] = _pattern_concealment(w, "undervaluation")


def _group_of_kind(w: _World, kind: IntArray) -> IntArray:
    """Species group of each kind's true heading (for description templates)."""
    first_hs = w.trade.true_hs.values[w.trade.true_hs.offsets[kind]]
    g = w.hs.group[first_hs]
    return np.where(g >= 0, g, list(_GROUP_CLASSES).index("animals")).astype(np.int64)


def _plant_split_consignment(
    w: _World, rng: np.random.Generator, c: _Cons, ln: _Lines, sel: _Sel
) -> None:
    _smuggle(w, rng, ln, sel, _kinds(w, rng, sel.k), np.zeros(sel.k, dtype=np.bool_))
    lines = sel.lines
    n = len(lines)
    ln.unit[lines] = _UNIT_NO
    ln.quantity[lines] = rng.integers(1, 6, size=n).astype(np.float64)
    ln.mass[lines] = np.round(ln.quantity[lines] * rng.lognormal(-1.0, 0.8, size=n), 3)
    # Each parcel stays just under the de-minimis threshold.
    ln.value_fixed[lines] = np.round(rng.uniform(0.4, 0.99, size=n) * SPLIT_VALUE_THRESHOLD, 2)
    ln.concealment[lines] = _pattern_concealment(w, "split_consignment")
    _set_office(w, rng, c, sel, {"post": 0.7, "air": 0.3})


def _plant_origin_outside_range(
    w: _World, rng: np.random.Generator, c: _Cons, ln: _Lines, sel: _Sel
) -> None:
    lines = sel.lines
    hs = w.hs.with_species[_uniform(rng, len(w.hs.with_species), sel.k)]
    group = w.hs.group[hs]
    species = _species_in_groups(w, rng, group)
    origin = _outside_range(w, rng, species)
    ok = origin >= 0  # in the rare case no outside country was found, the line stays legal
    ln.pattern[lines] = np.where(sel.bcast(ok), ln.pattern[lines], _NONE)
    c.pattern[sel.cons[~ok]] = _NONE
    _clear_declaration(ln, lines)
    ln.hs[lines] = sel.bcast(hs)
    ln.species[lines] = sel.bcast(species)
    ln.desc_template[lines] = _GROUP_TEMPLATE_LISTS.pick(sel.bcast(group), rng.random(len(lines)))
    ln.origin[lines] = np.where(sel.bcast(ok), sel.bcast(origin), ln.origin[lines])
    # Wild-caught, commercial, with a permit: everything looks right except the origin.
    ln.purpose[lines] = _index_in(w.purposes, "T")
    ln.source[lines] = _index_in(w.sources, "W")
    ln.permit[lines] = True
    ln.actual[lines] = np.where(sel.bcast(ok), sel.bcast(species), -1)
    ln.concealment[lines] = np.where(
        sel.bcast(ok), _pattern_concealment(w, "origin_outside_range"), -1
    )
    ln.unit[lines] = _UNIT_NO
    ln.quantity[lines], ln.mass[lines] = _quantities(
        rng, ln.unit[lines], _LEMIS_LOG_NO, _LEMIS_LOG_KG
    )


def _outside_range(w: _World, rng: np.random.Generator, species: IntArray) -> IntArray:
    """A trading country outside each species' range (-1 if none found in a few tries)."""
    n_c = len(w.countries)
    out = np.full(len(species), -1, dtype=np.int64)
    todo = np.arange(len(species))
    for _ in range(8):
        cand = _draw(w.country_cdf, rng, len(todo))
        keys = species[todo] * n_c + cand
        pos = np.minimum(np.searchsorted(w.species.range_keys, keys), len(w.species.range_keys) - 1)
        outside = w.species.range_keys[pos] != keys
        out[todo[outside]] = cand[outside]
        todo = todo[~outside]
        if not len(todo):
            break
    return out


_Planter = Callable[[_World, np.random.Generator, _Cons, _Lines, _Sel], None]
_PLANTERS: dict[str, _Planter] = {
    "cover_commodity": _plant_cover_commodity,
    "misdeclared_species": _plant_misdeclared_species,
    "transit_hub": _plant_transit_hub,
    "repeat_offender": _plant_repeat_offender,
    "partner_of_offender": _plant_partner_of_offender,
    "newcomer": _plant_newcomer,
    "undervaluation": _plant_undervaluation,
    "split_consignment": _plant_split_consignment,
    "origin_outside_range": _plant_origin_outside_range,
}


# --- values, inspections and frames ------------------------------------------------------


@dataclass(frozen=True)
class _Inspected:
    selected_by: IntArray  # index into _SELECTORS, -1 if not inspected
    hit: BoolArray
    at_us: IntArray


_SELECTORS: tuple[str, ...] = (
    SelectedBy.RANDOM.value,
    SelectedBy.RULE.value,
    SelectedBy.MODEL.value,
    SelectedBy.MANUAL.value,
)
#: Share of all declarations picked at random for inspection (an unbiased audit sample).
RANDOM_INSPECTION_RATE = 0.012
#: Probability that inspecting a trafficking consignment finds the contraband.
DETECTION_RATE = 0.85


def _values(w: _World, rng: np.random.Generator, ln: _Lines) -> tuple[FloatArray, IntArray]:
    n = len(ln.cons)
    log_uv = w.hs.log_uv[ln.hs] + w.country_log_uv[ln.origin] + rng.normal(0, _LINE_LOG_UV_SD, n)
    usd = np.exp(log_uv) * ln.mass * ln.value_factor
    fixed = ~np.isnan(ln.value_fixed)
    usd = np.where(fixed, ln.value_fixed, usd)
    currency = _draw(w.currency_cdf, rng, n)
    currency[fixed] = 0  # thresholds are in USD, and so is the split parcel's invoice
    return np.round(usd * w.currency_fx[currency], 2), currency


def _risk_flags(w: _World, c: _Cons, ln: _Lines) -> FloatArray:
    """What rules and a model could see: the observable part of each pattern's signal."""
    imp = c.importer[ln.cons]
    exp = c.exporter[ln.cons]
    hub = w.is_trafficking_hub
    f_cites = w.hs.is_cites[ln.hs]
    f_hub = hub[c.transit1[ln.cons]] | hub[c.transit2[ln.cons]] | hub[c.export[ln.cons]]
    f_new = imp < 0
    f_intel = w.offenders.is_importer[np.maximum(imp, 0)] & ~f_new
    f_intel |= w.offenders.is_exporter[exp]
    named = (ln.species >= 0) | (ln.lookalike >= 0) | (ln.generic >= 0)
    f_noperm = named & ~ln.permit
    f_split = c.count[ln.cons] >= 8
    return (
        0.04 * f_cites + 0.03 * f_hub + 0.08 * f_new + 0.25 * f_intel + 0.25 * f_noperm
        + 0.10 * f_split
    )  # fmt: skip


def _inspect(
    w: _World, rng: np.random.Generator, c: _Cons, ln: _Lines, time_us: IntArray
) -> _Inspected:
    n = len(ln.cons)
    truth = ln.pattern != _NONE
    flags = _risk_flags(w, c, ln)
    by_random = rng.random(n) < RANDOM_INSPECTION_RATE
    by_rule = rng.random(n) < np.minimum(0.003 + flags, 0.6)
    # A decent but imperfect model: the truth shifts its score by 1.5 sd.
    by_model = rng.normal(size=n) + 1.5 * truth + 1.6 * flags > 2.7
    by_manual = rng.random(n) < 0.002 + 0.03 * truth
    # The first method that picked a line is recorded; random first so the audit sample
    # stays unbiased.
    selected = np.select(
        [by_random, by_rule, by_model, by_manual], [0, 1, 2, 3], default=-1
    ).astype(np.int64)
    hit = (selected >= 0) & truth & (rng.random(n) < DETECTION_RATE)
    delay = rng.lognormal(np.log(6 * 3_600e6), 1.0, size=n)
    at = time_us + np.minimum(delay, 30 * _US_PER_DAY).astype(np.int64)
    return _Inspected(selected, hit, at)


def _timestamps(us: IntArray, name: str) -> pl.Series:
    return pl.Series(name, us, dtype=pl.Int64).cast(pl.Datetime("us")).dt.replace_time_zone("UTC")


def _sparse(base: pl.Series, at: IntArray, values: pl.Series) -> pl.Series:
    """``base`` with ``values`` written at rows ``at``: cheap when few rows differ."""
    return base.scatter(at, values) if len(at) else base


def _nulls(n: int, name: str) -> pl.Series:
    return pl.repeat(None, n, dtype=pl.String, eager=True).alias(name)


def _zero_padded(prefix: str, numbers: IntArray, width: int, name: str) -> pl.Series:
    digits = pl.Series(name, numbers).cast(pl.String).str.zfill(width)
    return (prefix + digits).alias(name) if prefix else digits


def _descriptions(w: _World, ln: _Lines) -> pl.Series:
    """HS phrase by default; species templates and vague contraband phrases where planted."""
    out = w.hs.descriptions.gather(ln.hs).alias(D.DESCRIPTION)
    at = np.flatnonzero((ln.desc_template >= 0) & (ln.species >= 0))
    tpl = ln.desc_template[at]
    named = pl.DataFrame(
        [
            _TEMPLATE_PREFIX.gather(tpl).alias("p"),
            w.species.label.gather(ln.species[at]).alias("n"),
            _TEMPLATE_SUFFIX.gather(tpl).alias("s"),
        ]
    ).select(pl.concat_str("p", "n", "s"))
    out = _sparse(out, at, named.to_series())
    at = np.flatnonzero(ln.desc_generic >= 0)
    return _sparse(out, at, w.trade.generic.gather(ln.desc_generic[at]))


def _declared_taxa(w: _World, ln: _Lines) -> pl.Series:
    out = _nulls(len(ln.cons), D.TAXON)
    for idx, names in (
        (ln.species, w.species.names),
        (ln.lookalike, w.trade.lookalike_names),
        (ln.generic, w.trade.generic),
    ):
        at = np.flatnonzero(idx >= 0)
        out = _sparse(out, at, names.gather(idx[at]))
    return out


def _permits(w: _World, ln: _Lines, export: IntArray, serial: IntArray) -> pl.Series:
    """CITES-style permit numbers: year, exporting country, serial (e.g. ``24ID012345``)."""
    at = np.flatnonzero(ln.permit)
    yy = f"{w.config.start.year % 100:02d}"
    numbers = yy + w.countries.gather(export[at]) + _zero_padded("", serial[at], 6, "s")
    return _sparse(_nulls(len(ln.cons), D.PERMIT), at, numbers)


def _importers(w: _World, imp: IntArray, first: IntArray) -> pl.Series:
    out = _gather(w.entities.importers, imp, D.IMPORTER)
    # A newcomer is named after its consignment: never seen before, the same on every line.
    at = np.flatnonzero(imp < 0)
    return _sparse(out, at, _zero_padded("IMP-N", first[at], 10, D.IMPORTER))


def _declarations(
    w: _World, c: _Cons, ln: _Lines, row0: int, value: FloatArray, currency: IntArray,
    serial: IntArray,
) -> pl.DataFrame:  # fmt: skip
    ent, cons = w.entities, ln.cons
    rows = len(cons)
    first = row0 + c.first[cons]
    export = c.export[cons]
    return pl.DataFrame(
        [
            pl.Series("_row", np.arange(row0, row0 + rows, dtype=np.int64)),
            _zero_padded("D", np.arange(row0, row0 + rows, dtype=np.int64), 10, D.ID),
            _zero_padded("C", first, 10, D.CONSIGNMENT),
            _timestamps(c.time_us[cons], D.DECLARED_AT),
            _gather(ent.offices, c.office[cons], D.OFFICE),
            _gather(pl.Series(_MODES), ent.office_mode[c.office[cons]], D.TRANSPORT),
            _importers(w, c.importer[cons], first),
            _gather(ent.exporters, c.exporter[cons], D.EXPORTER),
            _gather(ent.declarants, c.declarant[cons], D.DECLARANT),
            _gather(w.hs.codes, ln.hs, D.HS),
            _descriptions(w, ln),
            _declared_taxa(w, ln),
            _gather(w.purposes, ln.purpose, D.PURPOSE),
            _gather(w.sources, ln.source, D.SOURCE),
            _permits(w, ln, export, serial),
            pl.Series(D.QUANTITY, ln.quantity),
            _gather(_UNITS, ln.unit, D.UNIT),
            pl.Series(D.MASS, ln.mass),
            pl.Series(D.VALUE, value),
            _gather(w.currencies, currency, D.CURRENCY),
            _gather(w.countries, ln.origin, D.ORIGIN),
            _gather(w.countries, export, D.EXPORT),
            _country_lists(w.countries, c.transit1[cons], c.transit2[cons], D.TRANSIT),
            pl.repeat(w.config.destination, rows, dtype=pl.String, eager=True).alias(D.DESTINATION),
        ]
    )


@dataclass(frozen=True)
class _BlockOut:
    declarations: pl.DataFrame  # with "_row" (global row index)
    inspections: pl.DataFrame  # with "_row"
    truth: pl.DataFrame
    seizures: pl.DataFrame  # with "_row"


def _truth(decl: pl.DataFrame, pattern: IntArray) -> pl.DataFrame:
    names = _gather(pl.Series(PATTERNS), np.where(pattern == _NONE, -1, pattern), "pattern")
    return pl.DataFrame([decl[D.ID], pl.Series("is_trafficking", pattern != _NONE), names])


def _inspections(w: _World, decl: pl.DataFrame, ln: _Lines, ins: _Inspected) -> pl.DataFrame:
    picked = ins.selected_by >= 0
    hit = ins.hit[picked]
    conc = w.trade.concealments.extend(pl.Series(list(_PATTERN_CONCEALMENT.values())))
    product = np.where(ln.kind >= 0, ln.kind, -1)
    named = np.where(ln.kind < 0, ln.actual, -1)
    frame = (
        decl.filter(pl.Series(picked))
        .select("_row", D.ID, D.QUANTITY, D.UNIT)
        .with_columns(
            _timestamps(ins.at_us[picked], I.INSPECTED_AT),
            pl.Series(I.OUTCOME, np.where(hit, Outcome.HIT.value, Outcome.CLEAR.value)),
            _gather(pl.Series(_SELECTORS), ins.selected_by[picked], I.SELECTED_BY),
            _gather(w.trade.product, product[picked], "_product"),
            _gather(w.species.label, named[picked], "_label"),
            _gather(w.species.names, ln.actual[picked], "_species"),
            _gather(w.species.appendix, ln.actual[picked], "_appendix"),
            _gather(conc, ln.concealment[picked], "_conc"),
            pl.Series("_hit", hit),
        )
    )
    finding = pl.concat_str(
        pl.col(D.QUANTITY).round(1).cast(pl.String), pl.lit(" "), pl.col(D.UNIT),
        pl.lit(" of "), pl.coalesce("_product", "_label"), pl.lit(" ("), "_species",
        pl.lit("), "), "_conc",
    )  # fmt: skip
    return frame.select(
        "_row",
        pl.col(D.ID).alias(I.DECLARATION),
        I.INSPECTED_AT,
        I.OUTCOME,
        I.SELECTED_BY,
        pl.lit(w.config.inspecting_org).alias(I.ORG),
        pl.when("_hit").then(finding).otherwise(pl.lit("no discrepancy found")).alias(I.FINDING),
        "_species",
        "_appendix",
        "_conc",
        "_hit",
    )


def _seizures(
    w: _World, decl: pl.DataFrame, insp: pl.DataFrame, rng: np.random.Generator
) -> pl.DataFrame:
    """Every hit becomes an offence record of the inspecting organisation."""
    hits = insp.filter("_hit").select("_row", I.INSPECTED_AT, "_species", "_appendix", "_conc")
    org = w.config.inspecting_org
    shared = rng.random(hits.height) < 0.5
    rows = hits.join(decl, on="_row", how="left", maintain_order="left")
    return rows.select(
        "_row",
        pl.format(org + "-S{}", pl.col("_row").cast(pl.String).str.zfill(10)).alias(O.ID),
        pl.col(I.INSPECTED_AT).alias(O.DETECTED_AT),
        pl.col(D.IMPORTER).alias(O.IMPORTER),
        pl.col(D.EXPORTER).alias(O.EXPORTER),
        pl.col(D.DECLARANT).alias(O.DECLARANT),
        pl.col(D.HS).alias(O.HS),
        pl.col("_species").alias(O.TAXON),
        pl.col("_appendix").alias(O.APPENDIX),
        pl.col(D.ORIGIN).alias(O.ORIGIN),
        pl.col(D.EXPORT).alias(O.EXPORT),
        pl.col(D.TRANSIT).alias(O.TRANSIT),
        pl.col(D.DESTINATION).alias(O.DESTINATION),
        pl.col(D.OFFICE).alias(O.OFFICE),
        pl.col("_conc").alias(O.CONCEALMENT),
        pl.when(pl.col(D.UNIT) == "NO").then(pl.col(D.QUANTITY)).alias(O.QUANTITY),
        pl.col(D.MASS).alias(O.MASS),
        pl.lit(org).alias(O.PROVIDER),
        pl.when(pl.Series(shared))
        .then(pl.lit(["*"], dtype=pl.List(pl.String)))
        .otherwise(pl.lit([org], dtype=pl.List(pl.String)))
        .alias(O.SHARED_WITH),
    )


def _block(w: _World, b: int) -> _BlockOut:
    rng = np.random.default_rng([w.config.seed, b, _STREAM_BLOCK])
    row0 = b * BLOCK_ROWS
    rows = min(BLOCK_ROWS, w.config.n_declarations - row0)
    c = _consignments(w, rng, row0, rows)
    ln = _empty_lines(c, rows)
    _legit_goods(w, rng, c, ln)
    for code, name in enumerate(PATTERNS):
        sel = _select(c, ln, code)
        if sel.k:
            _PLANTERS[name](w, rng, c, ln, sel)
    value, currency = _values(w, rng, ln)
    serial = rng.integers(0, 1_000_000, size=rows).astype(np.int64)
    decl = _declarations(w, c, ln, row0, value, currency, serial)
    ins = _inspect(w, rng, c, ln, c.time_us[ln.cons])
    insp = _inspections(w, decl, ln, ins)
    seized = _seizures(w, decl, insp, rng)
    return _BlockOut(
        declarations=decl,
        inspections=insp.drop("_species", "_appendix", "_conc", "_hit"),
        truth=_truth(decl, ln.pattern),
        seizures=seized,
    )


# --- offence history ---------------------------------------------------------------------


@dataclass(frozen=True)
class _HistoryPlan:
    """Who each history record is about. ``who``: 0 own record of an offending importer,
    1 foreign record of an offending exporter, 2 foreign record about foreign parties."""

    who: IntArray
    importer: IntArray
    exporter: IntArray
    kind: IntArray
    origin: IntArray
    during: BoolArray  # detected during the period rather than before it


def _history_plan(w: _World, rng: np.random.Generator) -> _HistoryPlan:
    off, ent = w.offenders, w.entities
    n_i, n_e = len(off.importers), len(off.exporters)
    extra = max(0, w.config.history_size - n_i - n_e)
    # Every offender has one record before the period; extra records are repeat offences
    # (40 %) or intelligence about parties who never trade with us (60 %).
    repeat = rng.random(extra) < 0.4
    rep_imp = repeat & (rng.random(extra) < 0.6) & (n_i > 0)
    rep_exp = repeat & ~rep_imp & (n_e > 0)
    j_i = _uniform(rng, max(n_i, 1), extra)
    j_e = _uniform(rng, max(n_e, 1), extra)
    who = np.concatenate(
        [np.zeros(n_i), np.ones(n_e), np.where(rep_imp, 0, np.where(rep_exp, 1, 2))]
    )
    ji = np.concatenate([np.arange(n_i), np.full(n_e, -1), np.where(rep_imp, j_i, -1)])
    je = np.concatenate([np.full(n_i, -1), np.arange(n_e), np.where(rep_exp, j_e, -1)])
    ji, je, who = ji.astype(np.int64), je.astype(np.int64), who.astype(np.int64)
    imp = np.where(ji >= 0, off.importers[np.maximum(ji, 0)] if n_i else -1, -1)
    exp_of_imp = ent.partners[np.maximum(imp, 0), 0]
    exp = np.where(je >= 0, off.exporters[np.maximum(je, 0)] if n_e else -1, -1)
    exp = np.where(imp >= 0, exp_of_imp, exp)
    kind = np.where(
        ji >= 0,
        off.imp_kind[np.maximum(ji, 0)] if n_i else 0,
        np.where(je >= 0, off.exp_kind[np.maximum(je, 0)] if n_e else 0, _kinds(w, rng, len(who))),
    )
    origin = np.where(
        ji >= 0,
        off.imp_origin[np.maximum(ji, 0)] if n_i else 0,
        np.where(je >= 0, off.exp_origin[np.maximum(je, 0)] if n_e else 0, -1),
    )
    fresh = origin < 0
    origin[fresh] = _origin_for_kind(
        w.species, w.trade, kind[fresh], rng.random(int(fresh.sum())), rng.random(int(fresh.sum()))
    )
    during = np.concatenate([np.zeros(n_i + n_e, dtype=np.bool_), rng.random(extra) < 0.25])
    return _HistoryPlan(
        who,
        imp.astype(np.int64),
        exp.astype(np.int64),
        kind.astype(np.int64),
        origin.astype(np.int64),
        during,
    )


def _providers(w: _World, rng: np.random.Generator, who: IntArray) -> tuple[IntArray, IntArray]:
    """Provider index (0: our own organisation, 1..: _PROVIDERS) and destination country."""
    n = len(who)
    foreign = 1 + _draw(_cdf([s for _, _, s in _PROVIDERS]), rng, n)
    provider = np.where(who == 0, 0, foreign)
    codes = w.countries.to_list()
    home = np.array([w.dest] + [codes.index(cc) if cc else -1 for _, cc, _ in _PROVIDERS])
    dest = home[provider]
    anywhere = dest < 0  # an international body reports seizures from all over the world
    dest[anywhere] = _draw(w.country_cdf, rng, int(anywhere.sum()))
    return provider.astype(np.int64), dest.astype(np.int64)


def _sharing(w: _World, rng: np.random.Generator, provider: IntArray) -> pl.Series:
    """Who may see each record: everyone ("*"), the provider and us, or the provider alone.

    Our own records are half public, half kept in-house; the WCO shares everything; other
    providers share 40 % publicly, 40 % with us and keep 20 % to themselves.
    """
    org = w.config.inspecting_org
    names = [org] + [p for p, _, _ in _PROVIDERS]
    u = rng.random(len(provider))
    own = provider == 0
    everyone = (provider == names.index("WCO-CEN")) | (u < np.where(own, 0.5, 0.4))
    alone = ~everyone & (own | (u >= 0.8))
    choice = np.where(everyone, 0, np.where(alone, 1, 2))
    options = pl.Series(
        O.SHARED_WITH,
        [opt for name in names for opt in (["*"], [name], [name, org])],
        dtype=pl.List(pl.String),
    )
    return options.gather(provider * 3 + choice)


def _offence_history(w: _World) -> pl.DataFrame:
    rng = np.random.default_rng([w.config.seed, 0, _STREAM_HISTORY])
    plan = _history_plan(w, rng)
    n = len(plan.who)
    ent, t, sp = w.entities, w.trade, w.species
    provider, dest = _providers(w, rng, plan.who)
    species = t.species.pick(plan.kind, rng.random(n))
    cover = rng.random(n) < 0.5
    hs = np.where(
        cover, t.cover_hs.pick(plan.kind, rng.random(n)), t.true_hs.pick(plan.kind, rng.random(n))
    )
    export = np.where(
        plan.exporter >= 0, ent.exporter_home[np.maximum(plan.exporter, 0)], plan.origin
    )
    hubs = w.trafficking_hubs
    transit = np.where(rng.random(n) < 0.3, hubs[_uniform(rng, len(hubs), n)], -1)
    before = rng.uniform(7, 5 * 365, size=n) * _US_PER_DAY
    during = rng.uniform(0, w.config.days, size=n) * _US_PER_DAY
    detected = w.start_us + np.where(plan.during, during, -before).astype(np.int64)
    counted = t.unit[plan.kind] == _UNIT_NO
    names = pl.Series([w.config.inspecting_org] + [p for p, _, _ in _PROVIDERS])
    own = plan.who == 0
    frame = pl.DataFrame(
        [
            _gather(names, provider, O.PROVIDER),
            pl.Series("_k", np.arange(n)),
            pl.Series("_foreign", ~own),
            _timestamps(detected, O.DETECTED_AT),
            _gather(ent.importers, plan.importer, "_imp"),
            pl.Series("_foreign_imp", rng.integers(0, 100_000, size=n)),
            _gather(ent.exporters, plan.exporter, "_exp"),
            pl.Series("_foreign_exp", rng.integers(0, 100_000, size=n)),
            _gather(
                ent.declarants,
                np.where(own, ent.broker[np.maximum(plan.importer, 0)], -1),
                O.DECLARANT,
            ),
            _gather(w.hs.codes, hs, O.HS),
            _gather(sp.names, species, O.TAXON),
            _gather(sp.appendix, species, O.APPENDIX),
            _gather(w.countries, plan.origin, O.ORIGIN),
            _gather(w.countries, export, O.EXPORT),
            _country_lists(w.countries, transit, np.full(n, -1, dtype=np.int64), O.TRANSIT),
            _gather(w.countries, dest, O.DESTINATION),
            _gather(ent.offices, np.where(own, _draw(ent.office_cdf, rng, n), -1), "_office"),
            pl.Series("_port", rng.integers(1, 6, size=n)),
            _gather(
                t.concealments, t.concealment_lists.pick(plan.kind, rng.random(n)), O.CONCEALMENT
            ),
            pl.Series(O.QUANTITY, np.where(counted, np.ceil(rng.lognormal(3.0, 1.2, n)), np.nan)),
            pl.Series(O.MASS, np.round(rng.lognormal(4.5, 1.8, n), 1)),
            _sharing(w, rng, provider),
        ]
    )
    return frame.select(
        pl.format("{}-H{}", O.PROVIDER, pl.col("_k").cast(pl.String).str.zfill(6)).alias(O.ID),
        O.DETECTED_AT,
        # Foreign records name foreign consignees; our own name our importers.
        pl.coalesce(
            "_imp",
            pl.when(pl.col("_foreign")).then(
                pl.format(
                    "{}-IMP-{}", O.DESTINATION, pl.col("_foreign_imp").cast(pl.String).str.zfill(5)
                )
            ),
        ).alias(O.IMPORTER),
        pl.coalesce(
            "_exp", pl.format("FEXP-{}", pl.col("_foreign_exp").cast(pl.String).str.zfill(5))
        ).alias(O.EXPORTER),
        O.DECLARANT,
        O.HS,
        O.TAXON,
        O.APPENDIX,
        O.ORIGIN,
        O.EXPORT,
        O.TRANSIT,
        O.DESTINATION,
        pl.coalesce("_office", pl.format("{}-PORT{}", O.DESTINATION, "_port")).alias(O.OFFICE),
        O.CONCEALMENT,
        pl.col(O.QUANTITY).fill_nan(None),
        O.MASS,
        O.PROVIDER,
        O.SHARED_WITH,
    )


# --- public API --------------------------------------------------------------------------


def _conformed(frame: pl.DataFrame, record: Record) -> pl.DataFrame:
    return conform(frame.lazy(), record).collect()


def _sorted_offences(frame: pl.DataFrame) -> pl.DataFrame:
    return frame.sort(O.DETECTED_AT, O.ID)


class Scenario:
    """A scenario's world (entities, offenders, grounded reference pools), built once.

    ``offence_history`` is available before any declaration is generated, which is what a
    streaming consumer (score each chunk against what was known) needs.
    """

    def __init__(self, config: SynthConfig, reference: Reference, *, workers: int = 2) -> None:
        self.config = config
        self.workers = workers
        self._world = _build_world(config, reference)

    @property
    def n_blocks(self) -> int:
        return -(-self.config.n_declarations // BLOCK_ROWS)

    def offence_history(self) -> pl.DataFrame:
        """Offences known independently of this run's inspections, in contract schema."""
        return _conformed(_sorted_offences(_offence_history(self._world)), OFFENCE)

    def chunks(self, chunk_rows: int = 1_000_000) -> Iterator[SynthChunk]:
        """Declarations in chunks of ``chunk_rows`` (the last may be shorter).

        Chunk boundaries do not change the data: blocks are generated independently and
        then sliced, so any ``chunk_rows`` gives the same concatenated frames.
        """
        if chunk_rows < 1:
            raise ValueError("chunk_rows must be >= 1")
        pending: list[_BlockOut] = []
        buffered = 0
        index = 0
        for out in self._blocks():
            pending.append(out)
            buffered += out.declarations.height
            while buffered >= chunk_rows:
                chunk, pending = _take_rows(pending, chunk_rows)
                buffered -= chunk_rows
                yield self._chunk(index, chunk)
                index += 1
        if buffered or index == 0:
            chunk, _ = _take_rows(pending, buffered)
            yield self._chunk(index, chunk)

    def _blocks(self) -> Iterator[_BlockOut]:
        """Blocks in order, computed ``workers`` at a time.

        numpy and polars release the GIL for most of a block's work, so threads overlap
        one block's numpy draws with another's string building. At most ``2 * workers``
        blocks are in flight, which bounds memory; the order of results is fixed, and each
        block has its own RNG, so threading changes nothing in the data.
        """
        workers = self.workers
        if workers <= 1:
            yield from (_block(self._world, b) for b in range(self.n_blocks))
            return
        with ThreadPoolExecutor(max_workers=workers) as pool:
            queue: deque[Future[_BlockOut]] = deque()
            for b in range(self.n_blocks):
                queue.append(pool.submit(_block, self._world, b))
                if len(queue) >= 2 * workers:
                    yield queue.popleft().result()
            while queue:
                yield queue.popleft().result()

    def _chunk(self, index: int, out: _BlockOut) -> SynthChunk:
        offences = out.seizures.drop("_row")
        if index == 0:
            offences = pl.concat([_offence_history(self._world), offences], how="vertical")
        return SynthChunk(
            index=index,
            declarations=_conformed(out.declarations.drop("_row"), DECLARATION),
            inspections=_conformed(out.inspections.drop("_row"), INSPECTION),
            truth=out.truth.cast(TRUTH_SCHEMA),
            offences=_conformed(_sorted_offences(offences), OFFENCE),
        )


def _take_rows(pending: list[_BlockOut], rows: int) -> tuple[_BlockOut, list[_BlockOut]]:
    """The first ``rows`` declarations of the buffered blocks, and what is left over."""
    taken: list[_BlockOut] = []
    rest: list[_BlockOut] = []
    need = rows
    for out in pending:
        if need <= 0:
            rest.append(out)
            continue
        h = out.declarations.height
        if h <= need:
            taken.append(out)
            need -= h
            continue
        cut = int(out.declarations["_row"][need])
        taken.append(_split(out, cut, before=True))
        rest.append(_split(out, cut, before=False))
        need = 0
    return _concat(taken), rest


def _split(out: _BlockOut, cut: int, *, before: bool) -> _BlockOut:
    def part(frame: pl.DataFrame) -> pl.DataFrame:
        return frame.filter(pl.col("_row") < cut if before else pl.col("_row") >= cut)

    decl = part(out.declarations)
    first, last = int(out.declarations["_row"][0]), cut
    n_before = last - first
    truth = out.truth.head(n_before) if before else out.truth.slice(n_before)
    return _BlockOut(decl, part(out.inspections), truth, part(out.seizures))


def _concat(outs: list[_BlockOut]) -> _BlockOut:
    if not outs:
        empty = _BlockOut(
            pl.DataFrame(schema={"_row": pl.Int64, **DECLARATION.schema}),
            pl.DataFrame(schema={"_row": pl.Int64, **INSPECTION.schema}),
            pl.DataFrame(schema=TRUTH_SCHEMA),
            pl.DataFrame(schema={"_row": pl.Int64, **OFFENCE.schema}),
        )
        return empty
    if len(outs) == 1:
        return outs[0]
    return _BlockOut(
        pl.concat([o.declarations for o in outs]),
        pl.concat([o.inspections for o in outs]),
        pl.concat([o.truth for o in outs]),
        pl.concat([o.seizures for o in outs]),
    )


def generate(
    n_declarations: int,
    *,
    seed: int,
    reference: Reference,
    start: date = date(2024, 1, 1),
    days: int = 365,
    n_offences: int | None = None,
    rates: PatternRates | None = None,
    chunk_rows: int = 1_000_000,
) -> Iterator[SynthChunk]:
    """Generate a scenario chunk by chunk (see ``SynthChunk``; use ``Scenario`` for more)."""
    config = SynthConfig(
        n_declarations=n_declarations,
        seed=seed,
        start=start,
        days=days,
        n_offences=n_offences,
        rates=rates or PatternRates(),
    )
    return Scenario(config, reference).chunks(chunk_rows)


# --- writer ------------------------------------------------------------------------------

Progress = Callable[[int, int], None]
_PARTS = ("declarations", "inspections", "truth")


@dataclass
class _Tally:
    """Counts for the manifest, accumulated chunk by chunk."""

    declarations: int = 0
    inspections: int = 0
    hits: int = 0
    selected_by: dict[str, int] = field(default_factory=dict)
    pattern_lines: dict[str, int] = field(default_factory=dict)
    trafficking: list[pl.DataFrame] = field(default_factory=list)
    offences: list[pl.DataFrame] = field(default_factory=list)

    def add(self, chunk: SynthChunk) -> None:
        self.declarations += chunk.declarations.height
        self.inspections += chunk.inspections.height
        self.hits += int((chunk.inspections[I.OUTCOME] == Outcome.HIT.value).sum())
        for key, n in chunk.inspections[I.SELECTED_BY].value_counts().iter_rows():
            self.selected_by[key] = self.selected_by.get(key, 0) + int(n)
        bad = chunk.truth.filter("is_trafficking")
        for key, n in bad["pattern"].value_counts().iter_rows():
            self.pattern_lines[key] = self.pattern_lines.get(key, 0) + int(n)
        # Trafficking is rare, so keeping its (consignment, pattern) pairs is cheap.
        consignments = chunk.declarations[D.CONSIGNMENT].filter(chunk.truth["is_trafficking"])
        self.trafficking.append(pl.DataFrame([consignments, bad["pattern"]]))
        self.offences.append(chunk.offences)


def _manifest(
    config: SynthConfig, tally: _Tally, n_chunks: int, offences: pl.DataFrame
) -> dict[str, Any]:
    pairs = pl.concat(tally.trafficking).unique() if tally.trafficking else pl.DataFrame()
    cons = dict(pairs["pattern"].value_counts().iter_rows()) if pairs.height else {}
    traffic = sum(tally.pattern_lines.values())
    seizures = int((offences[O.ID].str.contains("-S")).sum())
    return {
        "generator": "cites_risk.profiling.synth",
        "generator_version": GENERATOR_VERSION,
        "seed": config.seed,
        "start": config.start.isoformat(),
        "days": config.days,
        "destination": config.destination,
        "inspecting_org": config.inspecting_org,
        "block_rows": BLOCK_ROWS,
        "chunks": n_chunks,
        "sizes": {
            "declarations": tally.declarations,
            "inspections": tally.inspections,
            "offences": offences.height,
            "offence_history": offences.height - seizures,
            "seizures": seizures,
        },
        "inspections": {"hits": tally.hits, "selected_by": dict(sorted(tally.selected_by.items()))},
        "trafficking_declarations": traffic,
        "prevalence": traffic / tally.declarations if tally.declarations else 0.0,
        "patterns": {
            name: {
                "rate": rate,
                "consignments": int(cons.get(name, 0)),
                "declarations": tally.pattern_lines.get(name, 0),
            }
            for name, rate in config.rates.as_dict().items()
        },
        "config": {**asdict(config), "start": config.start.isoformat()},
    }


def _clear_parts(out_dir: Path) -> None:
    # A previous, larger run would leave stale partitions behind; remove only ours.
    for part in _PARTS:
        for old in (out_dir / part).glob("part-*.parquet"):
            old.unlink()


def write_scenario(
    out_dir: Path,
    n_declarations: int,
    *,
    seed: int = 0,
    reference: Reference,
    start: date = date(2024, 1, 1),
    days: int = 365,
    n_offences: int | None = None,
    rates: PatternRates | None = None,
    chunk_rows: int = 1_000_000,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Write a scenario as Parquet partitions plus ``manifest.json``; return the manifest.

    Layout: ``declarations/part-NNNNN.parquet``, ``inspections/part-NNNNN.parquet`` and
    ``truth/part-NNNNN.parquet`` (one file per chunk, aligned), ``offences.parquet`` (the
    history and this run's seizures, by detection time) and ``manifest.json``.
    ``progress(done, total)`` is called after every chunk.
    """
    config = SynthConfig(
        n_declarations=n_declarations,
        seed=seed,
        start=start,
        days=days,
        n_offences=n_offences,
        rates=rates or PatternRates(),
    )
    for part in _PARTS:
        (out_dir / part).mkdir(parents=True, exist_ok=True)
    _clear_parts(out_dir)
    tally = _Tally()
    n_chunks = 0
    for chunk in Scenario(config, reference).chunks(chunk_rows):
        name = f"part-{chunk.index:05d}.parquet"
        chunk.declarations.write_parquet(out_dir / "declarations" / name)
        chunk.inspections.write_parquet(out_dir / "inspections" / name)
        chunk.truth.write_parquet(out_dir / "truth" / name)
        tally.add(chunk)
        n_chunks += 1
        if progress is not None:
            progress(tally.declarations, n_declarations)
    offences = _sorted_offences(pl.concat(tally.offences))
    offences.write_parquet(out_dir / "offences.parquet")
    manifest = _manifest(config, tally, n_chunks, offences)
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
