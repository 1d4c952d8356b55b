"""Species matching: declared taxon and goods description against the CITES species index.

Matching runs on the distinct texts of a batch, not on rows: a million declarations
usually carry a few thousand distinct taxa and descriptions, so fuzzy matching stays cheap.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import polars as pl
from rapidfuzz import fuzz, process

from cites_risk.features.reference import Reference, normalise_name

APPENDIX_RANK = {"I": 1, "II": 2, "III": 3}
#: Confidence given to each way of matching; fuzzy matches use their own similarity.
CONFIDENCE = {
    "scientific": 1.0,
    "synonym": 0.95,
    "common_en": 0.85,
    "common_fr": 0.85,
    "common_es": 0.85,
    "genus": 0.7,
    "family": 0.6,
}
FUZZY_CUTOFF = 90.0
#: Texts whose match a matcher remembers, per kind (taxon, description). A batch of
#: millions of rows repeats a few thousand texts from chunk to chunk; past the limit the
#: memory starts afresh rather than grow with a stream of ever-new texts.
MEMO_LIMIT = 200_000
#: Not yet matched (``None`` is a remembered "no match"); one lookup, so that another
#: scoring thread clearing the memory in between cannot fail it.
_UNSEEN: Any = object()
#: Matchers kept for references loaded earlier (a service that reloads its reference must
#: not keep every old matcher and its memory).
_MATCHERS_KEPT = 2
EPITHET_CUTOFF = 80.0
MATCH_SCHEMA = pl.Schema(
    {
        "text": pl.String,
        "taxon_id": pl.Int64,
        "via": pl.String,
        "confidence": pl.Float64,
    }
)
_NOT_A_TAXON = re.compile(r"\b(non cites|non-cites|unknown|unidentified|not listed)\b")
#: Words that say what kind of organism the goods are. Where a description has one, a single
#: other word is a modifier of it ("tiger salamander"), not the name of a listed species.
KIND_NOUNS = frozenset(
    {
        "frog",
        "toad",
        "salamander",
        "newt",
        "axolotl",
        "caecilian",
        "fish",
        "eel",
        "shark",
        "ray",
        "bird",
        "parrot",
        "finch",
        "snake",
        "lizard",
        "gecko",
        "iguana",
        "chameleon",
        "skink",
        "monitor",
        "turtle",
        "tortoise",
        "crocodile",
        "caiman",
        "alligator",
        "spider",
        "tarantula",
        "scorpion",
        "beetle",
        "butterfly",
        "insect",
        "snail",
        "clam",
        "coral",
        "shell",
        "orchid",
        "cactus",
        "cacti",
        "palm",
        "fern",
        "tree",
        "plant",
        "seed",
    }
)
_PLACEHOLDER_EPITHETS = {"sp", "spp", "na", "species", "hybrid", "x"}


@dataclass(frozen=True)
class Match:
    taxon_id: int
    via: str
    confidence: float


class SpeciesMatcher:
    """Lookups over the species index, built once per reference."""

    def __init__(self, reference: Reference) -> None:
        species = reference.species
        rank = species.select(
            "taxon_id",
            pl.col("appendix").replace_strict(APPENDIX_RANK, default=9, return_dtype=pl.Int8),
        )
        # Where one name points at several taxa, the most protective listing wins: a
        # shared common name must not hide an Appendix I species behind a lesser one.
        names = (
            reference.species_names.join(rank, on="taxon_id", how="left")
            .sort(["name", "appendix", "taxon_id"])
            .unique(subset=["name"], keep="first", maintain_order=True)
        )
        self.by_name: dict[str, tuple[int, str]] = {
            n: (t, k) for n, t, k in names.select("name", "taxon_id", "name_kind").iter_rows()
        }
        higher = species.filter(pl.col("rank").is_in(["GENUS", "FAMILY", "ORDER"]))
        self.higher: dict[str, tuple[int, str]] = {
            normalise_name(n): (t, r.lower())
            for t, n, r in higher.select("taxon_id", "full_name", "rank").iter_rows()
        }
        # A genus with listed species but no genus-level listing still deserves a match when
        # no species is named: "Dendrobates sp." may well be listed. A named species of that
        # genus that is not itself listed ("Salamandra salamandra") is not.
        self.listed_genera: dict[str, tuple[int, str]] = {}
        listed_genera = (
            species.filter(pl.col("rank") == "SPECIES", pl.col("appendix").is_not_null())
            .join(rank, on="taxon_id")
            .sort(["genus", "appendix", "taxon_id"])
            .unique(subset=["genus"], keep="first", maintain_order=True)
        )
        for t, g in listed_genera.select("taxon_id", "genus").iter_rows():
            if g:
                self.listed_genera[normalise_name(g)] = (t, "genus")
        self.rank: dict[int, str] = dict(species.select("taxon_id", "rank").iter_rows())
        self.scientific = sorted(
            n for n, (_, k) in self.by_name.items() if k in ("scientific", "synonym")
        )
        self.max_words = 4
        # Domesticated forms are not covered by CITES, yet the index gives some of their names
        # to the wild taxon ("Canis familiaris", "Bos grunniens" are synonyms there) and others
        # are a letter away from a listed name ("Bos taurus" / Bos gaurus). Such a name beats
        # any listed name of the same length or shorter, exact or fuzzy.
        self.domestic = frozenset(reference.domesticated.get_column("name").to_list())
        self.domestic_sorted = sorted(self.domestic)
        self.domestic_words = max((len(n.split(" ")) for n in self.domestic), default=0)
        self._memo: dict[bool, dict[str, Match | None]] = {False: {}, True: {}}

    def match_taxon(self, text: str) -> Match | None:
        norm = normalise_name(text)
        if not norm or _NOT_A_TAXON.search(norm):
            return None
        words = [w for w in norm.split() if w not in _PLACEHOLDER_EPITHETS]
        for n in range(len(words), 0, -1):
            candidate = " ".join(words[:n])
            if candidate in self.domestic:
                # Not a CITES specimen; only a longer name (a wild subspecies such as
                # "Ovis aries ophion", perhaps misspelt) can still be a listed taxon.
                return self._fuzzy(words) if n < len(words) else None
            if n in (len(words), 2) and candidate in self.by_name:
                taxon_id, kind = self.by_name[candidate]
                # A listing of a whole genus or family says less about the specimen.
                level = self.rank.get(taxon_id, "SPECIES").lower()
                if level in CONFIDENCE:
                    return Match(taxon_id, level, CONFIDENCE[level])
                return Match(taxon_id, kind, CONFIDENCE[kind])
        if len(words) >= 2:
            fuzzy = self._fuzzy(words[:2])
            if fuzzy is not None:
                return fuzzy
        if words and words[0] in self.higher:
            taxon_id, level = self.higher[words[0]]
            return Match(taxon_id, level, CONFIDENCE.get(level, 0.6))
        if len(words) == 1 and words[0] in self.listed_genera:
            taxon_id, level = self.listed_genera[words[0]]
            return Match(taxon_id, level, CONFIDENCE["genus"] * 0.8)
        return None

    def match_description(self, text: str) -> Match | None:
        """Longest run of words in a free-text description that names a listed taxon.

        One word alone is weak evidence: in "tiger salamander", "leopard frog" or "lemur
        leaf frog" it qualifies another animal. A one-word match counts only when the
        description names no other kind of animal or plant.
        """
        words = normalise_name(text).split()
        other_kind = any(w.rstrip("s") in KIND_NOUNS for w in words)
        domestic = self._domestic_spans(words)
        for size in range(min(self.max_words, len(words)), 0, -1):
            for start in range(len(words) - size + 1):
                candidate = " ".join(words[start : start + size])
                if len(candidate) < 5 or (size == 1 and other_kind):
                    continue
                # Words of a domesticated form ("cattle hides Bos taurus") name nothing
                # listed, alone or with a neighbour; only a longer name containing the form
                # whole ("Equus caballus przewalskii") may.
                end = start + size
                if any(
                    a < end and start < b and not (start <= a and b <= end and size > b - a)
                    for a, b in domestic
                ):
                    continue
                hit = self.by_name.get(candidate)
                if hit is not None:
                    weight = 0.9 if size > 1 else 0.85
                    return Match(hit[0], "description", CONFIDENCE[hit[1]] * weight)
                higher = self.higher.get(candidate)
                if higher is not None and size == 1:
                    return Match(higher[0], "description", 0.5)
        return None

    def _fuzzy(self, words: list[str]) -> Match | None:
        """Closest scientific name or synonym to ``words``, if close enough and not domestic."""
        query = " ".join(words)
        best = process.extractOne(
            query, self.scientific, scorer=fuzz.ratio, score_cutoff=FUZZY_CUTOFF
        )
        # Both halves must be close: a different species of the same genus scores
        # high on the whole name but is a different animal.
        if best is None or fuzz.ratio(words[-1], best[0].split(" ")[-1]) < EPITHET_CUTOFF:
            return None
        # A text at least as close to a domesticated form is that form, perhaps misspelt:
        # "Bos taurus" is as near to Bos gaurus as a typo of the gaur would be.
        domestic = process.extractOne(
            query, self.domestic_sorted, scorer=fuzz.ratio, score_cutoff=best[1]
        )
        if domestic is not None:
            return None
        taxon_id, _ = self.by_name[best[0]]
        return Match(taxon_id, "fuzzy", float(best[1]) / 100.0)

    def _domestic_spans(self, words: list[str]) -> list[tuple[int, int]]:
        """(start, end) of the longest domesticated form starting at each word."""
        spans = []
        for start in range(len(words)):
            for size in range(min(self.domestic_words, len(words) - start), 1, -1):
                if " ".join(words[start : start + size]) in self.domestic:
                    spans.append((start, start + size))
                    break
        return spans

    def frame(self, texts: pl.Series, description: bool) -> pl.DataFrame:
        match = self.match_description if description else self.match_taxon
        memo = self._memo[description]
        rows = []
        for text in texts.drop_nulls().unique().to_list():
            # Matching is a pure function of the text and the reference this matcher was
            # built from, so a remembered answer is the answer (fuzzy matching dominates
            # the cost of a batch chunk otherwise).
            m = memo.get(text, _UNSEEN)
            if m is _UNSEEN:
                if len(memo) >= MEMO_LIMIT:
                    memo.clear()
                m = memo[text] = match(text)
            if m is not None:
                rows.append((text, m.taxon_id, m.via, m.confidence))
        return pl.DataFrame(rows, schema=MATCH_SCHEMA, orient="row")


_MATCHERS: dict[int, tuple[Reference, SpeciesMatcher]] = {}


def matcher_for(reference: Reference) -> SpeciesMatcher:
    """One matcher per loaded reference (building the lookups takes about a second)."""
    key = id(reference)
    cached = _MATCHERS.get(key)
    if cached is None or cached[0] is not reference:
        cached = (reference, SpeciesMatcher(reference))
        _MATCHERS.pop(key, None)
        _MATCHERS[key] = cached
        while len(_MATCHERS) > _MATCHERS_KEPT:
            _MATCHERS.pop(next(iter(_MATCHERS)))
    return cached[1]


def match_column(
    frame: pl.LazyFrame, column: str, reference: Reference, *, description: bool
) -> pl.LazyFrame:
    """Distinct texts of ``column`` with their match (lazy: computed when collected)."""
    matcher = matcher_for(reference)
    texts = frame.select(pl.col(column).alias("text")).unique()
    return texts.map_batches(
        lambda df: matcher.frame(df.get_column("text"), description),
        schema=MATCH_SCHEMA,
    )
