"""``cites-risk models ...``: list registered models, compare them, promote one."""

from __future__ import annotations

import math
from typing import Annotated

import typer
from rich.table import Table

from cites_risk.models.registry import PROMOTION_METRICS, compare, not_comparable
from cites_risk.models.tracking import CHAMPION, RegistryError, candidate, list_versions, promote
from cites_risk.profiling.cli.context import console, fail, open_context
from cites_risk.profiling.store import Topic
from cites_risk.profiling.workflows import tracking_for

models_app = typer.Typer(help="Registered models: list, compare, promote.", no_args_is_help=True)

SHOWN = ("average_precision", "recall_at_5", "precision_at_5", "roc_auc", "brier")


def _num(value: float | None) -> str:
    return "–" if value is None or math.isnan(value) else f"{value:.3f}"


@models_app.command("list")
def list_models() -> None:
    """Every registered version with its aliases, holdout and test metrics."""
    with open_context() as ctx:
        versions = list_versions(tracking_for(ctx.settings))
        ctx.audit("model.list", None, rows=len(versions))
    if not versions:
        console.print("no registered models yet: run cites-risk train")
        return
    table = Table(title="Registered models")
    for col in ("version", "aliases", "features", "holdout", *SHOWN):
        table.add_column(col, justify="right" if col in SHOWN else "left")
    for v in versions:
        tags = v["tags"]
        table.add_row(
            v["version"],
            ", ".join(v["aliases"]),
            f"{tags.get('feature_set', '?')} v{tags.get('feature_version', '?')}",
            tags.get("holdout", "?"),
            *(_num(v["metrics"].get(m)) for m in SHOWN),
        )
    console.print(table)


@models_app.command("compare")
def compare_models(
    challenger: Annotated[str, typer.Argument(help="Version or alias.")] = "challenger",
    champion: Annotated[str, typer.Argument(help="Version or alias.")] = CHAMPION,
) -> None:
    """Side by side on the promotion metrics, and whether the holdouts match."""
    with open_context() as ctx:
        tracking = tracking_for(ctx.settings)
        a, b = candidate(tracking, challenger), candidate(tracking, champion)
        ctx.audit("model.compare", None, challenger=challenger, champion=champion)
    if a is None or b is None:
        raise fail(f"unknown model {challenger if a is None else champion!r}")
    deltas = compare(a, b, SHOWN)
    table = Table(title=f"v{a.version} vs v{b.version}")
    for col in ("metric", f"v{a.version}", f"v{b.version}", "difference"):
        table.add_column(col, justify="left" if col == "metric" else "right")
    for m in SHOWN:
        mark = " *" if m in PROMOTION_METRICS else ""
        table.add_row(m + mark, _num(a.metrics.get(m)), _num(b.metrics.get(m)), _num(deltas[m]))
    console.print(table)
    # The promotion gate's own test: the same tag may cover other rows (an open holdout).
    apart = not_comparable(a, b)
    console.print(
        f"holdout: {a.tags.get('holdout', '?')} vs {b.tags.get('holdout', '?')} "
        f"({'; '.join(apart) if apart else 'same test rows'}); * = promotion metric"
    )


@models_app.command("promote")
def promote_model(
    version: Annotated[str, typer.Argument(help="Version (or alias) to make champion.")],
    force: Annotated[
        bool, typer.Option("--force", help="Promote even if worse or not comparable (audited).")
    ] = False,
) -> None:
    """Make a version champion; refused if it is worse than the champion unless --force."""
    with open_context() as ctx:
        tracking = tracking_for(ctx.settings)
        found = candidate(tracking, version)
        if found is None:
            raise fail(f"no model version {version!r}")
        try:
            decision = promote(tracking, found.version, force=force)
        except RegistryError as exc:
            raise fail(str(exc)) from exc
        if not decision.allowed:
            ctx.audit("model.promote.refused", found.version, reasons=decision.reasons)
            raise fail(
                f"not promoted: {decision.summary}. Use --force to promote anyway (audited)."
            )
        if decision.unchanged:  # already champion: no promotion to audit or announce
            console.print(decision.summary)
            return
        ctx.store.audit.record(
            ctx.actor,
            "model.promote",
            found.version,
            forced=decision.needs_force,
            reasons=decision.reasons,
            deltas={k: v for k, v in decision.deltas.items() if not math.isnan(v)},
        )
        # A running API notices on its next request and loads the new champion.
        ctx.store.changed(Topic.CHAMPION)
    note = f" (forced: {decision.summary})" if decision.needs_force else ""
    console.print(f"version {found.version} is now champion{note}")
