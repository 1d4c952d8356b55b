"""Scores become decisions: final risk, capacity per office and day, random share, lanes.

Per batch (vectorised polars, one pass of window expressions):

1. **Profiles** are evaluated (one boolean column each). A profile hitting more than
   ``max_profile_share`` of the batch is *suspended* for the batch (the runaway guard of
   GTAS' ``MAX_RULE_HITS``): its hits are ignored and it is reported.
2. **Final risk** ``r = 1 - (1 - p) * prod_i(1 - w_i)`` over the weights ``w_i`` of the
   profiles hit, ``p`` the calibrated model probability (0 when there is none). Each
   weight acts as independent evidence that the declaration is an offence: one weight of
   0.5 turns p = 0.1 into 0.55, two into 0.78; r stays in [0, 1] and never falls below p.
3. **Capacity** per office and UTC day: ``ceil(capacity_share * n)`` rows, or
   ``capacity_count``, or the office's entry in ``office_capacity``. Order of filling
   (ASYCUDA's: criteria, random quota, top-up):
   a. every hit of a red-lane profile is selected (``rule``), *even beyond capacity*:
      an analyst's red lane is an order, not a suggestion; they use capacity first;
   b. ``floor(random_share * n)`` slots (share of the office-day's traffic, never more than
      the capacity left after (a)) are reserved for the random stream;
   c. the other slots go to the highest final risk (ties by declaration id). A row hitting
      more than ``max_unselected_hits`` profiles is ranked ahead of all others (it may not
      go unselected while capacity remains). Such a row is ``rule``-selected, and so is a
      row a profile hit whose model probability alone would not have reached the cut;
      otherwise ``model``;
   d. the reserved random slots are drawn from the rows still unselected with a seeded
      permutation over the declaration ids: the same batch and seed give the same draw
      whatever the row order. They are recorded as ``random`` (compliance measurement and
      unbiased retraining).
   So the selected count of an office-day is at most ``max(capacity, forced red hits)``.
4. **Lanes**: red = selected for physical inspection; yellow (documentary check) = a
   yellow-lane profile hit, or the next ``yellow_share`` of the office-day's traffic by
   final risk (risk above zero); green = release.
5. **Reasons**: how the row was selected, then each profile hit's title and rationale
   (or "Selected by a restricted profile" when the viewer's role may not read it), the
   watch-list matches, then the caller's extra reason columns.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Self

import numpy as np
import polars as pl
from pydantic import BaseModel, ConfigDict, Field, model_validator

from cites_risk.features.contract import FEW_ROWS, D, SelectedBy, collect_as_written
from cites_risk.models.evaluation import capacity_count
from cites_risk.profiling.profiles.evaluate import (
    evaluate,
    hit_column,
    watch_column,
    with_score,
)
from cites_risk.profiling.profiles.model import SCORE, Lane, Profile
from cites_risk.profiling.profiles.watchlist import WatchlistIndex
from cites_risk.profiling.roles import Role, may_read_rationale

HIDDEN_RATIONALE = "Selected by a restricted profile"
DEFAULT_CAPACITY_SHARE = 0.05
#: Final risk 1 - (1 - p) * ... lands a few ulps off p even where no profile weighed in
#: (1 - (1 - p) != p in floating point): closer than this is the same risk.
RISK_TOLERANCE = 1e-12

FINAL_RISK = "final_risk"
LANE = "lane"
SELECTED = "selected"
SELECTED_BY = "selected_by"
PROFILE_HITS = "profile_hits"
REASONS = "reasons"
OUTPUT_SCHEMA = pl.Schema(
    {
        D.ID: pl.String(),
        FINAL_RISK: pl.Float64(),
        LANE: pl.String(),
        SELECTED: pl.Boolean(),
        SELECTED_BY: pl.String(),
        PROFILE_HITS: pl.List(pl.String()),
        REASONS: pl.List(pl.String()),
    }
)

_DAY = "__day"
_ROW = "__row"
GROUP = (D.OFFICE, _DAY)


class SelectionConfig(BaseModel):
    """How many declarations an office can inspect per day and how they are chosen."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    #: ``office_day``: each office's capacity per day (operations). ``batch``: one quota over
    #: the whole batch (a national quota for a period, or evaluating a past period).
    #: ``declaration``: each declaration decided on its own (online scoring), so what else
    #: was scored in the same call changes nothing.
    pool: Literal["office_day", "batch", "declaration"] = "office_day"
    capacity_share: float | None = Field(default=None, gt=0.0, le=1.0)
    capacity_count: int | None = Field(default=None, ge=0)
    #: Per-office daily capacity (count), overriding the share or count above.
    office_capacity: dict[str, int] = Field(default_factory=dict)
    #: Share of each office-day's traffic inspected at random, taken out of capacity.
    random_share: float = Field(default=0.02, ge=0.0, le=1.0)
    seed: int = 0
    yellow_share: float = Field(default=0.05, ge=0.0, le=1.0)
    #: Below this final risk a row is never red by ranking (capacity is a ceiling).
    min_risk: float = Field(default=0.0, ge=0.0, le=1.0)
    max_unselected_hits: int | None = Field(default=None, ge=0)
    #: Runaway guard: a profile hitting more than this share of the batch is suspended.
    max_profile_share: float | None = Field(default=0.05, gt=0.0, le=1.0)
    #: The guard needs a batch this large: one declaration scored alone is 100 % of its batch.
    runaway_min_rows: int = Field(default=200, ge=1)

    @model_validator(mode="after")
    def _one_capacity(self) -> Self:
        if self.capacity_share is not None and self.capacity_count is not None:
            raise ValueError("give capacity_share or capacity_count, not both")
        return self

    @property
    def group(self) -> list[str]:
        if self.pool == "declaration":
            return [_ROW]
        return list(GROUP) if self.pool == "office_day" else [_DAY]

    def capacity_expr(self, n: pl.Expr) -> pl.Expr:
        if self.capacity_count is not None:
            base = pl.lit(self.capacity_count, pl.Int64)
        else:
            # The evaluation protocol's top ceil(k*N) rows, counted the same way.
            base = capacity_count(self.capacity_share or DEFAULT_CAPACITY_SHARE, n)
        if not self.office_capacity:
            return base
        override = pl.col(D.OFFICE).replace_strict(
            self.office_capacity, default=None, return_dtype=pl.Int64
        )
        return pl.coalesce(override, base)


@dataclass(frozen=True)
class SuspendedProfile:
    profile_id: str
    hits: int
    share: float


@dataclass(frozen=True)
class SelectionReport:
    """Per office and day: traffic, capacity and what was selected how; suspended profiles."""

    per_group: pl.DataFrame
    suspended: list[SuspendedProfile] = field(default_factory=list)
    #: Hits per profile in the batch (suspended ones included, before suspension).
    profile_hits: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {
            "per_group": self.per_group.with_columns(pl.col("day").cast(pl.String)).to_dicts(),
            "suspended": [vars(s) for s in self.suspended],
            "profile_hits": self.profile_hits,
        }


@dataclass(frozen=True)
class Selection:
    #: One row per input declaration, input order, columns of ``OUTPUT_SCHEMA``.
    frame: pl.DataFrame
    _decided: pl.DataFrame = field(repr=False, compare=False)
    _config: SelectionConfig = field(repr=False, compare=False)
    _suspended: list[SuspendedProfile] = field(repr=False, compare=False)
    _hits: dict[str, int] = field(repr=False, compare=False)

    # Counted when asked for: the service answers a request from the lanes alone.
    @functools.cached_property
    def report(self) -> SelectionReport:
        return SelectionReport(_per_group(self._decided, self._config), self._suspended, self._hits)


def combine_risk(score: pl.Expr, weights: Sequence[tuple[pl.Expr, float]]) -> pl.Expr:
    """``1 - (1 - p) * prod(1 - w)`` over the (hit, weight) pairs whose hit is true."""
    p = score.cast(pl.Float64).fill_null(0.0).fill_nan(0.0).clip(0.0, 1.0)
    factors = [pl.when(hit).then(pl.lit(1.0 - w)).otherwise(pl.lit(1.0)) for hit, w in weights]
    keep = functools.reduce(operator.mul, factors, 1.0 - p)
    return (1.0 - keep).clip(0.0, 1.0)


def _any(exprs: Sequence[pl.Expr]) -> pl.Expr:
    return functools.reduce(operator.or_, exprs) if exprs else pl.lit(False)


_EMPTY = pl.lit([], dtype=pl.List(pl.String))


def _list_of(exprs: Sequence[pl.Expr], lists: Sequence[pl.Expr] = ()) -> pl.Expr:
    """A List(String) of the non-null values of ``exprs`` then of the ``lists`` (flattened)."""
    items = [e.cast(pl.String) for e in exprs] or [pl.lit(None, pl.String)]
    # A null list would null the whole concatenation: it counts as empty.
    items += [e.cast(pl.List(pl.String)).fill_null(_EMPTY) for e in lists]
    return pl.concat_list(items).list.drop_nulls()


def _hit_lists(
    indexed: pl.LazyFrame, profiles: Sequence[Profile], visible: set[str]
) -> pl.LazyFrame:
    """Per row with a hit (``__row``): the ids of the profiles hit and the rationales of
    the ``visible`` ones (``__texts``), both in profile order.

    Built from the hits alone: a list per row, nearly all of them empty, built from a
    column per profile, cost more than the rest of the selection together.
    """
    schema: dict[str, pl.DataType] = {
        _ROW: pl.UInt32(),
        PROFILE_HITS: pl.List(pl.String()),
        "__texts": pl.List(pl.String()),
    }
    if not profiles:
        return pl.LazyFrame(schema=schema)
    long = pl.concat(
        [
            indexed.filter(pl.col(hit_column(p.id))).select(
                _ROW,
                pl.lit(i, pl.UInt32).alias("__order"),
                pl.lit(p.id).alias(PROFILE_HITS),
                pl.lit(f"{p.title}: {p.rationale}" if p.id in visible else None, pl.String).alias(
                    "__texts"
                ),
            )
            for i, p in enumerate(profiles)
        ]
    )
    return (
        long.sort(_ROW, "__order")
        .group_by(_ROW, maintain_order=True)
        .agg(pl.col(PROFILE_HITS), pl.col("__texts").drop_nulls())
    )


def _suspended(
    hits: pl.DataFrame, profiles: Sequence[Profile], config: SelectionConfig
) -> tuple[list[SuspendedProfile], dict[str, int]]:
    counts = {p.id: int(hits.get_column(hit_column(p.id)).sum()) for p in profiles}
    rows = hits.height
    limit = config.max_profile_share
    if limit is None or rows < config.runaway_min_rows:
        return [], counts
    out = [SuspendedProfile(pid, n, n / rows) for pid, n in counts.items() if n / rows > limit]
    return out, counts


def _fmt(expr: pl.Expr) -> pl.Expr:
    return expr.round(2).cast(pl.String)


def _fmt_apart(low: pl.Expr, high: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
    """``low`` and ``high`` as text, to 2 decimals or as many more as they need to differ:
    a raise from 0.0012 to 0.0041 must not read "from 0.0 to 0.0"."""
    gap = (high - low).clip(lower_bound=RISK_TOLERANCE)
    # 10^-d at most a tenth of the gap: rounded to d decimals, the two stay apart.
    scale = pl.lit(10.0).pow(((-gap.log10()).ceil() + 1).clip(lower_bound=2))

    def text(e: pl.Expr) -> pl.Expr:
        return ((e * scale).round(0) / scale).cast(pl.String)

    return text(low), text(high)


def _selection_sentence(
    forced: pl.Expr, by: pl.Expr, p: pl.Expr, risk: pl.Expr, yellow_forced: pl.Expr, lane: pl.Expr
) -> pl.Expr:
    from_p, to_risk = _fmt_apart(p, risk)
    return (
        pl.when(forced)
        .then(pl.lit("Physical inspection (red lane): required by a risk profile."))
        .when(by == SelectedBy.MODEL.value)
        .then(
            pl.concat_str(
                pl.lit("Physical inspection (red lane): final risk "),
                _fmt(risk),
                pl.lit(" is within today's inspection capacity of this office."),
            )
        )
        .when((by == SelectedBy.RULE.value) & (risk - p > RISK_TOLERANCE))
        .then(
            pl.concat_str(
                pl.lit("Physical inspection (red lane): profile hits raised the risk from "),
                from_p,
                pl.lit(" to "),
                to_risk,
                pl.lit("."),
            )
        )
        # Ranked first for its many hits, though they did not raise the risk.
        .when(by == SelectedBy.RULE.value)
        .then(pl.lit("Physical inspection (red lane): selected for its risk profile hits."))
        .when(by == SelectedBy.RANDOM.value)
        .then(pl.lit("Physical inspection (red lane): drawn at random for compliance measurement."))
        .when((lane == Lane.YELLOW.value) & yellow_forced)
        .then(pl.lit("Documentary check (yellow lane): required by a risk profile."))
        .when(lane == Lane.YELLOW.value)
        .then(
            pl.concat_str(
                pl.lit("Documentary check (yellow lane): final risk "),
                _fmt(risk),
                pl.lit(" is in the band below the inspection cut."),
            )
        )
        .otherwise(pl.lit("Release (green lane)."))
    )


def select(
    frame: pl.DataFrame,
    profiles: Sequence[Profile],
    config: SelectionConfig | None = None,
    *,
    role: Role = Role.INSPECTOR,
    watchlist: WatchlistIndex | None = None,
    extra_reasons: Sequence[str] = (),
) -> Selection:
    """Lanes, selection and reasons for a batch of scored declarations, a row per row of
    ``frame`` in its order.

    ``frame`` holds the declarations' contract columns, their features and ``score``
    (calibrated probability; null or absent means rules only). ``extra_reasons`` names
    String or List(String) columns of ``frame`` appended to each row's reasons (model
    contributions, the species match sentence).
    """
    config = config or SelectionConfig()
    frame = with_score(frame)
    hits = evaluate(frame, profiles, watchlist=watchlist)
    suspended, counts = _suspended(hits, profiles, config)
    gone = {s.profile_id for s in suspended}
    active = [p for p in profiles if p.id not in gone]

    def hit(p: Profile) -> pl.Expr:
        return pl.col(hit_column(p.id))

    risk = combine_risk(pl.col(SCORE), [(hit(p), p.weight) for p in active if p.weight is not None])
    forced_red = _any([hit(p) for p in active if p.lane == Lane.RED])
    forced_yellow = _any([hit(p) for p in active if p.lane == Lane.YELLOW])
    n_hits = functools.reduce(
        operator.add, [hit(p).cast(pl.Int32) for p in active], pl.lit(0, pl.Int32)
    )
    visible = [p for p in active if may_read_rationale(role, p.confidentiality)]
    watch_reasons = [
        pl.when(_any([hit(p) for p in visible if kind in p.watchlists])).then(
            pl.col(watch_column(kind))
        )
        for kind in sorted({k for p in active for k in p.watchlists})
        if watch_column(kind) in hits.columns
    ]

    base = pl.concat(
        [
            # Extras are renamed: the caller's column may itself be called "reasons".
            frame.select(
                D.ID,
                D.OFFICE,
                D.DECLARED_AT,
                SCORE,
                *(pl.col(c).alias(f"__extra{i}") for i, c in enumerate(extra_reasons)),
            ),
            hits,
        ],
        how="horizontal",
    ).lazy()
    group = config.group
    n = pl.len().over(group)
    indexed = base.with_row_index(_ROW)
    # Ranking sorts by id: only these narrow columns travel through the sort, and the wide
    # ones (reasons lists, profile hits) rejoin them in row order afterwards.
    lf = (
        indexed.select(
            _ROW,
            D.ID,
            D.OFFICE,
            (
                pl.col(D.DECLARED_AT).dt.date()
                if config.pool != "batch"
                else pl.col(D.DECLARED_AT).min().dt.date()
            ).alias(_DAY),
            pl.col(SCORE).cast(pl.Float64).fill_null(0.0).fill_nan(0.0).clip(0.0, 1.0).alias("__p"),
            risk.alias(FINAL_RISK),
            forced_red.alias("__forced"),
            forced_yellow.alias("__yellow_forced"),
            n_hits.alias("__n_hits"),
        )
        # Ranking ties break on the declaration id, so input order cannot change the outcome.
        .sort(D.ID, _ROW)
        .with_columns(
            # A seeded permutation over rows sorted by id: the random stream's draw order.
            pl.int_range(pl.len()).shuffle(seed=config.seed).alias("__perm"),
            n.alias("__n"),
            config.capacity_expr(n).alias("__cap"),
            pl.col("__forced").sum().over(group).cast(pl.Int64).alias("__forced_n"),
        )
    )
    room = (pl.col("__cap") - pl.col("__forced_n")).clip(lower_bound=0)
    many = (
        pl.col("__n_hits") > config.max_unselected_hits
        if config.max_unselected_hits is not None
        else pl.lit(False)
    )
    lf = lf.with_columns(
        pl.min_horizontal(
            (pl.col("__n").cast(pl.Float64) * config.random_share).floor().cast(pl.Int64), room
        ).alias("__random_n"),
        pl.when(many).then(1).otherwise(2).alias("__tier"),
        (~pl.col("__forced") & ((pl.col(FINAL_RISK) >= config.min_risk) | many)).alias(
            "__eligible"
        ),
    ).with_columns(
        (room - pl.col("__random_n")).clip(lower_bound=0).alias("__slots"),
        # Ranked on tier first, then risk: tier-1 rows (too many hits) come first.
        pl.when(pl.col("__eligible"))
        .then(pl.col("__tier") * 2.0 - pl.col(FINAL_RISK))
        .rank("ordinal")
        .over(group)
        .alias("__rank"),
    )
    ranked = pl.col("__eligible") & (pl.col("__rank") <= pl.col("__slots")).fill_null(False)
    lf = lf.with_columns(ranked.alias("__ranked")).with_columns(
        pl.when(~pl.col("__forced") & ~pl.col("__ranked"))
        .then(pl.col("__perm"))
        .rank("ordinal")
        .over(group)
        .le(pl.col("__random_n"))
        .fill_null(False)
        .alias("__random"),
        pl.when(pl.col("__ranked")).then(pl.col(FINAL_RISK)).min().over(group).alias("__cut"),
    )
    selected = pl.col("__forced") | pl.col("__ranked") | pl.col("__random")
    # The profiles' doing only where one hit and the probability alone fell short of the cut.
    raised_in = (pl.col("__n_hits") > 0) & (pl.col("__p") < pl.col("__cut") - RISK_TOLERANCE)
    by = (
        pl.when(pl.col("__forced") | (pl.col("__ranked") & (pl.col("__tier") == 1)))
        .then(pl.lit(SelectedBy.RULE.value))
        .when(pl.col("__ranked") & raised_in)
        .then(pl.lit(SelectedBy.RULE.value))
        .when(pl.col("__ranked"))
        .then(pl.lit(SelectedBy.MODEL.value))
        .when(pl.col("__random"))
        .then(pl.lit(SelectedBy.RANDOM.value))
        .otherwise(pl.lit(None, pl.String))
    )
    lf = lf.with_columns(selected.alias(SELECTED), by.alias(SELECTED_BY)).with_columns(
        pl.when(~pl.col(SELECTED) & (pl.col(FINAL_RISK) > 0))
        .then(-pl.col(FINAL_RISK))
        .rank("ordinal")
        .over(group)
        .alias("__yrank")
    )
    yellow_n = capacity_count(config.yellow_share, pl.col("__n"))
    yellow = ~pl.col(SELECTED) & (
        pl.col("__yellow_forced") | (pl.col("__yrank") <= yellow_n).fill_null(False)
    )
    lane = (
        pl.when(pl.col(SELECTED))
        .then(pl.lit(Lane.RED.value))
        .when(yellow)
        .then(pl.lit(Lane.YELLOW.value))
        .otherwise(pl.lit(Lane.GREEN.value))
    )
    lf = pl.concat(
        [
            lf.with_columns(lane.alias(LANE)).sort(_ROW),
            indexed.drop(_ROW, D.ID, D.OFFICE, D.DECLARED_AT, SCORE),
        ],
        how="horizontal",
    )
    sentence = _selection_sentence(
        pl.col("__forced"),
        pl.col(SELECTED_BY),
        pl.col("__p"),
        pl.col(FINAL_RISK),
        pl.col("__yellow_forced"),
        pl.col(LANE),
    )
    hidden = [hit(p) for p in active if p not in visible]
    # One neutral sentence however many restricted profiles hit.
    hidden_text = [pl.when(_any(hidden)).then(pl.lit(HIDDEN_RATIONALE))] if hidden else []
    given = [
        (pl.col(f"__extra{i}"), isinstance(frame.schema[c], pl.List))
        for i, c in enumerate(extra_reasons)
    ]
    extras = [e if is_list else pl.concat_list(e.cast(pl.String)) for e, is_list in given]
    lf = lf.join(
        _hit_lists(indexed, active, {p.id for p in visible}),
        on=_ROW,
        how="left",
        maintain_order="left",
    ).with_columns(pl.col(PROFILE_HITS, "__texts").fill_null(_EMPTY))
    reasons = _list_of([sentence], [pl.col("__texts")]).list.concat(
        _list_of([*hidden_text, *watch_reasons], extras)
    )
    # Most rows have nothing but their lane's sentence; list operations over every row cost
    # more than the rest of the selection, so the full list is built only where there is more.
    more = _any(
        [
            pl.col("__texts").list.len() > 0,
            *(e.is_not_null() for e in [*hidden_text, *watch_reasons]),
            *(
                e.list.len().fill_null(0) > 0 if is_list else e.is_not_null()
                for e, is_list in given
            ),
        ]
    )
    lf = lf.with_columns(more.alias("__more")).cache()
    rich = lf.filter(pl.col("__more")).select(_ROW, reasons.alias(REASONS))
    query = lf.join(rich, on=_ROW, how="left", maintain_order="left").with_columns(
        pl.col(REASONS).fill_null(pl.concat_list(sentence))
    )
    # In memory: on a 150 k-row partition, 160 ms against 220 ms on the default (streaming)
    # engine, which gains nothing on a plan of window functions over one frame.
    result = (
        collect_as_written(query) if frame.height <= FEW_ROWS else query.collect(engine="in-memory")
    )
    out = result.select(OUTPUT_SCHEMA.names()).cast(dict(OUTPUT_SCHEMA.items()))
    return Selection(out, result, config, suspended, counts)


def _per_group(result: pl.DataFrame, config: SelectionConfig) -> pl.DataFrame:
    by = pl.col(SELECTED_BY)
    office = pl.col(D.OFFICE) if config.pool != "batch" else pl.lit("all offices").alias(D.OFFICE)
    # Decided one by one, each declaration is a capacity of its own.
    capacity = pl.col("__cap").sum() if config.pool == "declaration" else pl.col("__cap").first()
    return (
        result.with_columns(office)
        .group_by(list(GROUP))
        .agg(
            pl.len().alias("declarations"),
            capacity.alias("capacity"),
            pl.col("__forced").sum().alias("forced_red"),
            (by == SelectedBy.MODEL.value).sum().alias("by_model"),
            (by == SelectedBy.RULE.value).sum().alias("by_rule"),
            (by == SelectedBy.RANDOM.value).sum().alias("random"),
            pl.col(SELECTED).sum().alias("selected"),
            (pl.col(LANE) == Lane.YELLOW.value).sum().alias("yellow"),
        )
        .rename({_DAY: "day"})
        .sort(D.OFFICE, "day")
    )


def capacity_of(n: int, config: SelectionConfig, office: str | None = None) -> int:
    """The capacity rule as plain Python (reports, tests, the API's what-if)."""
    if office is not None and office in config.office_capacity:
        return config.office_capacity[office]
    if config.capacity_count is not None:
        return config.capacity_count
    return capacity_count(config.capacity_share or DEFAULT_CAPACITY_SHARE, n)


#: Columns of :class:`LaneQuota`: a pool's size, a row's position, score and candidacy.
_POOL_N, _AT, _SCORE, _MAY = "__pool_n", "__at", "__score", "__may"


class LaneQuota:
    """Which rows ranking may still put in a lane, while a batch is scored in chunks and its
    lanes are decided only after the last (``profiling/batch.py``).

    A row that ranking alone puts in a lane (red by model risk within capacity, or yellow
    after it) has fewer than ``capacity + yellow`` rows of its pool (office and day) above
    it by model score, ties broken by id as :func:`select` breaks them: every row above it
    has a final risk at least its own, so it is forced red, ranked ahead or selected before
    it. The pools' sizes are counted before scoring (:meth:`counted`); then, chunk after
    chunk, a row is a candidate (:meth:`may_rank`) when it ranks within that many among the
    candidates of its pool so far and the chunk's rows, who can only be outranked later.
    Explaining the candidates gives every such row its model reasons before the lanes are
    known; rows a profile put in a lane carry its reasons. The bound fails only where a
    red-lane profile's hits alone exceed an office-day's capacity.
    """

    def __init__(self, config: SelectionConfig, sizes: pl.DataFrame | None = None) -> None:
        self.config = config
        #: Pool keys and ``__pool_n``: declarations per pool.
        self.sizes = sizes
        #: The candidates so far: id, pool keys and score.
        self._leaders: pl.DataFrame | None = None

    def _keys(self) -> list[pl.Expr]:
        if self.config.pool == "office_day":
            return [pl.col(D.OFFICE), pl.col(D.DECLARED_AT).dt.date().alias(_DAY)]
        return [pl.lit(0).alias(_DAY)]  # one pool: the batch

    def counted(self, declarations: pl.DataFrame) -> None:
        """Add ``declarations`` to the sizes of their pools."""
        keys = [k.meta.output_name() for k in self._keys()]
        found = declarations.group_by(self._keys()).agg(pl.len().cast(pl.Int64).alias(_POOL_N))
        if self.sizes is not None:
            found = pl.concat([self.sizes, found]).group_by(keys).agg(pl.col(_POOL_N).sum())
        self.sizes = found

    def may_rank(self, declarations: pl.DataFrame, score: np.ndarray) -> np.ndarray:
        """Whether each row is a candidate; call once per chunk, in the chunks' order (a
        chunk scored before, on a resumed run, through :meth:`seen`)."""
        if self.config.pool == "declaration" or self.sizes is None:
            return np.ones(declarations.height, dtype=bool)
        keys = [k.meta.output_name() for k in self._keys()]
        n = pl.col(_POOL_N)
        most = self.config.capacity_expr(n) + capacity_count(self.config.yellow_share, n)
        # Ties break on the declaration id, as select breaks them (sorted by id, ranked in
        # order), so a row has no more rows above it here than in its whole pool.
        rank = pl.col(_SCORE).rank("ordinal", descending=True).over(keys)
        # The office too where it is no key: a per-office capacity reads it.
        office = [] if D.OFFICE in keys else [pl.col(D.OFFICE)]
        here = declarations.select(
            pl.int_range(pl.len(), dtype=pl.Int64).alias(_AT),
            D.ID,
            *self._keys(),
            *office,
            pl.Series(_SCORE, score, dtype=pl.Float64),
        )
        rows = here if self._leaders is None else pl.concat([self._leaders, here], how="diagonal")
        ranked = (
            rows.join(self.sizes, on=keys, how="left", nulls_equal=True)
            .sort(D.ID, _AT)
            .with_columns((rank <= most).fill_null(True).alias(_MAY))
        )
        self._leaders = (
            ranked.filter(pl.col(_MAY))
            .select(here.columns)
            .with_columns(pl.lit(None, pl.Int64).alias(_AT))
        )
        return ranked.filter(pl.col(_AT).is_not_null()).sort(_AT).get_column(_MAY).to_numpy()

    def seen(self, scored: pl.DataFrame) -> None:
        """A chunk scored by an earlier run: its rows compete with the chunks to come."""
        self.may_rank(scored, scored.get_column(SCORE).to_numpy())
