"""Model contributions in words an inspector understands.

LightGBM's ``pred_contrib`` gives each feature's push on the log-odds. The strongest
pushes *towards* risk become sentences built from the declaration's own values, e.g.
"importer had 2 offences recorded in the last 12 months" or "value per kg 80 % below
typical for HS 0508 from NG".
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from cites_risk.features.contract import D
from cites_risk.features.pairs import PAIR_KEYS
from cites_risk.models.risk_model import RiskModel

Row = dict[str, Any]
Sentence = Callable[[Row], str | None]

_ENTITY_WORDS = {
    "importer": "importer",
    "exporter": "exporter",
    "declarant": "declarant",
    "office": "this office",
    "origin": "origin country",
    "export": "export country",
    "hs4": "HS heading",
    "genus": "genus",
    "taxon": "declared taxon",
    "goods": "goods described this way",
    "goods_word": "goods of this kind",
    "route": "this origin-destination route",
}


def _pct(x: float) -> str:
    return f"{100 * x:.0f} %"


def _hit_rate_sentence(rate: float, inspected: float | None, whose: str) -> str:
    """``whose``: which inspections, e.g. "of importer", "with this port"."""
    return (
        f"{_pct(rate)} of earlier inspections {whose} found an offence "
        f"({inspected or 0:.0f} inspected)"
    )


def _history_sentence(key: str, stat: str) -> Sentence:
    who = _ENTITY_WORDS.get(key, key)

    def say(row: Row) -> str | None:
        v = row.get(f"{key}_{stat}")
        if v is None:
            return None
        if stat == "offences" and v > 0:
            return f"{who} linked to {v:.0f} earlier offence record(s)"
        if stat == "offences_decayed" and v > 0.05:
            return f"{who} has recent offence records (weighted count {v:.1f}, last year = 1)"
        if stat == "days_since_offence" and v == v:
            return f"{who}: last offence {v:.0f} days before this declaration"
        if stat == "hit_rate":
            return _hit_rate_sentence(v, row.get(f"{key}_inspected"), f"of {who}")
        if stat == "recent_hits" and v >= 0.05:
            return f"{who}: recent inspections found offences (weighted count {v:.1f})"
        if stat == "offence_rate" and v > 0:
            return f"{who} has a high offence rate per declaration ({v:.3f})"
        if stat == "prior_decl":
            count = math.expm1(v)
            return (
                f"{who} never declared before (newcomer)"
                if count < 0.5
                else f"{who} has few earlier declarations ({count:.0f})"
            )
        if stat == "newcomer" and v:
            return f"{who} never declared before (newcomer)"
        return None

    return say


_SIDE_WORDS = {
    D.IMPORTER: "importer",
    D.EXPORTER: "exporter",
    D.DECLARANT: "declarant",
    D.OFFICE: "office",
    D.ORIGIN: "origin country",
    D.HS: "HS code",
}
_PAIRS = {p.name: p for p in PAIR_KEYS}


def _pair_sentence(column: str, row: Row) -> str | None:
    """Sentences of the pair-of-keys history (``features/pairs.py``)."""
    for name, pair in _PAIRS.items():
        stat = column.removeprefix(f"{name}_")
        if stat == column:
            continue
        first = _SIDE_WORDS.get(pair.first, pair.first)
        who = f"this {first} with this {_SIDE_WORDS.get(pair.second, pair.second)}"
        v = row.get(column)
        if v is None:
            return None
        if stat == "hit_rate":
            return _hit_rate_sentence(v, row.get(f"{name}_inspected"), f"of {who}")
        if stat == "prior_decl":
            count = math.expm1(v)
            if count < 0.5:
                return f"first declaration of {who}"
            return f"{who}: {count:.0f} earlier declaration(s)"
        if stat == "inspected":
            return f"{who}: {v:.0f} earlier inspection(s)"
    return None


def _band_sentence(col: str, what: str) -> Sentence:
    def say(row: Row) -> str | None:
        dev, typical, value = row.get(f"{col}_dev"), row.get(f"{col}_typical"), row.get(col)
        if dev is None or typical is None or value is None:
            return None
        ratio = math.expm1(value) / max(math.expm1(typical), 1e-9) - 1
        direction = "below" if ratio < 0 else "above"
        return (
            f"{what} {abs(ratio) * 100:.0f} % {direction} typical for HS "
            f"{row.get('hs_heading') or '?'} from {row.get(D.ORIGIN) or '?'}"
        )

    return say


SENTENCES: dict[str, Sentence] = {
    "sp_appendix": lambda r: (
        f"declared species {r.get('sp_taxon')} is CITES Appendix {'I' * int(r['sp_appendix'])}"
        if r.get("sp_appendix")
        else None
    ),
    "sp_misdeclared": lambda r: (
        "goods description names a CITES-listed species the declared taxon does not"
        if r.get("sp_misdeclared")
        else None
    ),
    "sp_origin_in_range": lambda r: (
        f"origin {r.get(D.ORIGIN)} is outside the natural range of {r.get('sp_taxon')}"
        if r.get("sp_origin_in_range") is False
        else None
    ),
    "hs_cover": lambda r: (
        f"HS {r.get(D.HS)} is a known cover commodity for wildlife" if r.get("hs_cover") else None
    ),
    "hs_kingdom_mismatch": lambda r: (
        "HS code does not fit the kind of species declared"
        if r.get("hs_kingdom_mismatch")
        else None
    ),
    "listed_without_permit": lambda r: (
        "CITES-listed species declared without a permit number"
        if r.get("listed_without_permit")
        else None
    ),
    "app1_commercial": lambda r: (
        "Appendix I specimen declared for commercial purpose" if r.get("app1_commercial") else None
    ),
    "app1_wild": lambda r: "wild-caught Appendix I specimen" if r.get("app1_wild") else None,
    D.SOURCE: lambda r: f"CITES source code {r.get(D.SOURCE)}" if r.get(D.SOURCE) else None,
    D.PURPOSE: lambda r: f"CITES purpose code {r.get(D.PURPOSE)}" if r.get(D.PURPOSE) else None,
    D.ORIGIN: lambda r: f"country of origin {r.get(D.ORIGIN)}" if r.get(D.ORIGIN) else None,
    D.EXPORT: lambda r: f"exported from {r.get(D.EXPORT)}" if r.get(D.EXPORT) else None,
    D.OFFICE: lambda r: f"lodged at office {r.get(D.OFFICE)}" if r.get(D.OFFICE) else None,
    "transshipment": lambda r: (
        f"exported from {r.get(D.EXPORT)}, not from the origin {r.get(D.ORIGIN)}"
        if r.get("transshipment")
        else None
    ),
    "transit_offences_max": lambda r: (
        f"routed through a transit country with {r['transit_offences_max']:.0f} earlier offences"
        if r.get("transit_offences_max")
        else None
    ),
    "importer_partner_offences": lambda r: (
        f"importer's trading partners have {r['importer_partner_offences']:.0f} earlier offences"
        if r.get("importer_partner_offences")
        else None
    ),
    "exporter_partner_offences": lambda r: (
        f"exporter's trading partners have {r['exporter_partner_offences']:.0f} earlier offences"
        if r.get("exporter_partner_offences")
        else None
    ),
    "consignment_lines": lambda r: (
        f"consignment split into {r['consignment_lines']:.0f} declaration lines"
        if (r.get("consignment_lines") or 0) > 1
        else "single-line consignment"
    ),
    "log_quantity": lambda r: (
        f"quantity {math.expm1(r['log_quantity']):,.0f} {r.get(D.UNIT) or ''}".strip()
        if r.get("log_quantity") is not None
        else None
    ),
    "log_mass_kg": lambda r: (
        f"net mass {math.expm1(r['log_mass_kg']):,.1f} kg"
        if r.get("log_mass_kg") is not None
        else None
    ),
    "log_value_per_kg_dev": _band_sentence("log_value_per_kg", "value per kg"),
    "log_unit_value_dev": _band_sentence("log_unit_value", "unit value"),
    "hs_cites_category": lambda r: (
        f"HS {r.get(D.HS)} is a CITES-relevant commodity "
        f"({r['hs_cites_category'].replace('_', ' ')})"
        if r.get("hs_cites_category") not in (None, "none")
        else None
    ),
    "sp_match_via": lambda r: (
        f"species matched via {r['sp_match_via']}" if r.get("sp_match_via") != "none" else None
    ),
    "taxon_genus_only": lambda r: (
        f"declared only to genus level ({r.get(D.TAXON)})" if r.get("taxon_genus_only") else None
    ),
    "consignment_genera": lambda r: (
        f"consignment mixes {r['consignment_genera']:.0f} genera"
        if (r.get("consignment_genera") or 0) > 1
        else None
    ),
    "consignment_wild_share": lambda r: (
        f"{_pct(r['consignment_wild_share'])} of the consignment's lines are wild-caught"
        if r.get("consignment_wild_share")
        else None
    ),
    "consignment_genus_only_share": lambda r: (
        f"{_pct(r['consignment_genus_only_share'])} of the consignment's lines name only a genus"
        if r.get("consignment_genus_only_share")
        else None
    ),
    "wild_source": lambda r: (
        "declared as taken from the wild (source W)" if r.get("wild_source") else None
    ),
    "commercial_purpose": lambda r: (
        "declared for commercial trade (purpose T)"
        if r.get("commercial_purpose")
        else f"not declared for commercial trade (purpose {r.get(D.PURPOSE) or 'missing'})"
    ),
    "transport_mode": lambda r: (
        f"transport mode {r.get('transport_mode')}" if r.get("transport_mode") else None
    ),
}

#: Columns each sentence reads besides its own (the rest of a row is never materialised).
INPUTS: dict[str, tuple[str, ...]] = {
    "sp_appendix": ("sp_taxon",),
    "sp_origin_in_range": (D.ORIGIN, "sp_taxon"),
    "hs_cover": (D.HS,),
    "hs_cites_category": (D.HS,),
    "transshipment": (D.EXPORT, D.ORIGIN),
    "log_quantity": (D.UNIT,),
    "log_value_per_kg_dev": (
        "log_value_per_kg",
        "log_value_per_kg_typical",
        "hs_heading",
        D.ORIGIN,
    ),
    "log_unit_value_dev": ("log_unit_value", "log_unit_value_typical", "hs_heading", D.ORIGIN),
    "taxon_genus_only": (D.TAXON,),
    "commercial_purpose": (D.PURPOSE,),
}


def _inputs(column: str, available: set[str]) -> list[str]:
    wanted = [column, *INPUTS.get(column, ())]
    if column.endswith("_hit_rate"):
        wanted.append(column.removesuffix("_hit_rate") + "_inspected")
    return [c for c in dict.fromkeys(wanted) if c in available]


def sentence_for(column: str, row: Row) -> str:
    """The inspector's sentence for one feature of one row (a plain fallback if none fits)."""
    if column in SENTENCES:
        text = SENTENCES[column](row)
        if text:
            return text
    text = _pair_sentence(column, row)
    if text:
        return text
    for key in _ENTITY_WORDS:
        prefix = f"{key}_"
        if column.startswith(prefix):
            text = _history_sentence(key, column[len(prefix) :])(row)
            if text:
                return text
    if column.startswith("x_") and column.endswith(("_hit_rate", "_inspected")):
        base = column.removesuffix("_hit_rate").removesuffix("_inspected")
        label = base.removeprefix("x_").replace("_", " ")
        rate, n = row.get(f"{base}_hit_rate"), row.get(f"{base}_inspected")
        if rate is not None:
            return _hit_rate_sentence(rate, n, f"with this {label}")
    value = row.get(column)
    label = column.removeprefix("x_").replace("_", " ")
    if isinstance(value, float):
        value = f"{value:g}"
    return f"{label} {value}" if value is not None else f"{label} not declared"


@dataclass(frozen=True)
class Contribution:
    feature: str
    weight: float
    sentence: str


def explain(
    model: RiskModel, features: pl.DataFrame, top: int = 3, matrix: np.ndarray | None = None
) -> list[list[Contribution]]:
    """The ``top`` features that pushed each row's score up most, as sentences.

    ``matrix``: ``model.matrix(features)`` when the caller has it already (the scorer does).

    Vectorised for large batches: the top-k indices come from one ``argpartition`` over the
    contribution matrix; sentences are then built feature by feature for only the rows
    that need them, from only the columns each sentence reads, with identical inputs
    answered once.
    """
    if features.height == 0:
        return []
    contrib = model.contributions(features, matrix)[:, :-1]
    n, width = contrib.shape
    k = min(top, width)
    part = (
        np.argpartition(-contrib, k - 1, axis=1)[:, :k]
        if k < width
        else np.tile(np.arange(width), (n, 1))
    )
    picked = np.take_along_axis(contrib, part, axis=1)
    order = np.argsort(-picked, axis=1, kind="stable")
    top_idx = np.take_along_axis(part, order, axis=1)[:, :k]
    top_w = np.take_along_axis(picked, order, axis=1)[:, :k]
    positive = top_w > 0
    enriched = model.bands.transform(features)
    available = set(enriched.columns)
    sentences = np.empty(top_idx.shape, dtype=object)
    for j in np.unique(top_idx[positive]):
        mask = positive & (top_idx == j)
        rows = np.flatnonzero(mask.any(axis=1))
        column = model.columns[int(j)]
        cols = _inputs(column, available)
        sub = enriched.select(cols)[rows]
        memo: dict[tuple[Any, ...], str] = {}
        texts = []
        for values in sub.iter_rows():
            text = memo.get(values)
            if text is None:
                text = memo[values] = sentence_for(column, dict(zip(cols, values, strict=True)))
            texts.append(text)
        slots = np.argmax(mask[rows], axis=1)
        sentences[rows, slots] = texts
    out: list[list[Contribution]] = []
    for i in range(n):
        items = []
        for slot in range(k):
            if not positive[i, slot]:
                break
            items.append(
                Contribution(
                    model.columns[int(top_idx[i, slot])], float(top_w[i, slot]), sentences[i, slot]
                )
            )
        out.append(items)
    return out
