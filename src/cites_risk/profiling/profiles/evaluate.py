"""Profiles as polars expressions: one boolean expression per profile, one ``select``.

Nothing here loops over rows. Each profile compiles to a single expression over the frame
(declaration columns + features + ``score``); watch-list conditions compile to ``is_in``
over the names the batch's distinct values matched, so fuzzy matching costs
O(distinct names), not O(rows). A condition whose value is null is false (and its
``negate`` true), so missing data never raises.
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Mapping, Sequence
from datetime import UTC, date, datetime, timedelta

import polars as pl
from polars.datatypes import DataTypeClass

from cites_risk.features.contract import D, timestamp_literal
from cites_risk.profiling.profiles.model import (
    SCORE,
    Condition,
    EntityKind,
    Group,
    Profile,
    ProfileError,
)
from cites_risk.profiling.profiles.watchlist import WatchlistIndex, WatchMatch

HIT_PREFIX = "hit__"
WATCH_PREFIX = "watch__"

#: Watch-list matches of a batch: for each kind, declared name -> matched entry.
WatchMatches = Mapping[EntityKind, Mapping[str, WatchMatch]]


def hit_column(profile_id: str) -> str:
    return HIT_PREFIX + profile_id


def watch_column(kind: EntityKind) -> str:
    return WATCH_PREFIX + kind.value


def _values_for(
    dtype: pl.DataType | DataTypeClass, values: Sequence[object], cond: Condition
) -> list[object]:
    # YAML reads "0106" as text but 106 as a number; a text column compares as text.
    if dtype == pl.String:
        return [str(v) for v in values]
    if dtype.is_numeric() and any(isinstance(v, str) for v in values):
        raise ProfileError(f"{cond.column!r} is numeric but the condition compares it to text")
    return list(values)


def condition_expr(cond: Condition, schema: pl.Schema, watch: WatchMatches) -> pl.Expr:
    column = cond.column
    if column not in schema:
        raise ProfileError(f"the frame has no column {column!r}")
    dtype = schema[column]
    col = pl.col(column)
    op = cond.operator
    if op == "equals":
        expr = col == pl.lit(_values_for(dtype, [cond.equals], cond)[0])
    elif op == "in":
        values = _values_for(
            dtype.inner if isinstance(dtype, pl.List) else dtype, cond.in_ or [], cond
        )
        if isinstance(dtype, pl.List):  # transit countries: any element in the list
            expr = col.list.eval(pl.element().is_in(values)).list.any()
        else:
            expr = col.is_in(values)
    elif op == "hs_prefix":
        expr = functools.reduce(
            operator.or_, (col.str.starts_with(p) for p in cond.hs_prefix or [])
        )
    elif op == "regex":
        expr = col.str.contains(f"(?i){cond.regex}")
    elif op == "range":
        assert cond.range is not None
        parts = []
        if cond.range.min is not None:
            parts.append(col >= cond.range.min)
        if cond.range.max is not None:
            parts.append(col <= cond.range.max)
        expr = functools.reduce(operator.and_, parts)
    elif op == "watchlist":
        assert cond.watchlist is not None
        names = sorted(watch.get(cond.watchlist, {}))
        expr = col.is_in(names) if names else pl.lit(False)
    elif op == "appendix":
        expr = col.is_in(cond.appendix or [])
    else:  # is_null
        expr = col.is_null() if cond.is_null else col.is_not_null()
    expr = expr.fill_null(False)
    return ~expr if cond.negate else expr


def group_expr(group: Group, schema: pl.Schema, watch: WatchMatches) -> pl.Expr:
    parts = [
        group_expr(item, schema, watch)
        if isinstance(item, Group)
        else condition_expr(item, schema, watch)
        for item in group.items
    ]
    combined = functools.reduce(operator.and_ if group.all is not None else operator.or_, parts)
    return ~combined if group.negate else combined


def _start(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=UTC)


def active_expr(
    profile: Profile, *, check_enabled: bool = True, check_validity: bool = True
) -> pl.Expr | None:
    """When the profile may hit at all: enabled, and the declaration within its dates."""
    if check_enabled and not profile.enabled:
        return pl.lit(False)
    parts = []
    if check_validity and profile.valid_from is not None:
        parts.append(pl.col(D.DECLARED_AT) >= timestamp_literal(_start(profile.valid_from)))
    if check_validity and profile.valid_to is not None:
        end = _start(profile.valid_to) + timedelta(days=1)
        parts.append(pl.col(D.DECLARED_AT) < timestamp_literal(end))
    return functools.reduce(operator.and_, parts).fill_null(False) if parts else None


def profile_expr(
    profile: Profile,
    schema: pl.Schema,
    watch: WatchMatches,
    *,
    check_enabled: bool = True,
    check_validity: bool = True,
) -> pl.Expr:
    """One boolean expression, named ``hit__<id>``, true where the profile hits."""
    try:
        expr = group_expr(profile.criteria, schema, watch)
    except ProfileError as exc:
        raise ProfileError(f"profile {profile.id!r}: {exc}") from None
    active = active_expr(profile, check_enabled=check_enabled, check_validity=check_validity)
    if active is not None:
        expr = active & expr
    return expr.alias(hit_column(profile.id))


def match_watchlists(
    frame: pl.DataFrame, profiles: Sequence[Profile], watchlist: WatchlistIndex | None
) -> dict[EntityKind, dict[str, WatchMatch]]:
    """Fuzzy-match the batch's distinct names for every watch-list the profiles use."""
    kinds = sorted({k for p in profiles for k in p.watchlists})
    if not kinds or watchlist is None:
        return {}
    return watchlist.match_frame(frame, kinds)


def watch_exprs(watch: WatchMatches) -> list[pl.Expr]:
    """Per kind: the entry a declared name matched, as the sentence an inspector reads."""
    out = []
    for kind, matches in watch.items():
        mapping = {name: m.sentence(kind) for name, m in matches.items()}
        out.append(
            pl.col(kind.value)
            .replace_strict(mapping, default=None, return_dtype=pl.String)
            .alias(watch_column(kind))
        )
    return out


def with_score(frame: pl.DataFrame) -> pl.DataFrame:
    """Backtests and rule-only runs have no model: ``score`` is then null (conditions false)."""
    if SCORE in frame.columns:
        return frame
    return frame.with_columns(pl.lit(None, pl.Float64).alias(SCORE))


def evaluate(
    frame: pl.DataFrame,
    profiles: Sequence[Profile],
    *,
    watchlist: WatchlistIndex | None = None,
    check_enabled: bool = True,
    check_validity: bool = True,
    keep: Sequence[str] = (),
) -> pl.DataFrame:
    """Hit columns (``hit__<id>``, Boolean, never null) for every profile, in row order.

    ``keep`` names input columns to carry along; watch-list match sentences come out as
    ``watch__<kind>`` for kinds the profiles use. A profile naming a column the frame lacks
    raises :class:`ProfileError`: a profile that silently never hits is worse.
    """
    frame = with_score(frame)
    watch = match_watchlists(frame, profiles, watchlist)
    schema = frame.schema
    exprs = [
        profile_expr(p, schema, watch, check_enabled=check_enabled, check_validity=check_validity)
        for p in profiles
    ]
    return frame.select(*[pl.col(c) for c in keep], *exprs, *watch_exprs(watch))
