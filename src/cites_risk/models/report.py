"""The model report: PNG plots and one self-contained HTML page (images embedded).

Logged with every training run as MLflow artifacts: precision and recall at capacity, the
precision-recall curve, the reliability (calibration) curve, feature importance, the
baselines on the same test rows and a week-by-week backtest.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from cites_risk.models.evaluation import (
    CAPACITIES,
    ScoreReport,
    capacity_curve,
    capacity_tag,
    pr_curve,
    reliability,
)
from cites_risk.models.risk_model import RiskModel

PLOTS = ("capacity", "pr_curve", "reliability", "importance")


@dataclass(frozen=True)
class ReportInput:
    """What the report shows: the model, its test labels and scores, and the comparisons."""

    model: RiskModel
    y: np.ndarray
    score: np.ndarray
    reports: Sequence[ScoreReport] = ()
    weekly: pl.DataFrame | None = None
    title: str = "cites-risk model report"


def _axes(width: float, height: float) -> tuple[Figure, Axes]:
    # The object API (no pyplot): no global state, no GUI backend, safe in a server.
    fig = Figure(figsize=(width, height))
    return fig, fig.add_subplot()


def _save(fig: Figure, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def plot_capacity(y: np.ndarray, score: np.ndarray, path: Path) -> Path:
    curve = capacity_curve(y, score)
    fig, ax = _axes(6, 4)
    share = curve.get_column("share").to_numpy() * 100
    ax.plot(share, curve.get_column("precision"), label="precision")
    ax.plot(share, curve.get_column("recall"), label="recall")
    for k in CAPACITIES:
        ax.axvline(k * 100, color="grey", lw=0.5, ls=":")
    ax.set_xlabel("inspected (% of declarations, highest scores first)")
    ax.set_ylim(0, 1.02)
    ax.set_title("Precision and recall at inspection capacity")
    ax.legend()
    return _save(fig, path)


def plot_pr(y: np.ndarray, score: np.ndarray, path: Path) -> Path:
    recall, precision = pr_curve(y, score)
    fig, ax = _axes(5, 4)
    ax.plot(recall, precision)
    ax.axhline(float(np.mean(y)), color="grey", ls=":", label="random selection")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_title("Precision-recall curve")
    ax.legend()
    return _save(fig, path)


def plot_reliability(y: np.ndarray, proba: np.ndarray, path: Path) -> Path:
    bins = reliability(y, proba)
    fig, ax = _axes(5, 4)
    ax.plot([0, 1], [0, 1], color="grey", ls=":", label="perfect calibration")
    ax.plot([b[0] for b in bins], [b[1] for b in bins], marker="o", label="model")
    ax.set_xlabel("predicted probability (decile mean)")
    ax.set_ylabel("observed offence rate")
    ax.set_title("Reliability (calibration)")
    ax.legend()
    return _save(fig, path)


def plot_importance(model: RiskModel, path: Path, top: int = 20) -> Path:
    gain = model.booster.feature_importance("gain")
    order = np.argsort(-gain)[:top][::-1]
    fig, ax = _axes(6, 0.3 * len(order) + 1)
    ax.barh([model.columns[i] for i in order], gain[order])
    ax.set_xlabel("total gain")
    ax.set_title("Feature importance")
    return _save(fig, path)


def write_plots(data: ReportInput, folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return {
        "capacity": plot_capacity(data.y, data.score, folder / "capacity.png"),
        "pr_curve": plot_pr(data.y, data.score, folder / "pr_curve.png"),
        "reliability": plot_reliability(data.y, data.score, folder / "reliability.png"),
        "importance": plot_importance(data.model, folder / "importance.png"),
    }


def _fmt(value: float) -> str:
    return (
        "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"
    )


_METRICS = (
    "average_precision",
    "roc_auc",
    "brier",
    *(f"{m}_at_{capacity_tag(k)}" for k in CAPACITIES for m in ("precision", "recall")),
)


def _table(reports: Sequence[ScoreReport]) -> str:
    head = "".join(f"<th>{html.escape(m)}</th>" for m in _METRICS)
    rows = []
    for r in reports:
        cells = []
        for m in _METRICS:
            text = _fmt(r.metrics.get(m, float("nan")))
            if m in r.intervals:
                iv = r.intervals[m]
                text += f"<br><small>[{iv.low:.3f}, {iv.high:.3f}]</small>"
            cells.append(f"<td>{text}</td>")
        rows.append(f"<tr><th>{html.escape(r.name)}</th>{''.join(cells)}</tr>")
    return f"<table><tr><th>scorer</th>{head}</tr>{''.join(rows)}</table>"


def render_html(data: ReportInput, plots: dict[str, Path]) -> str:
    """One HTML page with every plot embedded as base64: it opens anywhere, offline."""
    images = "".join(
        f'<figure><img alt="{name}" src="data:image/png;base64,'
        f'{base64.b64encode(path.read_bytes()).decode()}"></figure>'
        for name, path in plots.items()
    )
    info = data.model.info
    meta = (
        f"feature set {html.escape(data.model.feature_set)} v"
        f"{html.escape(data.model.feature_version)}, {len(data.model.columns)} columns; "
        f"holdout {html.escape(str(info.get('holdout', '?')))}; "
        f"{int(np.sum(data.y))} offences in {len(data.y):,} test declarations"
    )
    weekly = ""
    if data.weekly is not None and data.weekly.height:
        cols = data.weekly.columns
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in row) + "</tr>"
            for row in data.weekly.iter_rows()
        )
        head = "".join(f"<th>{html.escape(c)}</th>" for c in cols)
        weekly = f"<h2>Week by week</h2><table><tr>{head}</tr>{body}</table>"
    style = (
        "body{font-family:sans-serif;margin:2em;max-width:70em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:.3em .6em;text-align:right}"
        "figure{display:inline-block;margin:.5em}img{max-width:32em}"
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(data.title)}"
        f"</title><style>{style}</style></head><body><h1>{html.escape(data.title)}</h1>"
        f"<p>{meta}</p><h2>Test metrics (95 % bootstrap intervals)</h2>"
        f"{_table(data.reports)}<h2>Plots</h2>{images}{weekly}</body></html>"
    )


def _cell(value: object) -> str:
    if isinstance(value, float):
        return _fmt(value)
    if hasattr(value, "date"):
        return str(value.date())
    return "–" if value is None else str(value)


def write_report(data: ReportInput, folder: Path) -> dict[str, Path]:
    """Plots and ``report.html`` in ``folder``; returns every file by name."""
    plots = write_plots(data, folder)
    page = folder / "report.html"
    page.write_text(render_html(data, plots), encoding="utf-8")
    return {**plots, "report": page}


def write_run_report(
    model: RiskModel,
    test_features: pl.DataFrame,
    y: np.ndarray,
    score: np.ndarray,
    reports: Sequence[ScoreReport],
    folder: Path,
    *,
    title: str = "cites-risk model report",
) -> dict[str, Path]:
    """The report of a training run (:class:`TrainResult` fields), with a weekly backtest."""
    from cites_risk.features.contract import D
    from cites_risk.models.evaluation import weekly_metrics

    weekly = (
        weekly_metrics(test_features.get_column(D.DECLARED_AT), y, score, (0.05,))
        if len(y)
        else None
    )
    return write_report(ReportInput(model, y, score, reports, weekly, title), folder)
