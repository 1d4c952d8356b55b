"""Projected hits of a profile before it goes live (the "projected hits" GTAS users asked for).

Run on an inspected history: declarations + features (+ ``score`` if there is one) with an
``outcome`` column (hit / clear; null where not inspected). A profile's *hit rate* is the
share of offences among the inspected rows it flags. Because inspected rows were chosen by
earlier targeting, that rate is biased; the random stream (``selected_by == random``), when
the history records one, gives the unbiased figure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import polars as pl

from cites_risk.features.contract import D, I, Outcome, SelectedBy
from cites_risk.profiling.profiles.evaluate import evaluate, hit_column
from cites_risk.profiling.profiles.model import Profile
from cites_risk.profiling.profiles.watchlist import WatchlistIndex

DAY = "day"


def attach_outcomes(frame: pl.DataFrame, inspections: pl.DataFrame) -> pl.DataFrame:
    """``outcome`` (hit if any inspection found an offence) and ``selected_by`` per row."""
    per_decl = inspections.group_by(I.DECLARATION).agg(
        pl.when((pl.col(I.OUTCOME) == Outcome.HIT.value).any())
        .then(pl.lit(Outcome.HIT.value))
        .otherwise(pl.lit(Outcome.CLEAR.value))
        .alias(I.OUTCOME),
        pl.col(I.SELECTED_BY).first().alias(I.SELECTED_BY),
    )
    base = frame.drop([c for c in (I.OUTCOME, I.SELECTED_BY) if c in frame.columns])
    return base.join(
        per_decl, left_on=D.ID, right_on=I.DECLARATION, how="left", maintain_order="left"
    )


@dataclass(frozen=True)
class BacktestResult:
    profile_id: str
    rows: int
    days: int
    hits: int
    share: float
    hits_per_day: float
    max_hits_per_day: int
    inspected_hits: int
    positives: int
    #: Offences among the inspected rows the profile flags; None when it flags none.
    hit_rate: float | None
    #: Offences among all inspected rows: what the profile must beat.
    baseline_hit_rate: float | None
    #: The same among randomly selected rows only (unbiased), when the history has them.
    random_hit_rate: float | None
    daily: pl.DataFrame

    @property
    def lift(self) -> float | None:
        if self.hit_rate is None or not self.baseline_hit_rate:
            return None
        return self.hit_rate / self.baseline_hit_rate


def _rate(positives: int, trials: int) -> float | None:
    return positives / trials if trials else None


def backtest_many(
    frame: pl.DataFrame,
    profiles: Sequence[Profile],
    *,
    watchlist: WatchlistIndex | None = None,
) -> list[BacktestResult]:
    """Backtest several profiles with one evaluation pass; ignores enabled and dates."""
    if I.OUTCOME not in frame.columns:
        raise ValueError("backtests need an 'outcome' column (see attach_outcomes)")
    hits = evaluate(
        frame,
        profiles,
        watchlist=watchlist,
        check_enabled=False,
        check_validity=False,
        keep=[D.DECLARED_AT],
    )
    inspected = frame.get_column(I.OUTCOME).is_not_null()
    positive = frame.get_column(I.OUTCOME) == Outcome.HIT.value
    random = (
        frame.get_column(I.SELECTED_BY) == SelectedBy.RANDOM.value
        if I.SELECTED_BY in frame.columns
        else pl.Series([False] * frame.height)
    ).fill_null(False)
    labels = hits.with_columns(
        pl.col(D.DECLARED_AT).dt.date().alias(DAY),
        inspected.alias("__insp"),
        positive.fill_null(False).alias("__pos"),
        random.alias("__rand"),
    )
    n_inspected = int(labels.get_column("__insp").sum())
    n_positive = int(labels.get_column("__pos").sum())
    days = max(labels.get_column(DAY).n_unique(), 1)
    results = []
    for p in profiles:
        hit = pl.col(hit_column(p.id))
        daily = (
            labels.group_by(DAY)
            .agg(
                pl.len().alias("traffic"),
                hit.sum().alias("hits"),
                (hit & pl.col("__insp")).sum().alias("inspected"),
                (hit & pl.col("__pos")).sum().alias("positives"),
            )
            .sort(DAY)
        )
        totals = labels.select(
            hit.sum().alias("hits"),
            (hit & pl.col("__insp")).sum().alias("insp"),
            (hit & pl.col("__pos")).sum().alias("pos"),
            (hit & pl.col("__rand") & pl.col("__insp")).sum().alias("r_insp"),
            (hit & pl.col("__rand") & pl.col("__pos")).sum().alias("r_pos"),
        ).row(0, named=True)
        results.append(
            BacktestResult(
                profile_id=p.id,
                rows=frame.height,
                days=days,
                hits=int(totals["hits"]),
                share=int(totals["hits"]) / frame.height if frame.height else 0.0,
                hits_per_day=int(totals["hits"]) / days,
                max_hits_per_day=int(daily.select(pl.col("hits").max()).item() or 0),
                inspected_hits=int(totals["insp"]),
                positives=int(totals["pos"]),
                hit_rate=_rate(int(totals["pos"]), int(totals["insp"])),
                baseline_hit_rate=_rate(n_positive, n_inspected),
                random_hit_rate=_rate(int(totals["r_pos"]), int(totals["r_insp"])),
                daily=daily,
            )
        )
    return results


def backtest(
    frame: pl.DataFrame, profile: Profile, *, watchlist: WatchlistIndex | None = None
) -> BacktestResult:
    return backtest_many(frame, [profile], watchlist=watchlist)[0]
