"""Derive the compact reference tables shipped in ``cites_risk.features.reference_data``.

Reads the read-only public snapshot in ``../shared/data`` (each folder documents its
origin in SOURCE.txt) and writes zstd Parquet files:

* cites_species.parquet, species_names.parquet
    <- cites-species-index/Index_of_CITES_Species_2017-04-21.csv.gz (Species+, 2017, stale)
* domesticated_forms.parquet <- CURATED list below (validated against the species index)
* hs_codes.parquet   <- hs-nomenclature/harmonized-system.csv + sections.csv (HS 2022)
* cites_hs.parquet   <- CURATED list below (validated against hs_codes)
* countries.parquet  <- cites-trade/cites_parties.tsv + lemis-amphibian/lemis_codes.csv
* cites_codes.parquet <- cites-trade/cites_codes.tsv
* term_units.parquet <- cites-trade/sapi-trade-codes/term_unit_pairs_utf8.csv
* lemis_codes.parquet <- lemis-amphibian/lemis_codes.csv

It also gzips the LEMIS amphibian declarations (unchanged bytes) into
``cites_risk/profiling/sample_data``. SOURCES.md files are maintained by hand.

Usage: python scripts/build_reference.py [--shared PATH] [--out PATH]
"""

from __future__ import annotations

import argparse
import gzip
import re
import shutil
import sys
from pathlib import Path

import polars as pl

try:
    from cites_risk.features.reference import normalise_name_expr
except ModuleNotFoundError:  # run from a checkout without an installed package
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from cites_risk.features.reference import normalise_name_expr

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SHARED = REPO_ROOT.parent / "shared" / "data"
DEFAULT_OUT = REPO_ROOT / "src" / "cites_risk" / "features" / "reference_data"
SAMPLE_DIR = REPO_ROOT / "src" / "cites_risk" / "profiling" / "sample_data"
SPECIES_CSV = "cites-species-index/Index_of_CITES_Species_2017-04-21.csv.gz"
LEMIS_CSV = "lemis-amphibian/amphibian_LEMIS_2016_to_2021.csv"
ANNOTATION_MAX_CHARS = 300
MIN_NAME_CHARS = 4
HIGHER_RANKS = frozenset({"GENUS", "SUBFAMILY", "FAMILY", "ORDER"})

# ---------------------------------------------------------------------------
# CURATED: HS 2022 headings under which CITES specimens are traded, plus "cover"
# commodities that public seizure reporting shows being used to declare or hide
# CITES specimens. kingdom = kingdom of a CITES taxon legitimately declared under
# the heading (None = either / none). Every prefix is checked against hs_codes.
# (hs_prefix, category, kingdom, cover, note)
# ---------------------------------------------------------------------------
CITES_HS: list[tuple[str, str, str | None, bool, str]] = [
    (
        "0106",
        "live_animals",
        "Animalia",
        False,
        "live mammals, reptiles, birds, amphibians, insects",
    ),
    (
        "0202",
        "cover_commodity",
        None,
        True,
        "frozen beef: Singapore 2019, 12.9 t pangolin scales + ivory declared as frozen beef",
    ),
    (
        "0208",
        "meat",
        "Animalia",
        False,
        "other meat: primates, whales, reptiles, frog legs (bushmeat)",
    ),
    ("0210", "meat", "Animalia", False, "salted/dried/smoked meat incl. bushmeat"),
    (
        "0301",
        "fish",
        "Animalia",
        False,
        "live fish: glass eels (Anguilla), arowana, sharks, seahorses",
    ),
    ("0302", "fish", "Animalia", False, "fresh/chilled fish: eels, sharks and rays"),
    (
        "0303",
        "fish",
        "Animalia",
        True,
        "frozen fish: eels, sharks; reefer loads of frozen fish/meat used to hide pangolins",
    ),
    (
        "0304",
        "fish",
        "Animalia",
        True,
        "fish fillets/meat: shark meat; frozen-fish reefer cover for wildlife meat",
    ),
    (
        "0305",
        "fish",
        "Animalia",
        True,
        "dried fish, shark fins, fish maws (totoaba); dried-fish loads hid ivory (Hai Phong)",
    ),
    ("0307", "molluscs", "Animalia", False, "molluscs: queen conch, giant clams"),
    (
        "0308",
        "aquatic_invertebrates",
        "Animalia",
        False,
        "sea cucumbers and other aquatic invertebrates",
    ),
    (
        "0410",
        "animal_products",
        "Animalia",
        False,
        "edible animal products n.e.s. (e.g. turtle eggs)",
    ),
    (
        "0505",
        "animal_products",
        "Animalia",
        False,
        "bird skins with feathers, feathers (parrots, raptors)",
    ),
    ("0506", "animal_products", "Animalia", False, "bones: tiger and lion bone"),
    (
        "0507",
        "ivory_horn",
        "Animalia",
        False,
        "ivory, tortoiseshell, horns (rhino), claws; pangolin scales; cow horn used as cover",
    ),
    (
        "0508",
        "coral_shells",
        "Animalia",
        False,
        "coral, shells (black/stony coral, nautilus, conch)",
    ),
    (
        "0510",
        "animal_products",
        "Animalia",
        False,
        "musk (Moschus), bile (bears), civet, castoreum",
    ),
    (
        "0511",
        "animal_products",
        "Animalia",
        False,
        "animal products n.e.s.: swim bladders, fish scales (pangolin scales mis-declared)",
    ),
    ("0601", "live_plants", "Plantae", False, "bulbs, tubers: Galanthus, Cyclamen, orchid tubers"),
    ("0602", "live_plants", "Plantae", False, "live plants: orchids, cacti, cycads, succulents"),
    ("0603", "cut_flowers", "Plantae", False, "cut flowers: orchids"),
    ("0604", "live_plants", "Plantae", False, "foliage, branches: cycad leaves, Tillandsia"),
    (
        "0713",
        "cover_commodity",
        None,
        True,
        "dried legumes: beans named by Vietnam customs among ivory cover loads",
    ),
    (
        "0801",
        "cover_commodity",
        None,
        True,
        "cashew nuts: Vietnam 2018-19, tonnes of pangolin scales declared as cashew nuts",
    ),
    (
        "1201",
        "cover_commodity",
        None,
        True,
        "soya beans: Hong Kong 2013, 769 kg tusks hidden under soya beans from Cote d'Ivoire",
    ),
    (
        "1209",
        "cover_commodity",
        None,
        True,
        "seeds: Singapore 2019, 12.7 t pangolin scales declared as cassia seeds",
    ),
    (
        "1211",
        "medicinal_plants",
        "Plantae",
        True,
        "medicinal plants (ginseng, Saussurea, agarwood chips); dried herbs also used as cover",
    ),
    (
        "1301",
        "plant_extracts",
        "Plantae",
        False,
        "natural gums/resins: Guaiacum resin, agarwood resin",
    ),
    (
        "1302",
        "plant_extracts",
        "Plantae",
        False,
        "plant extracts: Prunus africana, Aloe ferox, Hoodia",
    ),
    (
        "3001",
        "animal_products",
        "Animalia",
        False,
        "glands, bile for organo-therapy (bear bile, musk)",
    ),
    (
        "3003",
        "medicines",
        None,
        False,
        "bulk medicines with CITES ingredients (TCM: musk, pangolin)",
    ),
    (
        "3004",
        "medicines",
        None,
        False,
        "dosed medicines with CITES ingredients (TCM pills, Hoodia)",
    ),
    (
        "3301",
        "plant_extracts",
        "Plantae",
        False,
        "essential oils: agarwood, Aniba rosaeodora, Bulnesia sarmientoi",
    ),
    ("4101", "raw_hides", "Animalia", False, "raw bovine/equine hides (zebra)"),
    ("4102", "raw_hides", "Animalia", False, "raw sheep skins (wild sheep, argali)"),
    ("4103", "raw_hides", "Animalia", False, "other raw hides: reptiles, peccary"),
    ("4106", "tanned_hides", "Animalia", False, "tanned hides of other animals (peccary)"),
    ("4113", "tanned_hides", "Animalia", False, "leather of other animals incl. reptile leather"),
    (
        "4115",
        "cover_commodity",
        None,
        True,
        "composition leather: genuine reptile leather mis-declared as imitation",
    ),
    ("4201", "leather_goods", "Animalia", False, "saddlery and harness"),
    ("4202", "leather_goods", "Animalia", False, "handbags, wallets (crocodile, python, ostrich)"),
    ("4203", "leather_goods", "Animalia", False, "apparel, belts, watch straps (reptile leather)"),
    ("4205", "leather_goods", "Animalia", False, "other articles of leather"),
    ("4301", "furskins", "Animalia", False, "raw furskins (cats, otters, bears)"),
    ("4302", "furskins", "Animalia", False, "tanned furskins"),
    ("4303", "furskins", "Animalia", False, "fur apparel"),
    (
        "4304",
        "cover_commodity",
        None,
        True,
        "artificial fur: real CITES fur declared as artificial",
    ),
    (
        "4401",
        "timber",
        "Plantae",
        True,
        "fuel wood, chips: agarwood/rosewood offcuts declared as firewood",
    ),
    (
        "4403",
        "timber",
        "Plantae",
        True,
        "logs (rosewood, Pericopsis); ivory hidden in timber (HK 2006, Shanghai rosewood)",
    ),
    (
        "4407",
        "timber",
        "Plantae",
        True,
        "sawn wood (rosewood, mahogany); HK 2010 tusks in 'white wood' from Nigeria",
    ),
    ("4408", "timber", "Plantae", False, "veneer sheets (Dalbergia, Swietenia)"),
    ("4409", "timber", "Plantae", False, "shaped wood, flooring (Pericopsis elata)"),
    ("4412", "timber", "Plantae", False, "plywood with CITES-timber faces"),
    ("4418", "timber", "Plantae", True, "builders' joinery: processed CITES timber mis-described"),
    (
        "4420",
        "wood_products",
        "Plantae",
        True,
        "wood carvings/marquetry; HK 2003 ivory declared as wood carvings",
    ),
    ("6802", "cover_commodity", None, True, "worked stone: HK 2013 tusks under stone slabs"),
    (
        "7117",
        "cover_commodity",
        None,
        True,
        "imitation jewellery: coral/ivory/tortoiseshell jewellery declared as imitation",
    ),
    ("9202", "musical_instruments", None, False, "string instruments: Dalbergia nigra, ebony"),
    (
        "9206",
        "cover_commodity",
        None,
        True,
        "percussion instruments: Houston, ivory hidden in drums",
    ),
    (
        "9209",
        "musical_instruments",
        None,
        False,
        "instrument parts: pernambuco bows, ivory fittings",
    ),
    ("9503", "cover_commodity", None, True, "toys: live turtles/reptiles posted as toys"),
    ("9601", "worked_ivory", "Animalia", False, "worked ivory, bone, tortoiseshell, horn, coral"),
    ("9602", "cover_commodity", None, True, "worked vegetable carving material (vegetable ivory)"),
    (
        "9703",
        "cover_commodity",
        None,
        True,
        "original sculptures: ivory/rhino horn carvings as art",
    ),
    ("9705", "zoological_collections", None, False, "zoological/botanical collections, trophies"),
]

# ---------------------------------------------------------------------------
# CURATED: domesticated forms of animals, which CITES does not cover, and the few cage birds
# the Psittaciformes listing names as not included. A declared taxon or description naming one
# of these must never be matched to a listed taxon, exactly or fuzzily, although the species
# index gives some of these names to the wild taxon ("Canis familiaris", "Bos grunniens" and
# "Bos frontalis" are synonyms there; "Domestic Sheep" is an English name of Ovis aries) and
# others are one letter from a listed name ("Bos taurus" / Bos gaurus).
# basis:
#   annotation_names_form        the CITES annotation of wild_taxon excludes the domesticated
#                                form and names it (cites_name); checked against the index
#   annotation_domesticated_form the annotation of wild_taxon excludes "the domesticated form"
#                                without naming it; form = the usual name for it; checked
#   not_in_appendices            the annotation of wild_taxon names it as not included; checked
#   domesticated_only            a domesticated form the Appendices do not mention (its wild
#                                ancestor is unlisted, or listed without an exclusion)
# Other names of the same form (written as a subspecies of its wild relative, as many authors
# do since ICZN Opinion 2027 (2003) conserved the names of the wild species) share its basis.
# (form, name_kind, cites_name, wild_taxon, basis, note)
# ---------------------------------------------------------------------------
DOMESTICATED: list[tuple[str, str, str | None, str | None, str, str]] = [
    (
        "Bos frontalis",
        "scientific",
        "Bos frontalis",
        "Bos gaurus",
        "annotation_names_form",
        "gayal, mithun",
    ),
    (
        "Bos gaurus frontalis",
        "scientific",
        "Bos frontalis",
        "Bos gaurus",
        "annotation_names_form",
        "gayal as a subspecies of the gaur",
    ),
    (
        "Bos grunniens",
        "scientific",
        "Bos grunniens",
        "Bos mutus",
        "annotation_names_form",
        "domestic yak",
    ),
    (
        "Bos mutus grunniens",
        "scientific",
        "Bos grunniens",
        "Bos mutus",
        "annotation_names_form",
        "domestic yak as a subspecies of the wild yak",
    ),
    (
        "Bubalus bubalis",
        "scientific",
        "Bubalus bubalis",
        "Bubalus arnee",
        "annotation_names_form",
        "domestic water buffalo",
    ),
    (
        "Bubalus arnee bubalis",
        "scientific",
        "Bubalus bubalis",
        "Bubalus arnee",
        "annotation_names_form",
        "domestic water buffalo as a subspecies",
    ),
    (
        "Equus asinus",
        "scientific",
        "Equus asinus",
        "Equus africanus",
        "annotation_names_form",
        "donkey",
    ),
    (
        "Equus africanus asinus",
        "scientific",
        "Equus asinus",
        "Equus africanus",
        "annotation_names_form",
        "donkey as a subspecies of the African wild ass",
    ),
    (
        "Canis lupus familiaris",
        "scientific",
        "Canis lupus familiaris",
        "Canis lupus",
        "annotation_names_form",
        "domestic dog",
    ),
    (
        "Canis familiaris",
        "scientific",
        "Canis lupus familiaris",
        "Canis lupus",
        "annotation_names_form",
        "domestic dog as a species",
    ),
    (
        "Canis lupus dingo",
        "scientific",
        "Canis lupus dingo",
        "Canis lupus",
        "annotation_names_form",
        "dingo, excluded with the domesticated form",
    ),
    (
        "Canis dingo",
        "scientific",
        "Canis lupus dingo",
        "Canis lupus",
        "annotation_names_form",
        "dingo as a species",
    ),
    (
        "Ovis aries aries",
        "scientific",
        "Ovis aries aries",
        "Ovis aries",
        "annotation_names_form",
        "domestic sheep",
    ),
    (
        "Ovis aries",
        "scientific",
        "Ovis aries aries",
        "Ovis aries",
        "annotation_names_form",
        "domestic sheep by its livestock name; wild sheep go by subspecies or O. orientalis",
    ),
    (
        "Ovis orientalis aries",
        "scientific",
        "Ovis aries aries",
        "Ovis aries",
        "annotation_names_form",
        "domestic sheep as a subspecies of the mouflon",
    ),
    (
        "Ovis gmelini aries",
        "scientific",
        "Ovis aries aries",
        "Ovis aries",
        "annotation_names_form",
        "domestic sheep as a subspecies of the mouflon",
    ),
    (
        "Domestic Sheep",
        "common_en",
        "Ovis aries aries",
        "Ovis aries",
        "annotation_names_form",
        "the index gives this English name to Ovis aries",
    ),
    (
        "Capra hircus",
        "scientific",
        None,
        "Capra hircus aegagrus",
        "annotation_domesticated_form",
        "domestic goat: the species without the wild goat aegagrus",
    ),
    (
        "Capra hircus hircus",
        "scientific",
        None,
        "Capra hircus aegagrus",
        "annotation_domesticated_form",
        "domestic goat",
    ),
    (
        "Capra aegagrus hircus",
        "scientific",
        None,
        "Capra hircus aegagrus",
        "annotation_domesticated_form",
        "domestic goat as a subspecies of the wild goat",
    ),
    (
        "Felis catus",
        "scientific",
        None,
        "Felis silvestris",
        "annotation_domesticated_form",
        "domestic cat (Felidae spp. annotation)",
    ),
    (
        "Felis silvestris catus",
        "scientific",
        None,
        "Felis silvestris",
        "annotation_domesticated_form",
        "domestic cat as a subspecies of the wildcat",
    ),
    (
        "Agapornis roseicollis",
        "scientific",
        "Agapornis roseicollis",
        "Psittaciformes",
        "not_in_appendices",
        "rosy-faced lovebird",
    ),
    (
        "Melopsittacus undulatus",
        "scientific",
        "Melopsittacus undulatus",
        "Psittaciformes",
        "not_in_appendices",
        "budgerigar",
    ),
    (
        "Nymphicus hollandicus",
        "scientific",
        "Nymphicus hollandicus",
        "Psittaciformes",
        "not_in_appendices",
        "cockatiel",
    ),
    (
        "Psittacula krameri",
        "scientific",
        "Psittacula krameri",
        "Psittaciformes",
        "not_in_appendices",
        "rose-ringed parakeet",
    ),
    (
        "Bos taurus",
        "scientific",
        None,
        None,
        "domesticated_only",
        "taurine cattle (wild ancestor Bos primigenius, not listed); one letter from Bos gaurus",
    ),
    ("Bos indicus", "scientific", None, None, "domesticated_only", "zebu cattle"),
    (
        "Bos taurus indicus",
        "scientific",
        None,
        None,
        "domesticated_only",
        "zebu as a subspecies of cattle",
    ),
    (
        "Bos primigenius taurus",
        "scientific",
        None,
        None,
        "domesticated_only",
        "taurine cattle as a subspecies of the aurochs",
    ),
    (
        "Bos primigenius indicus",
        "scientific",
        None,
        None,
        "domesticated_only",
        "zebu as a subspecies of the aurochs",
    ),
    (
        "Equus caballus",
        "scientific",
        None,
        "Equus przewalskii",
        "domesticated_only",
        "domestic horse; the listed wild horse is Equus przewalskii",
    ),
    (
        "Equus ferus caballus",
        "scientific",
        None,
        "Equus przewalskii",
        "domesticated_only",
        "domestic horse as a subspecies of the wild horse",
    ),
    (
        "Camelus dromedarius",
        "scientific",
        None,
        None,
        "domesticated_only",
        "dromedary; no camel is listed",
    ),
    (
        "Camelus bactrianus",
        "scientific",
        None,
        None,
        "domesticated_only",
        "domestic Bactrian camel; no camel is listed",
    ),
    (
        "Lama glama",
        "scientific",
        None,
        "Lama guanicoe",
        "domesticated_only",
        "llama, domesticated from the guanaco",
    ),
    (
        "Lama guanicoe glama",
        "scientific",
        None,
        "Lama guanicoe",
        "domesticated_only",
        "llama as a subspecies of the guanaco",
    ),
    (
        "Vicugna pacos",
        "scientific",
        None,
        "Vicugna vicugna",
        "domesticated_only",
        "alpaca, domesticated from the vicuna",
    ),
    (
        "Lama pacos",
        "scientific",
        None,
        "Vicugna vicugna",
        "domesticated_only",
        "alpaca under its older genus",
    ),
    (
        "Sus scrofa domestica",
        "scientific",
        None,
        None,
        "domesticated_only",
        "domestic pig; Sus scrofa is not listed",
    ),
    ("Sus domesticus", "scientific", None, None, "domesticated_only", "domestic pig as a species"),
    (
        "Gallus gallus domesticus",
        "scientific",
        None,
        None,
        "domesticated_only",
        "chicken; Gallus gallus is not listed",
    ),
    ("Gallus domesticus", "scientific", None, None, "domesticated_only", "chicken as a species"),
    (
        "Columba livia domestica",
        "scientific",
        None,
        None,
        "domesticated_only",
        "domestic pigeon; Columba livia is not listed",
    ),
    ("Mustela furo", "scientific", None, None, "domesticated_only", "ferret"),
    (
        "Mustela putorius furo",
        "scientific",
        None,
        None,
        "domesticated_only",
        "ferret as a subspecies of the polecat",
    ),
]

# Synonym = leading genus + lowercase epithets / rank markers / hybrid sign.
_SYNONYM = re.compile(
    r"[A-Z][a-z]+(?:-[a-z]+)?"
    r"(?:\s+(?:var\.|subsp\.|ssp\.|f\.|forma|x|\u00d7|(?!(?:de|da|del|van|von|ex|in|et|la|le|du|der|den|non|auct)\b)[a-z][a-z-]+))*"
)
_GENUS_ONLY = re.compile(r"[A-Z][a-z]+")
_TRAILING_MARKER = re.compile(r"(?:\s+(?:var\.|subsp\.|ssp\.|f\.|forma|x|\u00d7))+$")
_HTML_TAG = re.compile(r"<[^>]+>")
_EMPTY_ANNOTATION = re.compile(r"^(?:\s*Appendix\s+I{1,3}:\s*)*$")


def write(frame: pl.DataFrame, out: Path, name: str) -> pl.DataFrame:
    frame.write_parquet(out / name, compression="zstd", compression_level=19, statistics=False)
    print(f"{name}: {frame.height:,} rows, {(out / name).stat().st_size:,} bytes")
    return frame


def empty_to_null(*columns: str) -> list[pl.Expr]:
    return [
        pl.when(pl.col(c).str.strip_chars() == "")
        .then(None)
        .otherwise(pl.col(c).str.strip_chars())
        .alias(c)
        for c in columns
    ]


def read_species_csv(shared: Path) -> pl.DataFrame:
    return pl.read_csv(shared / SPECIES_CSV, infer_schema=False)


def most_protective(parts: pl.Expr) -> pl.Expr:
    """I, then II, then III among a list of listing codes; null when none (NC, empty)."""
    return (
        pl.when(parts.list.contains("I"))
        .then(pl.lit("I"))
        .when(parts.list.contains("II"))
        .then(pl.lit("II"))
        .when(parts.list.contains("III"))
        .then(pl.lit("III"))
        .otherwise(None)
    )


def clean_annotation(text: str | None) -> str | None:
    if text is None:
        return None
    cleaned = " ".join(_HTML_TAG.sub("", text).split())
    if _EMPTY_ANNOTATION.match(cleaned):
        return None
    return cleaned[:ANNOTATION_MAX_CHARS]


def own_appendices(annotation: pl.Expr) -> pl.Expr:
    """The appendices a taxon's own annotation has an entry for ("Appendix II:...")."""
    return (
        annotation.fill_null("")
        .str.extract_all(r"Appendix I{1,3}:")
        .list.eval(pl.element().str.extract(r"(I{1,3}):"))
    )


def species_appendix(raw: pl.DataFrame) -> pl.Expr:
    """Most protective appendix of the taxon itself.

    The CurrentListing of a species in the index also carries the listings of its subspecies
    and varieties: "Ovis aries" is I/II because O. a. ophion and O. a. vignei are in Appendix I
    (the species itself is in II), "Capra hircus" III/NC for the wild goat C. h. aegagrus
    alone. AnnotationEnglish has one "Appendix X:" entry per listing of the taxon itself; it
    names exactly the listing's appendices for every species without infraspecific rows. A
    species with such rows keeps only the appendices its own entries name.
    """
    infraspecific = raw.filter(pl.col("RankName").is_in(["SUBSPECIES", "VARIETY"]))
    parents = infraspecific.select(
        pl.concat_str(
            pl.col("Genus").str.strip_chars(), pl.col("Species").str.strip_chars(), separator=" "
        )
    ).to_series()
    parts = pl.col("CurrentListing").str.split("/")
    own = parts.list.set_intersection(own_appendices(pl.col("AnnotationEnglish")))
    has_infraspecific = (pl.col("RankName") == "SPECIES") & pl.col("FullName").is_in(
        parents.implode()
    )
    return most_protective(pl.when(has_infraspecific).then(own).otherwise(parts))


def build_species(raw: pl.DataFrame) -> pl.DataFrame:
    taxonomy = ["Kingdom", "Phylum", "Class", "Order", "Family", "Genus", "FullName", "RankName"]
    appendix = species_appendix(raw)
    return (
        raw.with_columns(empty_to_null(*taxonomy, "CurrentListing"))
        .select(
            pl.col("TaxonId").cast(pl.Int64).alias("taxon_id"),
            pl.col("FullName").alias("full_name"),
            pl.col("RankName").alias("rank"),
            pl.col("Kingdom").alias("kingdom"),
            pl.col("Phylum").alias("phylum"),
            pl.col("Class").alias("class_name"),
            pl.col("Order").alias("order_name"),
            pl.col("Family").alias("family"),
            pl.col("Genus").alias("genus"),
            pl.col("CurrentListing").alias("listing"),
            appendix.alias("appendix"),
            (pl.col("CitesAccepted").str.to_lowercase() == "true").alias("cites_accepted"),
            pl.col("All_DistributionISOCodes")
            .str.split(",")
            .list.eval(pl.element().str.strip_chars().filter(pl.element().str.strip_chars() != ""))
            .alias("range_iso2"),
            pl.col("AnnotationEnglish")
            .map_elements(clean_annotation, return_dtype=pl.String, skip_nulls=True)
            .alias("annotation"),
        )
        .sort("taxon_id")
    )


def parse_synonym(entry: str, *, allow_single_word: bool) -> str | None:
    """Latin name at the start of one comma-separated synonym entry, authors dropped.

    Single words are only genus synonyms of higher-rank taxa: for species they are
    nearly always fragments of long author lists ("Frost, Grant, Bain, ...").
    """
    entry = entry.strip()
    if _GENUS_ONLY.fullmatch(entry):
        return entry if allow_single_word else None
    match = _SYNONYM.match(entry)
    if match is None:
        return None
    name = _TRAILING_MARKER.sub("", match.group(0))
    return name if " " in name else None


def synonyms_of(text: str, rank: str | None) -> list[str]:
    single = rank in HIGHER_RANKS
    names = (parse_synonym(piece, allow_single_word=single) for piece in text.split(","))
    return sorted({n for n in names if n is not None})


def names_from_column(raw: pl.DataFrame, kind: str, splitter: pl.Expr) -> pl.DataFrame:
    return (
        raw.select(pl.col("TaxonId").cast(pl.Int64).alias("taxon_id"), splitter.alias("name"))
        .explode("name")
        .drop_nulls("name")
        .with_columns(pl.lit(kind).alias("name_kind"))
        .filter(pl.col("name").str.strip_chars() != "")
        .select("name", "taxon_id", "name_kind")
    )


def build_species_names(raw: pl.DataFrame) -> pl.DataFrame:
    parts = [
        names_from_column(raw, "scientific", pl.concat_list(pl.col("FullName"))),
        names_from_column(
            raw,
            "synonym",
            pl.struct("SynonymsWithAuthors", "RankName").map_elements(
                lambda row: synonyms_of(row["SynonymsWithAuthors"] or "", row["RankName"]),
                return_dtype=pl.List(pl.String),
            ),
        ),
    ]
    for column, kind in [
        ("EnglishNames", "common_en"),
        ("FrenchNames", "common_fr"),
        ("SpanishNames", "common_es"),
    ]:
        parts.append(names_from_column(raw, kind, pl.col(column).str.split(",")))
    names = pl.concat(parts).with_columns(normalise_name_expr(pl.col("name")).alias("name"))
    scientific = names.filter(pl.col("name_kind") == "scientific").select("name", "taxon_id")
    # A synonym identical to the taxon's own accepted name adds nothing.
    redundant = names.filter(pl.col("name_kind") == "synonym").join(
        scientific, on=["name", "taxon_id"], how="semi"
    )
    return (
        names.join(redundant, on=["name", "taxon_id", "name_kind"], how="anti")
        .filter(pl.col("name").str.len_chars() >= MIN_NAME_CHARS)
        .unique()
        .sort("name", "name_kind", "taxon_id")
    )


def build_domesticated(raw: pl.DataFrame) -> pl.DataFrame:
    frame = pl.DataFrame(
        DOMESTICATED,
        schema={
            "form": pl.String,
            "name_kind": pl.String,
            "cites_name": pl.String,
            "wild_taxon": pl.String,
            "basis": pl.String,
            "note": pl.String,
        },
        orient="row",
    ).with_columns(normalise_name_expr(pl.col("form")).alias("name"))
    if frame["name"].is_duplicated().any():
        raise ValueError("duplicate curated domesticated forms")
    annotations = {
        name: " ".join(_HTML_TAG.sub("", f"{short or ''} {full or ''}").split())
        for name, short, full in raw.select(
            "FullName", "AnnotationEnglish", "FullAnnotationEnglish"
        ).iter_rows()
    }
    for form, _, cites_name, wild, basis, _ in DOMESTICATED:
        if wild is not None and wild not in annotations:
            raise ValueError(f"{form}: wild taxon {wild!r} is not in the species index")
        said = annotations.get(wild or "", "")
        if basis in ("annotation_names_form", "not_in_appendices"):
            if cites_name is None or cites_name not in said:
                raise ValueError(f"{form}: the annotation of {wild} does not name {cites_name!r}")
        elif basis == "annotation_domesticated_form":
            if "domesticated form" not in said:
                raise ValueError(f"{form}: the annotation of {wild} excludes no domesticated form")
        elif basis != "domesticated_only":
            raise ValueError(f"{form}: unknown basis {basis!r}")
    return frame.select(
        "name", "form", "name_kind", "cites_name", "wild_taxon", "basis", "note"
    ).sort("name")


def build_hs_codes(shared: Path) -> pl.DataFrame:
    hs = pl.read_csv(shared / "hs-nomenclature/harmonized-system.csv", infer_schema=False)
    sections = pl.read_csv(
        shared / "hs-nomenclature/sections.csv", infer_schema=False, encoding="utf8-lossy"
    )
    sections = sections.rename(
        {sections.columns[0]: "section", sections.columns[1]: "section_name"}
    )
    sections = sections.with_columns(pl.col("section").str.strip_chars("\ufeff "))
    return (
        # The last row is a pseudo-code "TOTAL" (level 5), not part of the nomenclature.
        hs.filter(pl.col("hscode") != "TOTAL")
        .join(sections, on="section", how="left")
        .select(
            pl.col("hscode"),
            pl.col("level").cast(pl.Int8),
            pl.col("description"),
            pl.when(pl.col("parent") == "TOTAL")
            .then(None)
            .otherwise(pl.col("parent"))
            .alias("parent"),
            pl.col("section"),
            pl.col("section_name"),
        )
        .sort("hscode")
    )


def build_cites_hs(hs_codes: pl.DataFrame) -> pl.DataFrame:
    frame = pl.DataFrame(
        CITES_HS,
        schema={
            "hs_prefix": pl.String,
            "category": pl.String,
            "kingdom": pl.String,
            "cover": pl.Boolean,
            "note": pl.String,
        },
        orient="row",
    )
    missing = set(frame["hs_prefix"]) - set(hs_codes["hscode"])
    if missing:
        raise ValueError(f"curated HS prefixes not in HS 2022: {sorted(missing)}")
    if frame["hs_prefix"].is_duplicated().any():
        raise ValueError("duplicate curated HS prefixes")
    return frame.sort("hs_prefix")


def build_countries(shared: Path) -> pl.DataFrame:
    parties = pl.read_csv(
        shared / "cites-trade/cites_parties.tsv",
        separator="\t",
        infer_schema=False,
        null_values=[""],
    ).select(
        pl.col("code").alias("iso2"),
        pl.col("country").alias("name"),
        pl.col("date").str.to_date("%Y-%m-%d", strict=False).alias("cites_party_since"),
        (pl.col("non_ISO_code") == "TRUE").alias("cites_pseudo"),
        (pl.col("former_code") == "TRUE").alias("former_code"),
    )
    lemis = (
        read_lemis_codes(shared)
        .filter(pl.col("field") == "country")
        .select(pl.col("code").alias("iso2"), pl.col("value").alias("name"))
        .join(parties, on="iso2", how="anti")
        # LEMIS-only codes (e.g. VS "Various") are not ISO: flag them as pseudo-codes.
        .with_columns(
            pl.lit(None, dtype=pl.Date).alias("cites_party_since"),
            pl.lit(True).alias("cites_pseudo"),
            pl.lit(False).alias("former_code"),
        )
    )
    countries = pl.concat([parties, lemis]).sort("iso2")
    if countries["iso2"].is_duplicated().any():
        raise ValueError("duplicate country codes")
    return countries


def build_cites_codes(shared: Path) -> pl.DataFrame:
    return (
        pl.read_csv(shared / "cites-trade/cites_codes.tsv", separator="\t", infer_schema=False)
        .with_columns(pl.col("field").str.to_lowercase())
        .select("field", "code", "description")
        .sort("field", "code")
    )


def build_term_units(shared: Path) -> pl.DataFrame:
    return (
        pl.read_csv(
            shared / "cites-trade/sapi-trade-codes/term_unit_pairs_utf8.csv", infer_schema=False
        )
        .with_columns(empty_to_null("TERM_CODE", "UNIT_CODE"))
        .select(pl.col("TERM_CODE").alias("term"), pl.col("UNIT_CODE").alias("unit"))
        .unique()
        .sort("term", "unit", nulls_last=False)
    )


def read_lemis_codes(shared: Path) -> pl.DataFrame:
    # No null_values: "NA" is Namibia's country code here.
    return pl.read_csv(shared / "lemis-amphibian/lemis_codes.csv", infer_schema=False).select(
        "field", "code", "value", (pl.col("post_feb_2013") == "True").alias("post_feb_2013")
    )


def gzip_lemis_sample(shared: Path, sample_dir: Path) -> Path:
    sample_dir.mkdir(parents=True, exist_ok=True)
    target = sample_dir / "lemis_amphibian_2016_2021.csv.gz"
    with (
        (shared / LEMIS_CSV).open("rb") as src,
        gzip.GzipFile(target, "wb", compresslevel=9, mtime=0) as dst,
    ):
        shutil.copyfileobj(src, dst)
    print(f"{target.name}: {target.stat().st_size:,} bytes")
    return target


def build_all(shared: Path, out: Path, sample_dir: Path = SAMPLE_DIR) -> None:
    out.mkdir(parents=True, exist_ok=True)
    raw = read_species_csv(shared)
    write(build_species(raw), out, "cites_species.parquet")
    write(build_species_names(raw), out, "species_names.parquet")
    write(build_domesticated(raw), out, "domesticated_forms.parquet")
    hs_codes = write(build_hs_codes(shared), out, "hs_codes.parquet")
    write(build_cites_hs(hs_codes), out, "cites_hs.parquet")
    write(build_countries(shared), out, "countries.parquet")
    write(build_cites_codes(shared), out, "cites_codes.parquet")
    write(build_term_units(shared), out, "term_units.parquet")
    write(read_lemis_codes(shared).sort("field", "code"), out, "lemis_codes.parquet")
    gzip_lemis_sample(shared, sample_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--shared", type=Path, default=DEFAULT_SHARED, help="public data root")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="reference_data folder")
    args = parser.parse_args(argv)
    build_all(args.shared, args.out)


if __name__ == "__main__":
    main()
