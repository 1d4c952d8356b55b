"""Point-in-time history: what was known about a key strictly before a declaration.

Every history feature reduces to one shape: a stream of events (key, time, values) and,
for each declaration, the running totals of that key's events strictly earlier than the
declaration. That is one sorted cumulative sum plus one as-of join per key, which is what
makes a million declarations against a large history take seconds, not minutes.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import polars as pl

from cites_risk.features.contract import (
    DECLARATION,
    INSPECTION,
    OFFENCE,
    TIMESTAMP,
    D,
    I,
    Outcome,
    empty,
)

IDX = "__idx"
TIME = "__t"
KEY = "__key"
#: Decay constant of the time-decayed offence count: an offence a year ago counts 1/e.
DECAY_DAYS = 365.0
_EPOCH = pl.lit(946_684_800_000_000, pl.Int64)  # 2000-01-01 in microseconds
_US_PER_DAY = 86_400_000_000


@dataclass(frozen=True)
class History:
    """What the engine knew before scoring: declarations, offences and inspection results.

    The caller decides what each organisation may see (consent) before building this.
    ``declarations`` must hold the declarations being scored as well when they have been
    lodged, so that consignment siblings are visible to each other.
    """

    declarations: pl.LazyFrame
    offences: pl.LazyFrame
    inspections: pl.LazyFrame

    @functools.cached_property
    def inspected(self) -> pl.LazyFrame:
        """Inspection results joined to their declarations, shared by every history key."""
        return inspected_declarations(self).cache()

    @classmethod
    def empty(cls) -> History:
        return cls(
            declarations=empty(DECLARATION).lazy(),
            offences=empty(OFFENCE).lazy(),
            inspections=empty(INSPECTION).lazy(),
        )


def days_since_epoch(expr: pl.Expr) -> pl.Expr:
    return (expr.cast(TIMESTAMP).dt.epoch("us") - _EPOCH).cast(pl.Float64) / _US_PER_DAY


def decay_weight(time: pl.Expr) -> pl.Expr:
    """exp(t / tau): running sums of it, times exp(-t_now / tau), give decayed counts."""
    return (days_since_epoch(time) / DECAY_DAYS).exp()


def prior_totals(
    targets: pl.LazyFrame,
    events: pl.LazyFrame,
    values: list[str],
    *,
    last_time: bool = False,
    inclusive: bool = False,
) -> pl.LazyFrame:
    """Running totals of ``values`` over events of the same ``__key`` strictly before ``__t``.

    ``targets`` has ``__idx``, ``__key``, ``__t``; ``events`` has ``__key``, ``__t`` and the
    value columns. Returns one row per target, sorted by ``__idx``, with the totals (0 where
    there were none) and, with ``last_time``, ``__last``: the latest earlier event time whose
    ``__mark`` column is true. ``inclusive`` counts events at the same instant too.

    Targets and events go into one stream sorted by (key, time, order); a target ordered
    before the events of its instant sees only earlier ones (after them: inclusive). A running
    sum restarted at each key then is the answer, with no join. Keys are hashed to 64 bits
    for the sort; a collision between two keys is about as likely as a meteorite.
    """
    order_target = 2 if inclusive else 0
    t = targets.select(
        pl.col(KEY).hash(seed=7).alias("__h"),
        pl.col(KEY).is_null().alias("__nokey"),
        pl.col(TIME).cast(TIMESTAMP),
        pl.col(IDX).cast(pl.UInt32),
        pl.lit(order_target, pl.Int8).alias("__order"),
        *(pl.lit(0.0).alias(v) for v in values),
        *([pl.lit(False).alias("__mark")] if last_time else []),
    )
    e = events.filter(pl.col(KEY).is_not_null() & pl.col(TIME).is_not_null()).select(
        pl.col(KEY).hash(seed=7).alias("__h"),
        pl.lit(False).alias("__nokey"),
        pl.col(TIME).cast(TIMESTAMP),
        pl.lit(None, pl.UInt32).alias(IDX),
        pl.lit(1, pl.Int8).alias("__order"),
        *(pl.col(v).cast(pl.Float64) for v in values),
        *([pl.col("__mark")] if last_time else []),
    )
    # Time and tie order fused into one integer: a two-key sort is much cheaper than three.
    stream = (
        pl.concat([t, e], how="vertical")
        .with_columns((pl.col(TIME).dt.epoch("us") * 4 + pl.col("__order")).alias("__ti"))
        .sort("__h", "__ti")
    )
    start = pl.col("__h") != pl.col("__h").shift(1)
    start = start.fill_null(True)
    totals = []
    for v in values:
        running = pl.col(v).cum_sum()
        # Total before this key's first row, carried down the key's rows.
        offset = pl.when(start).then(running - pl.col(v)).forward_fill()
        totals.append(pl.when(pl.col("__nokey")).then(0.0).otherwise(running - offset).alias(v))
    extra = []
    if last_time:
        mark_time = pl.when(pl.col("__mark")).then(pl.col(TIME)).forward_fill()
        mark_key = pl.when(pl.col("__mark")).then(pl.col("__h")).forward_fill()
        extra.append(
            pl.when((mark_key == pl.col("__h")) & pl.col("__nokey").not_())
            .then(mark_time)
            .alias("__last")
        )
    return (
        stream.with_columns(*totals, *extra)
        .filter(pl.col(IDX).is_not_null())
        .select(IDX, *values, *(["__last"] if last_time else []))
        .sort(IDX)
    )


def inspected_declarations(history: History) -> pl.LazyFrame:
    """Inspection results joined to their declarations, timed when the result was known.

    A result cannot be known before its declaration was lodged, whatever the source says,
    so its time is the later of the two.
    """
    latest = history.inspections.group_by(I.DECLARATION).agg(
        pl.col(I.INSPECTED_AT).max(),
        (pl.col(I.OUTCOME) == Outcome.HIT).any().alias("__hit"),
    )
    return history.declarations.join(
        latest, left_on=D.ID, right_on=I.DECLARATION, how="inner"
    ).select(
        pl.all().exclude(I.INSPECTED_AT, "__hit"),
        pl.max_horizontal(pl.col(I.INSPECTED_AT), pl.col(D.DECLARED_AT)).alias(TIME),
        pl.when(pl.col("__hit"))
        .then(pl.lit(Outcome.HIT.value))
        .otherwise(pl.lit(Outcome.CLEAR.value))
        .alias(I.OUTCOME),
    )


def smoothed_rate(hits: pl.Expr, trials: pl.Expr, prior: float, strength: float) -> pl.Expr:
    """Additive smoothing toward ``prior``: few observations say little."""
    return (hits + prior * strength) / (trials + strength)


def log1p(expr: pl.Expr) -> pl.Expr:
    return (expr.cast(pl.Float64) + 1.0).log()
