"""The pandas + LightGBM baseline of the scale benchmarks: batch scoring written by hand.

What a customs IT team would write without this project, for the same work as
``FastEngine`` + ``decide`` (issue #7 asks for the ratio between the two):

* **history** (:func:`key_history`, :func:`transit_offences`, :func:`partner_offences`,
  :func:`consignment`): each event type (declarations, inspection results, offence records)
  sorted by time once per partition, then per key and event type a grouped running sum and
  one ``pd.merge_asof(by=key)`` reading it strictly before each declaration. The 12 keys of
  ``HISTORY_KEYS`` with all their statistics, the 7 pairs of ``features/pairs.py``, transit
  countries, trading partners' offences, consignment lines and mix.
  ``benchmarks/bench_features.py`` checks :func:`key_history` equal to the project's polars
  code, ``bench_scoring`` all of them against ``Engine.features``;
* **row-local features** (:meth:`PandasScorer.features`): species matched on exact
  normalised names with pandas merges (taxon, its first two words, its genus; runs of up
  to four words of the goods description), HS lookups, logs of value and quantity, permit
  and code checks, calendar;
* **model** (:meth:`PandasScorer.predict`): the same saved model's category codes and
  unit-value bands applied with pandas, ``Booster.predict`` on the frame, Platt
  calibration, ``pred_contrib`` for the top share of the partition turned into its top-3
  feature names;
* **selection** (:func:`select`): per office and UTC day ``ceil(5 %)`` of the traffic, of
  which ``floor(2 %)`` drawn at random and the rest the highest scores (``groupby`` +
  ``rank``), the next 5 % by score in the yellow lane.

Left out compared with the engine: the fuzzy step of species matching (rapidfuzz over the
scientific names; the exact, genus, kind-noun and "not a taxon" rules are kept), the
starter risk profiles with their weights, forced lanes and runaway guard, and the model
reasons' sentences (only the names of the top features are given; the species sentence is
built). Every feature the model reads is computed; every one but the species columns of
fuzzy matches equals the engine's.

The reference tables, the model and the history are turned into pandas frames once,
before the first partition, as the engine loads its own once; everything derived from the
history (keys, running totals, pairs) is recomputed for each partition, as the engine does.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from cites_risk.features.history import DECAY_DAYS
from cites_risk.features.pairs import PAIR_KEYS
from cites_risk.features.pipeline import (
    COUNT,
    DEFAULT_HIT_RATE,
    GENUS_ONLY_WORDS,
    MISDECLARED_MIN_CONFIDENCE,
    NEWCOMER_KEYS,
    RECENT_DAYS,
    SMOOTHING,
    UNIT_SPELLINGS,
)
from cites_risk.features.species import APPENDIX_RANK, CONFIDENCE, KIND_NOUNS
from cites_risk.models.preprocess import BAND_KEYS

US_PER_DAY = 86_400e6
EPOCH_US = 946_684_800_000_000  # 2000-01-01 UTC
#: (name, has offence records). The name is also the key's column in every frame.
Key = tuple[str, bool]
#: Keys of ``HISTORY_KEYS`` then the pairs, in the project's order.
SCORING_KEYS: tuple[Key, ...] = (
    ("importer", True),
    ("exporter", True),
    ("declarant", True),
    ("office", True),
    ("origin", True),
    ("export", True),
    ("hs4", True),
    ("genus", True),
    ("taxon", True),
    ("goods", False),
    ("goods_word", False),
    ("route", True),
    *((p.name, False) for p in PAIR_KEYS),
)
PLACEHOLDER_EPITHETS = ("sp", "spp", "na", "species", "hybrid", "x")
NOT_A_TAXON = r"\b(?:non cites|non-cites|unknown|unidentified|not listed)\b"


def micros(times: pd.Series) -> pd.Series:
    return times.dt.as_unit("us").astype("int64")


def read_rows(files: Sequence[Path], offset: int, n: int) -> pd.DataFrame:
    """Rows ``offset`` to ``offset + n`` of Parquet files taken in order.

    Only the row groups holding them are read, as a reader of one partition would.
    """
    parts, start = [], 0
    for path in files:
        meta = pq.ParquetFile(path)
        for g in range(meta.metadata.num_row_groups):
            rows = meta.metadata.row_group(g).num_rows
            if start + rows > offset and start < offset + n:
                frame = meta.read_row_group(g).to_pandas()
                lo, hi = max(offset - start, 0), min(offset + n - start, rows)
                parts.append(frame.iloc[lo:hi])
            start += rows
        if start >= offset + n:
            break
    return pd.concat(parts, ignore_index=True)


# --- history --------------------------------------------------------------------------------


def _scatter(n: int, rows: np.ndarray, values: pd.Series, fill: float) -> np.ndarray:
    out = np.full(n, fill)
    out[rows] = values.to_numpy(dtype=float, na_value=fill)
    return out


def prior_totals(
    targets: pd.DataFrame,
    events: pd.DataFrame,
    key: str | None,
    values: Sequence[str],
    *,
    last: bool = False,
    inclusive: bool = False,
) -> dict[str, np.ndarray]:
    """Running totals of ``values`` over the events of the target's key before its time.

    ``targets`` (``t``, ``__row``: position of the target) and ``events`` (``t``, values)
    are both sorted by ``t``. Strictly before unless ``inclusive``; 0 where none, and where
    the target has no key. ``last``: also ``__last``, the time of the latest such event.
    """
    n = len(targets)
    if key is None:
        left, right = targets[["t", "__row"]], events[["t", *values]].copy()
        right[list(values)] = right[list(values)].cumsum()
    else:
        left = targets.loc[targets[key].notna(), [key, "t", "__row"]]
        right = events.loc[events[key].notna(), [key, "t", *values]].copy()
        right[list(values)] = right.groupby(key, sort=False)[list(values)].cumsum()
    if last:
        right["__last"] = right["t"]
    merged = pd.merge_asof(left, right, on="t", by=key, allow_exact_matches=inclusive)
    rows = merged["__row"].to_numpy()
    out = {v: _scatter(n, rows, merged[v], 0.0) for v in values}
    if last:
        out["__last"] = _scatter(n, rows, merged["__last"], np.nan)
    return out


def inspection_events(declarations: pd.DataFrame, inspections: pd.DataFrame) -> pd.DataFrame:
    """Per declaration, its first result (inspected; a hit if it was one) and, when a hit
    came only later, that hit: each known at the later of the result and the declaration."""
    lodged = declarations.reset_index(drop=True).rename_axis("lodging").reset_index()
    results = lodged[["lodging", "declaration_id", "t"]].merge(
        inspections[["declaration_id", "inspected_at", "outcome"]], on="declaration_id"
    )
    results["known"] = np.maximum(micros(results["inspected_at"]), results["t"])
    first = results.groupby("lodging")["known"].min().rename("first")
    first_hit = (
        results[results["outcome"] == "hit"].groupby("lodging")["known"].min().rename("first_hit")
    )
    times = pd.concat([first, first_hit], axis=1).reset_index()
    once = times.assign(t=times["first"], insp=1.0, hit=(times["first_hit"] == times["first"]))
    later = times[times["first_hit"] > times["first"]]
    later = later.assign(t=later["first_hit"], insp=0.0, hit=True)
    events = pd.concat([once, later])[["lodging", "t", "insp", "hit"]]
    events = lodged.drop(columns="t").merge(events, on="lodging").drop(columns="lodging")
    events["t"] = events["t"].astype(np.int64)
    events["hit"] = events["hit"].astype(float)
    events["hits_recent"] = events["hit"] * np.exp(
        (events["t"] - EPOCH_US) / US_PER_DAY / RECENT_DAYS
    )
    return events


def key_history(
    targets: pd.DataFrame,
    declarations: pd.DataFrame,
    offences: pd.DataFrame,
    inspections: pd.DataFrame,
    keys: Sequence[Key],
) -> pd.DataFrame:
    """``<key>_<stat>`` for every key, a row per target in order, and ``__prior_rate``.

    ``targets`` and ``declarations`` (the history, which may hold the targets too) have
    ``declaration_id``, ``t`` (µs) and a column per key; ``offences`` has ``t`` and a column
    per key with offence records; ``inspections`` are raw results. Everything counts
    strictly before the target's instant.
    """
    n = len(targets)
    left = targets.assign(__row=np.arange(n)).sort_values("t", kind="stable")
    decl = declarations.assign(n=1.0).sort_values("t", kind="stable")
    insp = inspection_events(declarations, inspections).sort_values("t", kind="stable")
    off = offences.assign(off=1.0, dec=np.exp((offences["t"] - EPOCH_US) / US_PER_DAY / DECAY_DAYS))
    off = off.sort_values("t", kind="stable")
    now = (targets["t"].to_numpy() - EPOCH_US) / US_PER_DAY
    seen = prior_totals(left, insp, None, ["insp", "hit"])
    prior = np.where(
        seen["insp"] > 0,
        (seen["hit"] + DEFAULT_HIT_RATE * SMOOTHING) / (seen["insp"] + SMOOTHING),
        DEFAULT_HIT_RATE,
    )
    out: dict[str, np.ndarray] = {"__prior_rate": prior}
    for key, has_offences in keys:
        count = prior_totals(left, decl, key, ["n"])["n"]
        res = prior_totals(left, insp, key, ["insp", "hit", "hits_recent"])
        if has_offences:
            o = prior_totals(left, off, key, ["off", "dec"], last=True)
        else:
            o = {"off": np.zeros(n), "dec": np.zeros(n), "__last": np.full(n, np.nan)}
        out[f"{key}_prior_decl"] = np.log1p(count)
        out[f"{key}_offences"] = o["off"]
        out[f"{key}_offences_decayed"] = o["dec"] / np.exp(now / DECAY_DAYS)
        out[f"{key}_days_since_offence"] = now - (o["__last"] - EPOCH_US) / US_PER_DAY
        out[f"{key}_inspected"] = res["insp"]
        out[f"{key}_hit_rate"] = (res["hit"] + prior * SMOOTHING) / (res["insp"] + SMOOTHING)
        out[f"{key}_offence_rate"] = o["off"] / (count + SMOOTHING)
        out[f"{key}_recent_hits"] = res["hits_recent"] / np.exp(now / RECENT_DAYS)
        if key in NEWCOMER_KEYS:
            out[f"{key}_newcomer"] = count == 0
    return pd.DataFrame(out, index=targets.index)


def _per_distinct(values: pd.Series, fn: Callable[[pd.Series], pd.Series]) -> pd.Series:
    """``fn`` computed once per distinct value: a million lines carry a few thousand texts."""
    codes, uniques = pd.factorize(values)
    mapped = fn(pd.Series(uniques, dtype="str")).to_numpy(dtype=object)
    result = mapped[codes]
    result[codes < 0] = None
    return pd.Series(result, index=values.index, dtype="str")


def _key_text(text: pd.Series) -> pd.Series:
    folded = text.str.lower().str.replace(r"[^\p{L}\p{N}]+", " ", regex=True).str.strip()
    return folded.where(folded.str.len() > 0)


def _first_word(text: pd.Series) -> pd.Series:
    return _key_text(text).str.replace(r" .*$", "", regex=True)


def _joined(first: pd.Series, second: pd.Series, sep: str) -> pd.Series:
    """``first<sep>second``; missing when either is (string + NaN is NaN)."""
    return first + sep + second


def _entity_keys(frame: pd.DataFrame, taxon: str) -> dict[str, pd.Series]:
    """The keys declarations and offence records share (``taxon``: the column naming it)."""
    return {
        "importer": frame["importer"],
        "exporter": frame["exporter"],
        "declarant": frame["declarant"],
        "office": frame["office"],
        "origin": frame["country_origin"],
        "export": frame["country_export"],
        "hs4": frame["hs_code"].str.slice(0, 4),
        "genus": _per_distinct(frame[taxon], _first_word),
        "taxon": _per_distinct(frame[taxon], _key_text),
        "route": _joined(frame["country_origin"], frame["country_destination"], ">"),
    }


def declaration_keys(frame: pd.DataFrame) -> pd.DataFrame:
    """``declaration_id``, ``t`` and a column per key of :data:`SCORING_KEYS`."""
    keys = pd.DataFrame(
        {
            "declaration_id": frame["declaration_id"],
            "t": micros(frame["declared_at"]),
            **_entity_keys(frame, "declared_taxon"),
            "goods": _per_distinct(frame["goods_description"], _key_text),
            "goods_word": _per_distinct(frame["goods_description"], _first_word),
        }
    )
    for pair in PAIR_KEYS:
        keys[pair.name] = _joined(frame[pair.first], frame[pair.second], "\x1f")
    return keys


def offence_keys(offences: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({"t": micros(offences["detected_at"]), **_entity_keys(offences, "taxon")})


def transit_offences(batch: pd.DataFrame, offences: pd.DataFrame) -> np.ndarray:
    """Most offences through any one transit country of the declaration, before it."""
    left = pd.DataFrame(
        {
            "country": batch["countries_transit"],
            "t": micros(batch["declared_at"]),
            "__target": np.arange(len(batch)),
        }
    ).explode("country", ignore_index=True)
    target = left["__target"].to_numpy()
    left["__row"] = np.arange(len(left))
    right = pd.DataFrame(
        {"country": offences["countries_transit"], "t": micros(offences["detected_at"])}
    ).explode("country")
    right["off"] = 1.0
    left = left.astype({"country": "str"}).sort_values("t", kind="stable")
    right = right.astype({"country": "str"}).sort_values("t", kind="stable")
    per_country = prior_totals(left, right, "country", ["off"])["off"]
    worst = pd.Series(per_country).groupby(target).max()
    return worst.reindex(np.arange(len(batch)), fill_value=0.0).to_numpy()


def partner_offences(
    batch: pd.DataFrame, declarations: pd.DataFrame, offences: pd.DataFrame
) -> dict[str, np.ndarray]:
    """Offences of the trading partners an importer (exporter) had before the declaration.

    An offence reaches the entity at the later of the offence and the pair's first trade;
    offences the entity itself took part in are not counted again.
    """
    traded = declarations.dropna(subset=["importer", "exporter"])
    pairs = traded.groupby(["importer", "exporter"], as_index=False)["declared_at"].min()
    pairs["first"] = micros(pairs["declared_at"])
    left = pd.DataFrame(
        {
            "importer": batch["importer"],
            "exporter": batch["exporter"],
            "t": micros(batch["declared_at"]),
            "__row": np.arange(len(batch)),
        }
    ).sort_values("t", kind="stable")
    out = {}
    for entity, partner in (("importer", "exporter"), ("exporter", "importer")):
        off = offences.dropna(subset=[partner])[[partner, entity, "detected_at"]]
        off = off.rename(columns={entity: "own"})
        events = pairs[[entity, partner, "first"]].merge(off, on=partner)
        events = events[events["own"].isna() | (events["own"] != events[entity])]
        events = pd.DataFrame(
            {
                entity: events[entity],
                "t": np.maximum(events["first"], micros(events["detected_at"])),
                "off": 1.0,
            }
        ).sort_values("t", kind="stable")
        out[f"{entity}_partner_offences"] = prior_totals(left, events, entity, ["off"])["off"]
    return out


def _genus_only(taxon: pd.Series) -> pd.Series:
    """One word, or a genus followed by "sp." and the like: identity unsure."""
    words = "|".join(w.replace(".", r"\.") for w in GENUS_ONLY_WORDS)
    text = taxon.str.strip().str.lower()
    return text.str.contains(rf"^[^ ]*$|^[^ ]* (?:{words})(?: |$)", regex=True).fillna(False)


def consignment(batch: pd.DataFrame, declarations: pd.DataFrame) -> pd.DataFrame:
    """Lines of the declaration's consignment up to its instant, and the mix of its instant.

    The declaration itself counts once, whether or not the history holds it already.
    """
    n = len(batch)
    t = micros(batch["declared_at"])
    left = pd.DataFrame(
        {"consignment_id": batch["consignment_id"], "t": t, "__row": np.arange(n)}
    ).sort_values("t", kind="stable")
    events = pd.DataFrame(
        {
            "consignment_id": declarations["consignment_id"],
            "t": micros(declarations["declared_at"]),
            "lines": 1.0,
        }
    ).sort_values("t", kind="stable")
    lines = prior_totals(left, events, "consignment_id", ["lines"], inclusive=True)["lines"]
    ids = ["declaration_id", "consignment_id"]
    known = declarations[ids].assign(__ht=micros(declarations["declared_at"]))
    own = batch[ids].assign(t=t, __row=np.arange(n)).dropna(subset=["consignment_id"])
    own = own.merge(known, on=ids)
    counted = np.zeros(n)
    counted[own.loc[own["__ht"] <= own["t"], "__row"].unique()] = 1.0

    def traits(frame: pd.DataFrame) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "genus": _per_distinct(frame["declared_taxon"], _first_word),
                "hs": frame["hs_code"],
                "wild": (frame["cites_source"] == "W").fillna(False).astype(float),
                "gonly": _genus_only(frame["declared_taxon"]).astype(float),
                "value": frame["declared_value"].clip(lower=0),
                "qty": frame["quantity"].clip(lower=0),
            },
            index=frame.index,
        )

    mine = traits(batch).assign(__row=np.arange(n))
    heads = pd.DataFrame(
        {"consignment_id": batch["consignment_id"], "t": t, "sid": batch["declaration_id"]}
    ).assign(__row=np.arange(n))
    history = declarations.assign(t=micros(declarations["declared_at"]))
    siblings = heads.dropna(subset=["consignment_id"]).merge(
        history, on=["consignment_id", "t"], suffixes=("", "_h")
    )
    siblings = siblings[siblings["declaration_id"] != siblings["sid"]]
    others = traits(siblings).assign(__row=siblings["__row"].to_numpy())
    mix = (
        pd.concat([mine, others], ignore_index=True)
        .groupby("__row")
        .agg(
            consignment_genera=("genus", "nunique"),
            consignment_commodities=("hs", "nunique"),
            consignment_wild_share=("wild", "mean"),
            consignment_genus_only_share=("gonly", "mean"),
            consignment_log_value=("value", "sum"),
            consignment_log_quantity=("qty", "sum"),
        )
        .sort_index()
    )
    mix["consignment_log_value"] = np.log1p(mix["consignment_log_value"])
    mix["consignment_log_quantity"] = np.log1p(mix["consignment_log_quantity"])
    mix = mix.astype(float)
    mix.insert(0, "consignment_lines", pd.Series(lines - counted + 1.0, index=mix.index))
    return mix.set_index(batch.index)


# --- species, commodity and the rest of the row -----------------------------------------------


def normalise(text: pd.Series) -> pd.Series:
    """Accents folded, lower case, runs of anything but letters and digits as one space."""
    ascii_ = text.str.normalize("NFKD").str.encode("ascii", "ignore").str.decode("ascii")
    return ascii_.str.lower().str.replace(r"[^a-z0-9]+", " ", regex=True).str.strip()


def _words(texts: pd.Series) -> pd.DataFrame:
    """One row per word: ``id`` (index of the text), ``pos``, ``word``."""
    words = normalise(texts).str.split(" ").explode()
    words = words[words.notna() & (words != "")]
    frame = pd.DataFrame({"id": words.index, "word": words.to_numpy()})
    frame["pos"] = frame.groupby("id").cumcount()
    return frame


@dataclass
class Lookups:
    """The reference tables as pandas lookups, built once."""

    names: pd.DataFrame  # name -> taxon_id, kind, via, confidence (most protective taxon)
    higher: pd.DataFrame  # genus / family / order name -> taxon_id, via, confidence
    listed_genera: pd.DataFrame  # genus with listed species -> a listed species
    species: pd.DataFrame  # taxon_id -> sp_* columns, appendix rank, kingdom
    ranges: pd.DataFrame  # (taxon_id, country) of the natural range
    cites_hs: dict[int, pd.DataFrame]  # prefix length -> prefix -> category, cover, kingdom
    hs_known: pd.Index
    purposes: list[str]
    sources: list[str]
    units: list[str]
    terms: list[str]
    term_units: list[str]

    @classmethod
    def build(cls, reference: Any) -> Lookups:
        species = reference.species.to_pandas()
        species["app"] = species["appendix"].map(APPENDIX_RANK)
        rank = species[["taxon_id", "rank"]].assign(order=species["app"].fillna(9))
        names = reference.species_names.to_pandas().merge(rank, on="taxon_id", how="left")
        names = names.sort_values(["name", "order", "taxon_id"]).drop_duplicates("name")
        level = names["rank"].fillna("SPECIES").str.lower()
        names["via"] = level.where(level.isin(["genus", "family"]), names["name_kind"])
        names["confidence"] = names["via"].map(CONFIDENCE)
        higher = species[species["rank"].isin(["GENUS", "FAMILY", "ORDER"])].copy()
        higher["name"] = normalise(higher["full_name"])
        higher["via"] = higher["rank"].str.lower()
        higher["confidence"] = higher["via"].map(CONFIDENCE).fillna(0.6)
        listed = species[(species["rank"] == "SPECIES") & species["app"].notna()]
        listed = listed.sort_values(["genus", "app", "taxon_id"]).drop_duplicates("genus")
        listed = listed.dropna(subset=["genus"]).assign(name=lambda f: normalise(f["genus"]))
        ranges = species[["taxon_id", "range_iso2"]].explode("range_iso2").dropna()
        ranges = ranges.drop_duplicates()
        codes = reference.cites_codes.to_pandas()
        term_units = reference.term_units.to_pandas()
        hs = reference.cites_hs.to_pandas()
        by_length = {
            length: hs[hs["hs_prefix"].str.len() == length].set_index("hs_prefix")
            for length in (6, 4, 2)
        }
        return cls(
            names=names[["name", "taxon_id", "name_kind", "via", "confidence"]],
            higher=higher.drop_duplicates("name", keep="last")[
                ["name", "taxon_id", "via", "confidence"]
            ],
            listed_genera=listed.drop_duplicates("name")[["name", "taxon_id"]],
            species=species.rename(
                columns={
                    "full_name": "sp_taxon",
                    "genus": "sp_genus",
                    "family": "sp_family",
                    "class_name": "sp_class",
                }
            )[["taxon_id", "sp_taxon", "app", "sp_genus", "sp_family", "sp_class", "kingdom"]],
            ranges=ranges.rename(columns={"range_iso2": "country_origin"}),
            cites_hs=by_length,
            hs_known=pd.Index(reference.hs_codes.get_column("hscode").to_list()),
            purposes=codes.loc[codes["field"] == "purpose", "code"].tolist(),
            sources=codes.loc[codes["field"] == "source", "code"].tolist(),
            units=codes.loc[codes["field"] == "unit", "code"].tolist(),
            terms=term_units["term"].unique().tolist(),
            term_units=(term_units["term"] + "|" + term_units["unit"].fillna(COUNT)).tolist(),
        )

    def match_taxa(self, texts: pd.Series) -> pd.DataFrame:
        """Declared taxa (distinct) -> taxon_id, via, confidence, or nothing."""
        words = _words(texts)
        words = words[~words["word"].isin(PLACEHOLDER_EPITHETS)]
        words["pos"] = words.groupby("id").cumcount()
        count = words.groupby("id").size()
        full = words.groupby("id")["word"].agg(" ".join)
        two = words[words["pos"] < 2].groupby("id")["word"].agg(" ".join)
        first = words[words["pos"] == 0].set_index("id")["word"]
        lone = first[count.reindex(first.index) == 1]
        names = self.names.set_index("name")[["taxon_id", "via", "confidence"]]
        tries = [
            names.reindex(full.to_numpy()).set_axis(full.index),
            names.reindex(two.to_numpy()).set_axis(two.index),
            self.higher.set_index("name")[["taxon_id", "via", "confidence"]]
            .reindex(first.to_numpy())
            .set_axis(first.index),
            self.listed_genera.set_index("name")
            .assign(via="genus", confidence=CONFIDENCE["genus"] * 0.8)
            .reindex(lone.to_numpy())
            .set_axis(lone.index),
        ]
        found = pd.concat([t.dropna(subset=["taxon_id"]) for t in tries])
        found = found[~found.index.duplicated(keep="first")]
        refused = normalise(texts).str.contains(NOT_A_TAXON, regex=True).fillna(True)
        found = found[~refused.reindex(found.index).to_numpy()]
        return found.assign(text=texts.reindex(found.index).to_numpy())

    def match_descriptions(self, texts: pd.Series) -> pd.DataFrame:
        """Goods descriptions (distinct) -> the longest, first run of words naming a taxon.

        One word counts only when the description names no other kind of organism.
        """
        words = _words(texts)
        other_kind = (
            words["word"].str.replace(r"s+$", "", regex=True).isin(KIND_NOUNS).groupby(words["id"])
        ).any()
        grams = []
        for size in range(4, 0, -1):
            gram, same = words["word"], pd.Series(True, index=words.index)
            for j in range(1, size):
                gram = gram + " " + words["word"].shift(-j)
                same &= words["id"].shift(-j) == words["id"]
            part = words.assign(gram=gram, size=size)[same & gram.notna()]
            part = part[part["gram"].str.len() >= 5]
            if size == 1:
                part = part[~other_kind.reindex(part["id"]).to_numpy()]
            grams.append(part)
        candidates = pd.concat(grams, ignore_index=True)
        by_name = candidates.merge(self.names, left_on="gram", right_on="name")
        by_name["confidence"] = by_name["name_kind"].map(CONFIDENCE) * np.where(
            by_name["size"] > 1, 0.9, 0.85
        )
        by_name["source"] = 0
        by_higher = candidates[candidates["size"] == 1].merge(
            self.higher[["name", "taxon_id"]], left_on="gram", right_on="name"
        )
        by_higher = by_higher.assign(confidence=0.5, source=1)
        hits = pd.concat([by_name, by_higher], ignore_index=True)
        hits = hits.sort_values(
            ["id", "size", "pos", "source"], ascending=[True, False, True, True]
        )
        hits = hits.drop_duplicates("id").set_index("id")
        return pd.DataFrame(
            {
                "text": texts.reindex(hits.index).to_numpy(),
                "taxon_id": hits["taxon_id"].to_numpy(),
                "via": "description",
                "confidence": hits["confidence"].to_numpy(),
            }
        )


def _distinct(column: pd.Series) -> pd.Series:
    return pd.Series(column.dropna().unique(), dtype="str")


def species_columns(batch: pd.DataFrame, lookups: Lookups, genus_key: pd.Series) -> pd.DataFrame:
    """``sp_*`` columns: the declared taxon's match, else the description's."""
    taxa = lookups.match_taxa(_distinct(batch["declared_taxon"]))
    described = lookups.match_descriptions(_distinct(batch["goods_description"]))
    t = batch[["declared_taxon"]].merge(taxa, left_on="declared_taxon", right_on="text", how="left")
    d = batch[["goods_description"]].merge(
        described, left_on="goods_description", right_on="text", how="left"
    )
    taxon_id = t["taxon_id"].fillna(d["taxon_id"])
    out = pd.DataFrame(
        {
            "sp_taxon_id": taxon_id.astype("Int64"),
            "sp_match_via": t["via"].fillna(d["via"]).fillna("none"),
            "sp_match_score": t["confidence"].fillna(d["confidence"]).fillna(0.0),
        }
    )
    info = out[["sp_taxon_id"]].merge(
        lookups.species, left_on="sp_taxon_id", right_on="taxon_id", how="left"
    )
    for c in ("sp_taxon", "sp_genus", "sp_family", "sp_class"):
        out[c] = info[c].to_numpy()
    listed = info["app"].notna().to_numpy()
    out["sp_appendix"] = info["app"].fillna(0).to_numpy()
    out["sp_listed"] = listed
    described_as = (
        d[["taxon_id"]].merge(lookups.species, on="taxon_id", how="left").reset_index(drop=True)
    )
    d_genus = _per_distinct(described_as["sp_taxon"], _first_word).reset_index(drop=True)
    key = genus_key.reset_index(drop=True)
    out["sp_misdeclared"] = (
        described_as["app"].notna()
        & (d["confidence"] >= MISDECLARED_MIN_CONFIDENCE)
        & (key.isna() | (key != d_genus)).fillna(True)
    ).to_numpy()
    origin = batch["country_origin"].reset_index(drop=True)
    has_range = out["sp_taxon_id"].isin(lookups.ranges["taxon_id"]).to_numpy()
    in_range = (
        pd.DataFrame({"taxon_id": out["sp_taxon_id"], "country_origin": origin})
        .merge(lookups.ranges.assign(hit=True), on=["taxon_id", "country_origin"], how="left")[
            "hit"
        ]
        .notna()
    )
    out["sp_origin_in_range"] = np.where(
        listed & origin.notna().to_numpy() & has_range, in_range.astype(float), np.nan
    )
    out["__kingdom"] = info["kingdom"].to_numpy()
    return out.set_index(batch.index)


def row_features(batch: pd.DataFrame, lookups: Lookups, genus_key: pd.Series) -> pd.DataFrame:
    """Everything the model reads that needs only the declaration and the reference."""
    f = species_columns(batch, lookups, genus_key)
    hs = batch["hs_code"]
    f["hs_chapter"] = hs.str.slice(0, 2)
    f["hs_heading"] = hs.str.slice(0, 4).where(hs.str.len() >= 4)
    category = pd.Series(np.nan, index=batch.index, dtype=object)
    cover = pd.Series(np.nan, index=batch.index, dtype=object)
    kingdom = pd.Series(np.nan, index=batch.index, dtype=object)
    # The longest listed prefix decides (0508 beats 05), as in the HS itself.
    for length in (6, 4, 2):
        table = lookups.cites_hs[length]
        prefix = hs.str.slice(0, length)
        category = category.fillna(prefix.map(table["category"]))
        cover = cover.fillna(prefix.map(table["cover"]))
        kingdom = kingdom.fillna(prefix.map(table["kingdom"]))
    f["hs_cites_category"] = category.fillna("none").astype("str")
    f["hs_cites_relevant"] = category.notna()
    f["hs_cover"] = cover.fillna(False).astype(bool)
    f["hs_kingdom_mismatch"] = (
        f["__kingdom"].notna() & kingdom.notna() & (f["__kingdom"] != kingdom)
    ).astype(bool)
    f["hs_known"] = hs.str.slice(0, 6).isin(lookups.hs_known)
    for c in ("office", "transport_mode", "country_origin", "country_export", "cites_purpose"):
        f[c] = batch[c]
    f["cites_source"], f["unit"] = batch["cites_source"], batch["unit"]
    f["transit_count"] = batch["countries_transit"].map(len, na_action="ignore").fillna(0)
    f["transshipment"] = (
        batch["country_export"].notna()
        & batch["country_origin"].notna()
        & (batch["country_export"] != batch["country_origin"])
    ).fillna(False)
    qty, mass, value = batch["quantity"], batch["net_mass_kg"], batch["declared_value"]

    def safe_log(x: pd.Series) -> pd.Series:
        return np.log1p(x.where(np.isfinite(x) & (x >= 0)))

    f["log_quantity"] = safe_log(qty)
    f["log_mass_kg"] = safe_log(mass)
    f["log_value"] = safe_log(value)
    f["log_unit_value"] = safe_log((value / qty).where(qty > 0))
    f["log_value_per_kg"] = safe_log((value / mass).where(mass > 0))
    unit = batch["unit"].str.upper().str.strip().replace(UNIT_SPELLINGS)
    f["unit_is_cites"] = (unit.isin(lookups.units) | (unit == COUNT)).fillna(False)
    term = batch["cites_term"].str.upper()
    valid_pair = (term + "|" + unit).isin(lookups.term_units).astype(float)
    f["term_unit_valid"] = valid_pair.where(term.notna() & term.isin(lookups.terms))
    purpose, source = batch["cites_purpose"], batch["cites_source"]
    app1 = f["sp_appendix"] == 1
    f["purpose_valid"] = purpose.isin(lookups.purposes)
    f["source_valid"] = source.isin(lookups.sources)
    f["app1_commercial"] = app1 & (purpose == "T").fillna(False)
    f["app1_wild"] = app1 & (source == "W").fillna(False)
    f["listed_without_permit"] = f["sp_listed"] & batch["permit_number"].isna()
    f["wild_source"] = (source == "W").fillna(False)
    f["commercial_purpose"] = (purpose == "T").fillna(False)
    f["taxon_genus_only"] = _genus_only(batch["declared_taxon"])
    f["day_of_week"] = batch["declared_at"].dt.dayofweek + 1
    f["month"] = batch["declared_at"].dt.month
    return f.drop(columns="__kingdom")


# --- model, selection ------------------------------------------------------------------------


@dataclass
class PandasScorer:
    """The model (booster, its category codes, bands, calibration) and the reference."""

    booster: Any
    columns: list[str]
    vocab: dict[str, dict[str, int]]
    bands: dict[str, list[pd.DataFrame]]
    global_bands: dict[str, tuple[float, float]]
    coef: float
    intercept: float
    lookups: Lookups

    @classmethod
    def load(cls, model_folder: Path, reference: Any) -> PandasScorer:
        from cites_risk.models.risk_model import RiskModel

        # Only to read the saved state (a team would read the same files); nothing of it
        # runs while scoring.
        model = RiskModel.load(model_folder)
        # A null key joins nothing in polars but matches null in a pandas merge.
        bands = {
            col: [
                levels.to_pandas().dropna(subset=list(keys))
                for keys, levels in zip(BAND_KEYS, frames, strict=True)
            ]
            for col, frames in model.bands.bands_.items()
        }
        return cls(
            booster=model.booster,
            columns=list(model.columns),
            vocab=model.categories.vocab_,
            bands=bands,
            global_bands=model.bands.global_,
            coef=model.calibrator.coef,
            intercept=model.calibrator.intercept,
            lookups=Lookups.build(reference),
        )

    def features(
        self,
        batch: pd.DataFrame,
        history: pd.DataFrame,
        offences: pd.DataFrame,
        inspections: pd.DataFrame,
    ) -> pd.DataFrame:
        """Model features of ``batch`` against the history, which holds ``batch`` too."""
        declarations = pd.concat([history, batch], ignore_index=True)
        keys = declaration_keys(declarations)
        own = keys.iloc[len(history) :].reset_index(drop=True)
        batch = batch.reset_index(drop=True)
        parts = [
            batch[["declaration_id", "declared_at", "hs_code", "importer", "exporter"]],
            row_features(batch, self.lookups, own["genus"]),
            key_history(own, keys, offence_keys(offences), inspections, SCORING_KEYS),
            pd.DataFrame(partner_offences(batch, declarations, offences)),
            consignment(batch, declarations),
        ]
        frame = pd.concat(parts, axis=1)
        frame["transit_offences_max"] = transit_offences(batch, offences)
        return frame

    def matrix(self, features: pd.DataFrame) -> pd.DataFrame:
        """The booster's inputs in its column order: category codes, band deviations."""
        cols: dict[str, Any] = {}
        for col in self.columns:
            if col in self.vocab:
                cols[col] = features[col].map(self.vocab[col]).fillna(0).astype(float)
            elif col.endswith("_dev"):
                cols[col] = self._deviation(features, col.removesuffix("_dev"))
            else:
                cols[col] = features[col].astype(float)
        return pd.DataFrame(cols, index=features.index)

    def _deviation(self, features: pd.DataFrame, col: str) -> pd.Series:
        pair, heading = self.bands[col]
        joined = features[["hs_heading", "country_origin", col]].merge(
            pair, on=["hs_heading", "country_origin"], how="left"
        )
        joined = joined.merge(heading, on="hs_heading", how="left")
        med_g, mad_g = self.global_bands[col]
        med = joined["__med_2"].fillna(joined["__med_1"]).fillna(med_g)
        mad = joined["__mad_2"].fillna(joined["__mad_1"]).fillna(mad_g).clip(lower=0.1)
        return ((joined[col] - med) / mad).set_axis(features.index)

    def predict(self, x: pd.DataFrame) -> np.ndarray:
        margin = np.asarray(self.booster.predict(x, raw_score=True))
        z = np.clip(self.coef * margin + self.intercept, -50, 50)
        return np.asarray(1.0 / (1.0 + np.exp(-z)))

    def top_features(
        self, x: pd.DataFrame, proba: np.ndarray, share: float, top: int = 3
    ) -> pd.Series:
        """Names of the ``top`` features pushing the score up, for the top ``share`` rows."""
        n = len(proba)
        k = math.ceil(share * n)
        if k == 0:
            return pd.Series(None, index=x.index, dtype=object)
        threshold = np.partition(proba, n - k)[n - k] if k < n else -np.inf
        rows = np.flatnonzero(proba >= threshold)
        contrib = np.asarray(self.booster.predict(x.iloc[rows], pred_contrib=True))[:, :-1]
        order = np.argsort(-contrib, axis=1)[:, :top]
        weights = np.take_along_axis(contrib, order, axis=1)
        names = np.asarray(self.columns, dtype=object)
        lists = np.full(n, None, dtype=object)
        for row, o, w in zip(rows, order, weights, strict=True):
            lists[row] = list(names[o[w > 0]])
        return pd.Series(lists, index=x.index)


def species_sentence(features: pd.DataFrame, batch: pd.DataFrame) -> pd.Series:
    """'declared taxon "x" matches Y, CITES Appendix II (match confidence 95%)'."""
    via = features["sp_match_via"]
    said = np.where(
        via == "description",
        'description "' + batch["goods_description"].fillna("") + '"',
        'declared taxon "' + batch["declared_taxon"].fillna("") + '"',
    )
    how = via.map({"fuzzy": "closely matches", "genus": "is in the genus of", "family": "is in"})
    roman = features["sp_appendix"].map({1: "I", 2: "II", 3: "III"})
    listing = ("CITES Appendix " + roman).fillna("not CITES-listed")
    pct = (features["sp_match_score"] * 100).round().astype(int).astype("str")
    quoted: pd.Series = pd.Series(said, index=features.index, dtype="str")
    sentence = (
        quoted
        + " "
        + how.fillna("matches")
        + " "
        + features["sp_taxon"]
        + ", "
        + listing
        + " (match confidence "
        + pct
        + "%)"
    )
    return sentence.where(features["sp_taxon"].notna())


def select(
    frame: pd.DataFrame,
    capacity_share: float = 0.05,
    random_share: float = 0.02,
    yellow_share: float = 0.05,
    seed: int = 0,
) -> pd.DataFrame:
    """``selected``, ``selected_by`` and ``lane`` per declaration, in ``frame``'s order.

    ``frame`` has ``declaration_id``, ``office``, ``declared_at`` and ``score``.
    """
    f = frame[["declaration_id", "office", "score"]].copy()
    f["day"] = frame["declared_at"].dt.floor("D")
    # Ties break on the declaration id, so the input order cannot change the outcome.
    f = f.sort_values("declaration_id", kind="stable")
    group = ["office", "day"]
    n = f.groupby(group)["score"].transform("size")
    capacity = np.ceil(n * capacity_share)
    random_n = np.minimum(np.floor(n * random_share), capacity)
    rank = f.groupby(group)["score"].rank(method="first", ascending=False)
    ranked = rank <= capacity - random_n
    draw = np.random.default_rng(seed).permutation(len(f)).astype(float)
    f["draw"] = np.where(ranked, np.nan, draw)
    random = f.groupby(group)["draw"].rank(method="first") <= random_n
    selected = ranked | random
    f["rest"] = f["score"].where(~selected & (f["score"] > 0))
    yellow = f.groupby(group)["rest"].rank(method="first", ascending=False) <= np.ceil(
        n * yellow_share
    )
    by = np.full(len(f), None, dtype=object)
    by[random.to_numpy()] = "random"
    by[ranked.to_numpy()] = "model"
    out = pd.DataFrame(
        {
            "selected": selected,
            "selected_by": by,
            "lane": np.where(selected, "red", np.where(yellow, "yellow", "green")),
        },
        index=f.index,
    )
    return out.sort_index()
