"""Per-profile performance over time: weekly hits, share of traffic and hit rate, as HTML.

GAO found CBP "did not regularly assess rule effectiveness"; this report is the regular
assessment: one self-contained HTML file (plots embedded as base64 PNG) an analyst can
mail or archive.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers; must precede pyplot

import matplotlib.pyplot as plt
import polars as pl

from cites_risk.features.contract import D, I, Outcome
from cites_risk.profiling.profiles.evaluate import evaluate, hit_column
from cites_risk.profiling.profiles.model import Profile
from cites_risk.profiling.profiles.watchlist import WatchlistIndex

WEEK = "week"


def weekly_performance(
    frame: pl.DataFrame,
    profiles: Sequence[Profile],
    *,
    watchlist: WatchlistIndex | None = None,
) -> pl.DataFrame:
    """One row per profile and week: traffic, hits, share, inspected, positives, hit rate.

    Validity dates apply (a profile hits nothing before it starts); the enabled flag does
    not, so a disabled profile's record stays visible.
    """
    if I.OUTCOME not in frame.columns:
        raise ValueError("the report needs an 'outcome' column (see attach_outcomes)")
    hits = evaluate(
        frame, profiles, watchlist=watchlist, check_enabled=False, keep=[D.DECLARED_AT]
    ).with_columns(
        pl.col(D.DECLARED_AT).dt.truncate("1w").dt.date().alias(WEEK),
        frame.get_column(I.OUTCOME).is_not_null().alias("__insp"),
        (frame.get_column(I.OUTCOME) == Outcome.HIT.value).fill_null(False).alias("__pos"),
    )
    parts = []
    for p in profiles:
        hit = pl.col(hit_column(p.id))
        parts.append(
            hits.group_by(WEEK)
            .agg(
                pl.len().alias("traffic"),
                hit.sum().cast(pl.Int64).alias("hits"),
                (hit & pl.col("__insp")).sum().cast(pl.Int64).alias("inspected"),
                (hit & pl.col("__pos")).sum().cast(pl.Int64).alias("positives"),
            )
            .with_columns(pl.lit(p.id).alias("profile_id"))
        )
    if not parts:
        return pl.DataFrame()
    return (
        pl.concat(parts)
        .with_columns(
            (pl.col("hits") / pl.col("traffic")).alias("share"),
            pl.when(pl.col("inspected") > 0)
            .then(pl.col("positives") / pl.col("inspected"))
            .alias("hit_rate"),
        )
        .select(
            "profile_id", WEEK, "traffic", "hits", "share", "inspected", "positives", "hit_rate"
        )
        .sort("profile_id", WEEK)
    )


def _plot(weekly: pl.DataFrame, profile: Profile, baseline: float | None) -> str:
    """Three panels (hits, share, hit rate) as a base64 PNG."""
    weeks = weekly.get_column(WEEK).to_list()
    fig, axes = plt.subplots(3, 1, figsize=(8, 6), sharex=True)
    axes[0].bar(weeks, weekly.get_column("hits").to_list(), width=5, color="#4472c4")
    axes[0].set_ylabel("hits")
    axes[1].plot(weeks, (weekly.get_column("share") * 100).to_list(), color="#ed7d31")
    axes[1].set_ylabel("% of traffic")
    rate = weekly.get_column("hit_rate").fill_null(float("nan")) * 100
    axes[2].plot(weeks, rate.to_list(), marker="o", color="#70ad47", label="profile")
    if baseline is not None:
        axes[2].axhline(baseline * 100, color="grey", linestyle="--", label="all inspected")
        axes[2].legend(loc="upper right", fontsize=8)
    axes[2].set_ylabel("hit rate %")
    fig.suptitle(f"{profile.id}: {profile.title}", fontsize=10)
    fig.autofmt_xdate()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def render_html(
    weekly: pl.DataFrame,
    profiles: Sequence[Profile],
    *,
    baseline_hit_rate: float | None = None,
    title: str = "Risk profile performance",
) -> str:
    rows = []
    sections = []
    for p in profiles:
        mine = weekly.filter(pl.col("profile_id") == p.id) if weekly.height else weekly
        hits = int(mine.get_column("hits").sum()) if mine.height else 0
        traffic = int(mine.get_column("traffic").sum()) if mine.height else 0
        inspected = int(mine.get_column("inspected").sum()) if mine.height else 0
        positives = int(mine.get_column("positives").sum()) if mine.height else 0
        rate = positives / inspected if inspected else None
        rows.append(
            "<tr>"
            f"<td>{html.escape(p.id)}</td><td>{html.escape(p.title)}</td>"
            f"<td>{'yes' if p.enabled else 'no'}</td><td>{hits}</td>"
            f"<td>{_pct(hits / traffic if traffic else None)}</td>"
            f"<td>{inspected}</td><td>{positives}</td><td>{_pct(rate)}</td>"
            "</tr>"
        )
        if mine.height and hits:
            image = _plot(mine, p, baseline_hit_rate)
            sections.append(
                f"<h2 id='{html.escape(p.id)}'>{html.escape(p.id)}</h2>"
                f"<p>{html.escape(p.source)}</p>"
                f"<img alt='weekly performance of {html.escape(p.id)}' "
                f"src='data:image/png;base64,{image}'>"
            )
    generated = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}</style></head>
<body><h1>{html.escape(title)}</h1>
<p>Generated {generated}. Hit rate = offences found among the inspected declarations a
profile flags; inspected rows were chosen by earlier targeting, so rates are biased upward
compared to the random stream. Baseline (all inspected): {_pct(baseline_hit_rate)}.</p>
<table><thead><tr><th>profile</th><th>title</th><th>enabled</th><th>hits</th>
<th>share of traffic</th><th>inspected</th><th>offences</th><th>hit rate</th></tr></thead>
<tbody>{"".join(rows)}</tbody></table>
{"".join(sections)}
</body></html>
"""


def write_report(
    frame: pl.DataFrame,
    profiles: Sequence[Profile],
    out: Path,
    *,
    watchlist: WatchlistIndex | None = None,
) -> Path:
    weekly = weekly_performance(frame, profiles, watchlist=watchlist)
    outcome = frame.get_column(I.OUTCOME)
    inspected = int(outcome.is_not_null().sum())
    baseline = int((outcome == Outcome.HIT.value).sum()) / inspected if inspected else None
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_html(weekly, profiles, baseline_hit_rate=baseline), encoding="utf-8")
    return out
