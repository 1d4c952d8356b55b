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
            n = row.get(f"{key}_inspected") or 0
            return f"{_pct(v)} of earlier inspections of {who} found an offence ({n:.0f} inspected)"
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
}


def sentence_for(column: str, row: Row) -> str:
    """The inspector's sentence for one feature of one row (a plain fallback if none fits)."""
    if column in SENTENCES:
        text = SENTENCES[column](row)
        if text:
            return text
    for key in _ENTITY_WORDS:
        prefix = f"{key}_"
        if column.startswith(prefix):
            text = _history_sentence(key, column[len(prefix) :])(row)
            if text:
                return text
    value = row.get(column)
    label = column.removeprefix("x_").replace("_", " ")
    return f"{label} = {value}" if value is not None else f"{label} not declared"


@dataclass(frozen=True)
class Contribution:
    feature: str
    weight: float
    sentence: str


def explain(model: RiskModel, features: pl.DataFrame, top: int = 3) -> list[list[Contribution]]:
    """The ``top`` features that pushed each row's score up most, as sentences."""
    if features.height == 0:
        return []
    contrib = model.contributions(features)[:, :-1]
    enriched = model.bands.transform(features)
    rows = enriched.to_dicts()
    out = []
    order = np.argsort(-contrib, axis=1)[:, :top]
    for i, row in enumerate(rows):
        items = []
        for j in order[i]:
            w = float(contrib[i, j])
            if w <= 0:
                break
            col = model.columns[j]
            items.append(Contribution(col, w, sentence_for(col, row)))
        out.append(items)
    return out
