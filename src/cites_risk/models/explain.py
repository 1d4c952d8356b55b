"""Model contributions in words an inspector understands.

LightGBM's ``pred_contrib`` gives each feature's push on the log-odds. The strongest
pushes *towards* risk become sentences built from the declaration's own values, e.g.
"importer had 2 offences recorded in the last 12 months" or "value per kg 80 % below
typical for HS 0508 from NG".
"""

from __future__ import annotations

import calendar
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from cites_risk.features.contract import D
from cites_risk.features.history import DECAY_DAYS
from cites_risk.features.pairs import PAIR_KEYS
from cites_risk.features.pipeline import RECENT_DAYS
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
    # Small rates keep a digit: a smoothed 0.4 % is not "0 %", and no rate is exactly 0.
    if 0 < x < 0.001:
        return "under 0.1 %"
    return f"{100 * x:.1f} %" if 0 < x < 0.01 else f"{100 * x:.0f} %"


def _count(n: float, one: str, many: str | None = None) -> str:
    """``n`` as a whole number with its noun: "1 earlier inspection", "5,781 ...s"."""
    k = round(n)
    return f"{k:,} {one if k == 1 else many or one + 's'}"


def _amount(x: float) -> str:
    """A declared amount back from ``log1p``: as declared when the round trip kept it (it
    does within float noise), else rounded and said to be so."""
    text = f"{x:,.0f}" if x >= 100 else f"{x:.3g}"
    exact = abs(float(text.replace(",", "")) - x) <= 1e-6 * max(1.0, x)
    return text if exact else f"about {text}"


def _hit_rate_sentence(rate: float, inspected: float | None, whose: str) -> str:
    """``whose``: which inspections, e.g. "of importer", "with this port".

    ``rate`` is smoothed toward the overall hit rate (``features.history.smoothed_rate``) and
    the hit count itself is not a feature, so the rate is not a share of the inspections: it
    reads as an estimate with the evidence behind it. Without inspections it *is* the overall
    rate, which says nothing about the key.
    """
    if inspected is None:
        return f"estimated hit rate {_pct(rate)} in earlier inspections {whose}"
    if round(inspected) == 0:
        return f"no earlier inspections {whose} (overall hit rate {_pct(rate)} assumed)"
    return f"estimated hit rate {_pct(rate)} from {_count(inspected, 'earlier inspection')} {whose}"


#: Below this many earlier declarations a record is "only" a few.
FEW_DECLARATIONS = 10


def _declarations(log_count: float, who: str) -> str:
    """``prior_decl`` is ``log1p`` of the count."""
    count = math.expm1(log_count)
    only = "only " if count < FEW_DECLARATIONS else ""
    return f"{who}: {only}{_count(count, 'earlier declaration')}"


def _inspections(n: float, who: str) -> str:
    return (
        f"{who}: never inspected before"
        if round(n) == 0
        else f"{who}: {_count(n, 'earlier inspection')}"
    )


#: Decayed counts below this are "none recent": one event weighs exp(-age / tau), so every
#: event is older than tau * ln(1 / 0.05), about 3 tau.
_FAINT = 0.05


def _within(tau_days: float) -> str:
    """The span a decayed count under ``_FAINT`` has no event in, in words."""
    days = -tau_days * math.log(_FAINT)
    return f"{days / 365:.0f} years" if days >= 730 else f"{days / 30.4:.0f} months"


def _history_sentence(key: str, stat: str) -> Sentence:
    who = _ENTITY_WORDS.get(key, key)

    def say(row: Row) -> str | None:
        v = row.get(f"{key}_{stat}")
        if stat == "days_since_offence":
            # Null (or NaN): no offence on record, which the model may weigh too.
            if v is None or v != v:
                return f"{who}: no earlier offence on record"
            return f"{who}: last offence {v:.0f} days before this declaration"
        if v is None:
            return None
        if stat == "offences":
            return (
                f"{who} linked to {_count(v, 'earlier offence record')}"
                if v > 0
                else f"{who}: no earlier offence records"
            )
        if stat == "offences_decayed":
            if v < _FAINT:
                return f"{who}: no offence records in about the last {_within(DECAY_DAYS)}"
            return (
                f"{who} has recent offence records (weighted count {v:.1f}: an offence today "
                f"counts 1, one {DECAY_DAYS:.0f} days earlier {math.exp(-1):.2f})"
            )
        if stat == "hit_rate":
            return _hit_rate_sentence(v, row.get(f"{key}_inspected"), f"of {who}")
        if stat == "inspected":
            return _inspections(v, who)
        if stat == "recent_hits":
            if v < _FAINT:
                span = _within(RECENT_DAYS)
                return f"{who}: no inspection found an offence in about the last {span}"
            return (
                f"{who}: recent inspections found offences (weighted count {v:.1f}: a hit today "
                f"counts 1, one {RECENT_DAYS:.0f} days earlier {math.exp(-1):.2f})"
            )
        if stat == "offence_rate":
            # Offences per declaration, smoothed like the hit rate: an estimate, not "high".
            return (
                f"{who}: estimated {100 * v:.2g} offence records per 100 declarations"
                if v > 0
                else f"{who}: no earlier offence records"
            )
        if stat == "prior_decl":
            if math.expm1(v) < 0.5:
                return f"{who} never declared before (newcomer)"
            return _declarations(v, who)
        if stat == "newcomer":
            return f"{who} never declared before (newcomer)" if v else f"{who} has declared before"
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
            if math.expm1(v) < 0.5:
                return f"first declaration of {who}"
            return _declarations(v, who)
        if stat == "inspected":
            return _inspections(v, who)
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


def _flag(column: str, yes: str, no: str, unknown: str | None = None) -> Sentence:
    """A yes/no feature: the model may push on either answer, so both read as sentences."""

    def say(row: Row) -> str | None:
        v = row.get(column)
        return unknown if v is None else yes if v else no

    return say


def _named(column: str, what: str, missing: str) -> Sentence:
    """A code the declaration carries (or a lookup found), or what its absence means."""
    return lambda r: f"{what} {r[column]}" if r.get(column) else missing


def _logged(column: str, what: str, missing: str, unit: str = "") -> Sentence:
    """``log1p`` features, read back in the declared units (null: not declared)."""

    def say(row: Row) -> str | None:
        v = row.get(column)
        if v is None:
            return missing
        return f"{what} {_amount(math.expm1(v))} {unit}".strip()

    return say


def _consignment_quantity(row: Row) -> str | None:
    total = row.get("consignment_log_quantity")
    if total is None:
        return None
    amount = _amount(math.expm1(total))
    # The lines' units may differ; the sum has this line's unit only when it is all this line.
    unit = row.get(D.UNIT)
    if unit and row.get("log_quantity") is not None and abs(row["log_quantity"] - total) < 1e-9:
        return f"the consignment totals {amount} {unit}"
    return f"quantities declared on the consignment's lines add up to {amount}"


def _counted(column: str, some: str, none: str, *, above: float = 0) -> Sentence:
    """A count: ``some`` (formatted with it) when above ``above``, else ``none``. One line,
    genus or HS code is no mix: ``above=1``."""
    return lambda r: some.format(r[column]) if (r.get(column) or 0) > above else none


SENTENCES: dict[str, Sentence] = {
    "sp_appendix": lambda r: (
        f"declared species {r.get('sp_taxon')} is CITES Appendix {'I' * int(r['sp_appendix'])}"
        if r.get("sp_appendix")
        else "declared species not known to be CITES-listed"
    ),
    "sp_listed": _flag(
        "sp_listed",
        "declared species is CITES-listed",
        "declared species not known to be CITES-listed",
    ),
    "sp_misdeclared": _flag(
        "sp_misdeclared",
        "goods description names a CITES-listed species the declared taxon does not",
        "goods description names no CITES-listed species other than the declared one",
    ),
    "sp_origin_in_range": lambda r: (
        "natural range of the species unknown, or origin not declared"
        if r.get("sp_origin_in_range") is None
        else f"origin {r.get(D.ORIGIN)} is "
        f"{'inside' if r['sp_origin_in_range'] else 'outside'} the natural range of "
        f"{r.get('sp_taxon')}"
    ),
    "sp_match_score": lambda r: (
        f"species identified with {_pct(r['sp_match_score'])} name-match confidence"
        if r.get("sp_match_score")
        else "species not identified from the declaration"
    ),
    "sp_match_via": lambda r: (
        f"species matched via {r['sp_match_via']}"
        if r.get("sp_match_via") not in (None, "none")
        else "species not identified from the declaration"
    ),
    "sp_genus": _named("sp_genus", "genus", "genus unknown (species not identified)"),
    "sp_family": _named("sp_family", "family", "family unknown (species not identified)"),
    "sp_class": _named("sp_class", "class", "class unknown (species not identified)"),
    "hs_cover": lambda r: (
        f"HS {r.get(D.HS)} is a known cover commodity for wildlife"
        if r.get("hs_cover")
        else "HS code is not a known cover commodity for wildlife"
    ),
    "hs_kingdom_mismatch": _flag(
        "hs_kingdom_mismatch",
        "HS code does not fit the kind of species declared",
        "HS code does not contradict the kind of species declared",
    ),
    "hs_cites_relevant": _flag(
        "hs_cites_relevant",
        "HS code is a CITES-relevant commodity",
        "HS code is not a CITES-relevant commodity",
    ),
    "hs_known": _flag(
        "hs_known",
        "HS code is in the tariff nomenclature",
        "HS code not in the tariff nomenclature",
    ),
    "hs_chapter": _named("hs_chapter", "HS chapter", "HS code not declared"),
    "hs_heading": _named("hs_heading", "HS heading", "HS code not declared"),
    "listed_without_permit": _flag(
        "listed_without_permit",
        "CITES-listed species declared without a permit number",
        "no CITES-listed species without a permit number",
    ),
    "app1_commercial": _flag(
        "app1_commercial",
        "Appendix I specimen declared for commercial purpose",
        "not an Appendix I specimen for commercial purpose",
    ),
    "app1_wild": _flag(
        "app1_wild", "wild-caught Appendix I specimen", "not a wild-caught Appendix I specimen"
    ),
    "unit_is_cites": _flag(
        "unit_is_cites", "unit of quantity is a CITES unit", "unit of quantity is not a CITES unit"
    ),
    "term_unit_valid": _flag(
        "term_unit_valid",
        "CITES term and unit of quantity fit together",
        "CITES term and unit of quantity do not fit together",
        "no CITES term declared, or one the term-unit table does not know",
    ),
    "purpose_valid": _flag(
        "purpose_valid", "valid CITES purpose code", "CITES purpose code missing or not valid"
    ),
    "source_valid": _flag(
        "source_valid", "valid CITES source code", "CITES source code missing or not valid"
    ),
    D.SOURCE: _named(D.SOURCE, "CITES source code", "CITES source code not declared"),
    D.PURPOSE: _named(D.PURPOSE, "CITES purpose code", "CITES purpose code not declared"),
    D.ORIGIN: _named(D.ORIGIN, "country of origin", "country of origin not declared"),
    D.EXPORT: _named(D.EXPORT, "exported from", "export country not declared"),
    D.OFFICE: _named(D.OFFICE, "lodged at office", "office not declared"),
    D.UNIT: _named(D.UNIT, "unit of quantity", "unit of quantity not declared"),
    D.TRANSPORT: _named(D.TRANSPORT, "transport mode", "transport mode not declared"),
    "transshipment": lambda r: (
        f"exported from {r.get(D.EXPORT)}, not from the origin {r.get(D.ORIGIN)}"
        if r.get("transshipment")
        else "exported from the country of origin (or either country not declared)"
    ),
    "transit_count": lambda r: (
        f"routed through {_count(r['transit_count'], 'transit country', 'transit countries')}"
        if r.get("transit_count")
        else "no transit country declared"
    ),
    "transit_offences_max": _counted(
        "transit_offences_max",
        "routed through a transit country with {:.0f} earlier offences",
        "no transit country with earlier offences",
    ),
    "importer_partner_offences": _counted(
        "importer_partner_offences",
        "importer's trading partners have {:.0f} earlier offences",
        "importer's trading partners have no earlier offences",
    ),
    "exporter_partner_offences": _counted(
        "exporter_partner_offences",
        "exporter's trading partners have {:.0f} earlier offences",
        "exporter's trading partners have no earlier offences",
    ),
    "consignment_lines": _counted(
        "consignment_lines",
        "consignment split into {:.0f} declaration lines",
        "single-line consignment",
        above=1,
    ),
    "log_quantity": lambda r: (
        f"quantity {_amount(math.expm1(r['log_quantity']))} {r.get(D.UNIT) or ''}".strip()
        if r.get("log_quantity") is not None
        else "quantity not declared"
    ),
    "log_mass_kg": _logged("log_mass_kg", "net mass", "no net mass declared", "kg"),
    "log_value": _logged("log_value", "declared value", "no value declared"),
    "log_unit_value": _logged(
        "log_unit_value",
        "declared value per unit",
        "no value per unit (value or quantity missing)",
    ),
    "log_value_per_kg": _logged(
        "log_value_per_kg",
        "declared value per kg",
        "no value per kg (value or mass missing)",
    ),
    "consignment_log_value": _logged(
        "consignment_log_value",
        "declared values of the consignment's lines add up to",
        "no value declared for the consignment",
    ),
    "consignment_log_quantity": _consignment_quantity,
    "log_value_per_kg_dev": _band_sentence("log_value_per_kg", "value per kg"),
    "log_unit_value_dev": _band_sentence("log_unit_value", "unit value"),
    "hs_cites_category": lambda r: (
        f"HS {r.get(D.HS)} is a CITES-relevant commodity "
        f"({r['hs_cites_category'].replace('_', ' ')})"
        if r.get("hs_cites_category") not in (None, "none")
        else "HS code is not a CITES-relevant commodity"
    ),
    "taxon_genus_only": lambda r: (
        f"declared only to genus level ({r.get(D.TAXON)})"
        if r.get("taxon_genus_only")
        else "declared taxon is not just a genus"
    ),
    "consignment_genera": _counted(
        "consignment_genera",
        "consignment mixes {:.0f} genera",
        "consignment does not mix genera",
        above=1,
    ),
    "consignment_commodities": _counted(
        "consignment_commodities",
        "consignment mixes {:.0f} HS codes",
        "consignment does not mix HS codes",
        above=1,
    ),
    "consignment_wild_share": lambda r: (
        f"{_pct(r['consignment_wild_share'])} of the consignment's lines are wild-caught"
        if r.get("consignment_wild_share")
        else "none of the consignment's lines is declared wild-caught"
    ),
    "consignment_genus_only_share": lambda r: (
        f"{_pct(r['consignment_genus_only_share'])} of the consignment's lines name only a genus"
        if r.get("consignment_genus_only_share")
        else "no line of the consignment names only a genus"
    ),
    "wild_source": _flag(
        "wild_source",
        "declared as taken from the wild (source W)",
        "not declared as taken from the wild (source W)",
    ),
    "commercial_purpose": lambda r: (
        "declared for commercial trade (purpose T)"
        if r.get("commercial_purpose")
        else f"not declared for commercial trade (purpose {r.get(D.PURPOSE) or 'missing'})"
    ),
    "day_of_week": lambda r: (
        f"declared on a {calendar.day_name[int(r['day_of_week']) - 1]}"
        if r.get("day_of_week")
        else None
    ),
    "month": lambda r: (
        f"declared in {calendar.month_name[int(r['month'])]}" if r.get("month") else None
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
    "consignment_log_quantity": ("log_quantity", D.UNIT),
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
