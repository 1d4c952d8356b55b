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

from cites_risk.features.contract import TIMESTAMP, D
from cites_risk.features.history import IDX, KEY, TIME, History, log1p, prior_totals


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


def _pair_key(index: int, pair: PairKey) -> pl.Expr:
    """``<pair number><sep><first><sep><second>``; null when either side is unknown."""
    first, second = pl.col(pair.first).cast(pl.String), pl.col(pair.second).cast(pl.String)
    return (
        pl.when(first.is_not_null() & second.is_not_null())
        .then(pl.concat_str([pl.lit(str(index)), first, second], separator=_SEP))
        .alias(KEY)
    )


def _stacked(frame: pl.LazyFrame, columns: list[pl.Expr]) -> pl.LazyFrame:
    return pl.concat(
        [frame.select(*columns, _pair_key(i, p)) for i, p in enumerate(PAIR_KEYS)],
        how="vertical",
    )


def pair_history(
    targets: pl.LazyFrame, history: History, prior: pl.LazyFrame, smoothing: float
) -> pl.LazyFrame:
    """Per pair: earlier declarations (log), earlier inspections, smoothed hit rate.

    ``targets`` has ``__idx``, ``__t`` and the pairs' columns; ``prior`` has ``__idx`` and
    ``__prior_rate``, the overall hit rate known before each declaration, which a pair's
    rate is shrunk towards with ``smoothing`` pseudo-inspections. All pairs share one
    :func:`prior_totals` pass: a declaration appears once per pair, its index spread as
    ``idx * n_pairs + pair``, and is folded back into one row afterwards.
    """
    n = len(PAIR_KEYS)
    stacked = pl.concat(
        [
            targets.select(
                (pl.col(IDX).cast(pl.UInt64) * n + i).alias(IDX),
                pl.col(TIME).cast(TIMESTAMP),
                _pair_key(i, p),
            )
            for i, p in enumerate(PAIR_KEYS)
        ],
        how="vertical",
    )
    zero = pl.lit(0.0)
    declared = _stacked(
        history.declarations,
        [
            pl.col(D.DECLARED_AT).cast(TIMESTAMP).alias(TIME),
            pl.lit(1.0).alias("n"),
            zero.alias("insp"),
            zero.alias("hits"),
        ],
    )
    inspected = _stacked(
        history.inspected,
        [
            pl.col(TIME).cast(TIMESTAMP),
            zero.alias("n"),
            pl.lit(1.0).alias("insp"),
            (pl.col("outcome") == "hit").cast(pl.Float64).alias("hits"),
        ],
    )
    totals = prior_totals(
        stacked, pl.concat([declared, inspected], how="vertical"), ["n", "insp", "hits"]
    ).with_columns(
        (pl.col(IDX).cast(pl.UInt64) // n).alias("__row"),
        (pl.col(IDX).cast(pl.UInt64) % n).alias("__pair"),
    )
    out = targets.select(IDX, pl.col(IDX).cast(pl.UInt64).alias("__row")).join(
        prior.select(IDX, "__prior_rate"), on=IDX, how="left"
    )
    rate_prior = pl.col("__prior_rate") * smoothing
    for i, pair in enumerate(PAIR_KEYS):
        one = totals.filter(pl.col("__pair") == i).select("__row", "n", "insp", "hits")
        insp = pl.col("insp").fill_null(0.0)
        out = (
            out.join(one, on="__row", how="left")
            .with_columns(
                log1p(pl.col("n").fill_null(0.0)).alias(f"{pair.name}_prior_decl"),
                insp.alias(f"{pair.name}_inspected"),
                ((pl.col("hits").fill_null(0.0) + rate_prior) / (insp + smoothing)).alias(
                    f"{pair.name}_hit_rate"
                ),
            )
            .drop("n", "insp", "hits")
        )
    return out.drop("__row", "__prior_rate")
