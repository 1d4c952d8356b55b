"""``cites-risk profiles ...`` and ``cites-risk watchlist ...``: analysts' commands."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import polars as pl
import typer
from rich.table import Table

from cites_risk.features.contract import D
from cites_risk.features.history import History
from cites_risk.features.pipeline import build_features, collect_features
from cites_risk.profiling.cli.context import Context, console, fail, open_context
from cites_risk.profiling.profiles.backtest import BacktestResult, attach_outcomes, backtest
from cites_risk.profiling.profiles.model import (
    STARTER_PATH,
    EntityKind,
    Profile,
    ProfileError,
    dump_profiles_yaml,
    load_profiles_yaml,
)
from cites_risk.profiling.profiles.report import write_report
from cites_risk.profiling.profiles.repository import ProfileRepository
from cites_risk.profiling.profiles.watchlist import WatchlistRepository
from cites_risk.profiling.sources import InputError, load_mapping, load_records

profiles_app = typer.Typer(help="Rule profiles: import, list, enable/disable, backtest, report.")
watchlist_app = typer.Typer(help="Watch-lists of importers, exporters and declarants.")

SourceArg = Annotated[Path, typer.Argument(help="Inspected history (declarations + results).")]
MappingOpt = Annotated[str, typer.Option("--mapping", "-m", help="Source mapping name or file.")]


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _history_frame(ctx: Context, source: Path, mapping_name: str) -> pl.DataFrame:
    """Declarations + point-in-time features + outcomes of an inspected source."""
    try:
        mapping = load_mapping(mapping_name)
        decl = load_records(source, mapping, "declaration", ctx.reference).accepted
        insp = (
            load_records(source, mapping, "inspection", ctx.reference).accepted
            if "inspection" in mapping.records
            else ctx.store.inspections.all()
        )
    except InputError as exc:
        raise fail(str(exc)) from exc
    offences = ctx.store.offences.visible_to(ctx.settings.organisation)
    history = History(decl.lazy(), offences.lazy(), insp.lazy())
    features = collect_features(
        build_features(decl.lazy(), history, ctx.reference, mapping.extra_kinds)
    )
    own = [c for c in decl.columns if c == D.ID or c not in features.columns]
    frame = decl.select(own).join(features, on=D.ID, how="left", maintain_order="left")
    return attach_outcomes(frame, insp)


def _resolve(ctx: Context, profile: str) -> Profile:
    """A stored profile id, or a YAML file holding exactly one profile."""
    path = Path(profile)
    if path.suffix in (".yaml", ".yml") and path.exists():
        try:
            loaded = load_profiles_yaml(path)
        except ProfileError as exc:
            raise fail(str(exc)) from exc
        if len(loaded) != 1:
            raise fail(f"{path} holds {len(loaded)} profiles; backtest takes one")
        return loaded[0]
    stored = ProfileRepository(ctx.store).get(profile)
    if stored is None:
        raise fail(f"no profile {profile!r} (give a stored id or a YAML file)")
    return stored.profile


@profiles_app.command("import")
def import_cmd(
    path: Annotated[Path, typer.Argument(help="YAML file of profiles.")] = STARTER_PATH,
) -> None:
    """Import (create or update) profiles from YAML; default: the starter library."""
    with open_context() as ctx:
        try:
            results = ProfileRepository(ctx.store).import_yaml(path, ctx.actor)
        except ProfileError as exc:
            raise fail(str(exc)) from exc
        for r in results:
            state = r.action or "unchanged"
            console.print(f"{r.stored.profile.id}: {state} (version {r.stored.version})")


@profiles_app.command("list")
def list_cmd(
    enabled_only: Annotated[bool, typer.Option("--enabled", help="Only enabled.")] = False,
) -> None:
    """Stored profiles with their version, effect and validity."""
    with open_context() as ctx:
        table = Table("id", "title", "ver", "on", "weight", "lane", "valid", "owner")
        stored = ProfileRepository(ctx.store).all(enabled_only=enabled_only)
        ctx.audit("profile.list", None, rows=len(stored))
        for s in stored:
            p = s.profile
            valid = f"{p.valid_from or '…'} – {p.valid_to or '…'}"
            table.add_row(
                p.id,
                p.title,
                str(s.version),
                "yes" if p.enabled else "no",
                "" if p.weight is None else f"{p.weight:.2f}",
                p.lane.value if p.lane else "",
                valid,
                p.owner,
            )
        console.print(table)


@profiles_app.command("show")
def show_cmd(profile_id: str) -> None:
    """A profile as YAML, then its version history."""
    with open_context() as ctx:
        repo = ProfileRepository(ctx.store)
        stored = repo.get(profile_id)
        ctx.audit("profile.get", profile_id, found=stored is not None)
        if stored is None:
            raise fail(f"no profile {profile_id!r}")
        console.print(dump_profiles_yaml([stored.profile]))
        for v in repo.history(profile_id):
            fields = ", ".join(v.change.get("fields", []))
            console.print(f"v{v.version} {v.changed_at:%Y-%m-%d %H:%M} {v.changed_by}: {fields}")


@profiles_app.command("export")
def export_cmd(
    out: Annotated[Path | None, typer.Option(help="File; default stdout.")] = None,
) -> None:
    """All stored profiles as one YAML document (re-importable)."""
    with open_context() as ctx:
        stored = ProfileRepository(ctx.store).all()
        ctx.audit("profile.export", None, rows=len(stored))
        text = dump_profiles_yaml([s.profile for s in stored])
    if out is None:
        console.print(text, markup=False)
    else:
        out.write_text(text, encoding="utf-8")


def _set_enabled(profile_id: str, enabled: bool) -> None:
    with open_context() as ctx:
        try:
            result = ProfileRepository(ctx.store).set_enabled(profile_id, enabled, ctx.actor)
        except KeyError as exc:
            raise fail(f"no profile {profile_id!r}") from exc
        console.print(f"{profile_id}: {result.action or 'unchanged'}")


@profiles_app.command("disable")
def disable_cmd(profile_id: str) -> None:
    """Stop a profile from hitting (versioned and audited)."""
    _set_enabled(profile_id, False)


@profiles_app.command("enable")
def enable_cmd(profile_id: str) -> None:
    """Let a disabled profile hit again (versioned and audited)."""
    _set_enabled(profile_id, True)


def _print_backtest(result: BacktestResult) -> None:
    summary = Table("measure", "value", title=f"Backtest of {result.profile_id}")
    summary.add_row("declarations / days", f"{result.rows} / {result.days}")
    summary.add_row("projected hits", f"{result.hits} ({_pct(result.share)} of traffic)")
    summary.add_row(
        "hits per day (mean / max)", f"{result.hits_per_day:.2f} / {result.max_hits_per_day}"
    )
    summary.add_row("inspected among hits", str(result.inspected_hits))
    summary.add_row("offences among inspected hits", str(result.positives))
    summary.add_row("hit rate", _pct(result.hit_rate))
    summary.add_row("baseline hit rate (all inspected)", _pct(result.baseline_hit_rate))
    summary.add_row("lift", "–" if result.lift is None else f"{result.lift:.2f}×")
    summary.add_row("hit rate in the random stream", _pct(result.random_hit_rate))
    console.print(summary)
    busiest = result.daily.filter(pl.col("hits") > 0).sort("hits", descending=True).head(10)
    if busiest.height:
        days = Table("day", "traffic", "hits", "inspected", "offences", title="Busiest days")
        for row in busiest.iter_rows(named=True):
            days.add_row(
                str(row["day"]),
                str(row["traffic"]),
                str(row["hits"]),
                str(row["inspected"]),
                str(row["positives"]),
            )
        console.print(days)


@profiles_app.command("backtest")
def backtest_cmd(
    profile: Annotated[str, typer.Argument(help="Stored profile id or a one-profile YAML file.")],
    source: SourceArg,
    mapping: MappingOpt = "lemis",
) -> None:
    """Projected hits per day and hit rate on an inspected history, before going live."""
    with open_context() as ctx:
        chosen = _resolve(ctx, profile)
        frame = _history_frame(ctx, source, mapping)
        watch = WatchlistRepository(ctx.store).index(ctx.actor.organisation)
        try:
            result = backtest(frame, chosen, watchlist=watch)
        except ProfileError as exc:
            raise fail(str(exc)) from exc
        # It reads the consent-filtered offence records and the watch-lists.
        ctx.audit("profile.backtest", chosen.id, source=str(source), rows=result.rows)
        _print_backtest(result)


@profiles_app.command("report")
def report_cmd(
    source: SourceArg,
    mapping: MappingOpt = "lemis",
    out: Annotated[Path, typer.Option(help="HTML file to write.")] = Path("report.html"),
) -> None:
    """Weekly hits, share of traffic and hit rate per stored profile, as one HTML file."""
    with open_context() as ctx:
        profiles = [s.profile for s in ProfileRepository(ctx.store).all()]
        if not profiles:
            raise fail("no stored profiles; run `cites-risk profiles import` first")
        frame = _history_frame(ctx, source, mapping)
        watch = WatchlistRepository(ctx.store).index(ctx.actor.organisation)
        try:
            path = write_report(frame, profiles, out, watchlist=watch)
        except ProfileError as exc:
            raise fail(str(exc)) from exc
        ctx.audit("profile.report", None, source=str(source), rows=frame.height, out=str(path))
        console.print(f"wrote {path}")


def _expiry(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise fail(f"not a date or time (YYYY-MM-DD[THH:MM]): {text!r}") from exc
    return value if value.tzinfo else value.replace(tzinfo=UTC)


@watchlist_app.command("add")
def watch_add(
    kind: Annotated[EntityKind, typer.Argument(help="importer, exporter or declarant.")],
    name: str,
    reason: Annotated[str, typer.Option(help="Why the party is watched (kept and audited).")],
    expires: Annotated[str | None, typer.Option(help="Expiry date (UTC).")] = None,
) -> None:
    """Add a party to a watch-list."""
    with open_context() as ctx:
        try:
            entry = WatchlistRepository(ctx.store).add(
                kind, name, reason, ctx.actor, _expiry(expires)
            )
        except ValueError as exc:
            raise fail(str(exc)) from exc
        console.print(f"added {entry.entry_id} ({entry.kind.value} {entry.name!r})")


@watchlist_app.command("remove")
def watch_remove(entry_id: str) -> None:
    """Remove an entry (the audit log keeps what it was)."""
    with open_context() as ctx:
        if not WatchlistRepository(ctx.store).remove(entry_id, ctx.actor):
            raise fail(f"no watch-list entry {entry_id!r}")
        console.print(f"removed {entry_id}")


@watchlist_app.command("list")
def watch_list(
    kind: Annotated[EntityKind | None, typer.Option(help="Only this kind.")] = None,
    include_expired: Annotated[bool, typer.Option("--all", help="Expired too.")] = False,
) -> None:
    """Watch-list entries (active ones unless --all)."""
    with open_context() as ctx:
        table = Table("id", "kind", "name", "reason", "expires", "added by")
        entries = WatchlistRepository(ctx.store).entries(
            ctx.actor.organisation, kind, include_expired=include_expired
        )
        ctx.audit("watchlist.list", None, rows=len(entries))
        for e in entries:
            expires = f"{e.expires_at:%Y-%m-%d}" if e.expires_at else ""
            table.add_row(e.entry_id, e.kind.value, e.name, e.reason, expires, e.added_by)
        console.print(table)


@watchlist_app.command("match")
def watch_match(kind: EntityKind, name: str) -> None:
    """Which active entry a name would match, and how closely."""
    with open_context() as ctx:
        found = WatchlistRepository(ctx.store).index(ctx.actor.organisation).match(kind, [name])
        ctx.audit("watchlist.match", name, kind=kind.value, found=name in found)
    if name in found:
        console.print(found[name].sentence(kind))
    else:
        console.print(f"{name!r} matches no active {kind.value} entry")
