"""History of pairs of keys: what an importer did in one commodity, a declarant for one importer.

A single key's record mixes everything the key touched: an importer clean in frogs and
caught twice in snakes has one middling rate. The pair keeps them apart, and a pair seen
for the first time (a new trade relation, an importer's first shipment of a commodity) is
a flag in itself. These are the crossed keys of the customs-selection literature (importer
x HS code, declarant x importer, origin x HS code ...). As everywhere in
``build_features``, only history strictly before the declaration counts.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from cites_risk.features.contract import D
from cites_risk.features.history import HistoryKey


@dataclass(frozen=True)
class PairKey:
    """Two declaration columns whose combination has its own history."""

    name: str
    first: str
    second: str


PAIR_KEYS: tuple[PairKey, ...] = (
    PairKey("importer_hs", D.IMPORTER, D.HS),
    PairKey("declarant_importer", D.DECLARANT, D.IMPORTER),
    PairKey("importer_office", D.IMPORTER, D.OFFICE),
    PairKey("exporter_importer", D.EXPORTER, D.IMPORTER),
    PairKey("origin_hs", D.ORIGIN, D.HS),
    PairKey("office_hs", D.OFFICE, D.HS),
    PairKey("declarant_hs", D.DECLARANT, D.HS),
)
PAIR_STATS = ("prior_decl", "inspected", "hit_rate")
PAIR_COLUMNS: dict[str, pl.DataType] = {
    f"{p.name}_{s}": pl.Float64() for p in PAIR_KEYS for s in PAIR_STATS
}
_SEP = "\x1f"


def _pair_key(pair: PairKey) -> pl.Expr:
    """``<first><sep><second>``; null when either side is unknown."""
    first, second = pl.col(pair.first).cast(pl.String), pl.col(pair.second).cast(pl.String)
    return pl.when(first.is_not_null() & second.is_not_null()).then(
        pl.concat_str([first, second], separator=_SEP)
    )


#: Pairs are tracked like any single key (one point-in-time stream each); no offence
#: record names a pair, so only declarations and inspection results feed them.
PAIR_HISTORY_KEYS: tuple[HistoryKey, ...] = tuple(
    HistoryKey(p.name, _pair_key(p), None) for p in PAIR_KEYS
)
