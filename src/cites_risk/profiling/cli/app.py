"""The ``cites-risk`` command line: ingest, train, score, serve, demo and the sub-commands."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from cites_risk.models.evaluation import CAPACITIES, capacity_count, capacity_tag
from cites_risk.models.training import Split
from cites_risk.profiling import workflows
from cites_risk.profiling.cli.context import console, fail, open_context
from cites_risk.profiling.cli.models_cmd import models_app
from cites_risk.profiling.cli.profiles_cmd import profiles_app, watchlist_app
from cites_risk.profiling.cli.progress import rows_progress
from cites_risk.profiling.cli.scale_cmd import score_dask_cmd, train_dask_cmd
from cites_risk.profiling.cli.synth_cmd import synth
from cites_risk.profiling.cli.users_cmd import users_app
from cites_risk.profiling.selection import SelectionConfig, SelectionReport
from cites_risk.profiling.sources import LEMIS_SAMPLE, InputError, available_mappings

app = typer.Typer(
    name="cites-risk",
    help=(
        "Consignment risk profiling for customs: scores declarations for the risk that they "
        "hide CITES-listed wildlife, and says why. Settings come from CITES_RISK_* "
        "environment variables (see README)."
    ),
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

MappingOpt = Annotated[
    str,
    typer.Option(
        "--mapping",
        "-m",
        help=f"Source mapping: a YAML file, or one of {', '.join(available_mappings())}.",
    ),
]


def _date(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        return datetime.fromisoformat(text).replace(tzinfo=UTC)
    except ValueError as exc:
        raise fail(f"not a date (YYYY-MM-DD): {text!r}") from exc


@contextmanager
def _progress(title: str) -> Iterator[Callable[[str], None]]:
    """A live line per long step with its elapsed time; each call starts the next step."""
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(bar_width=None),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    ) as progress:
        current: list[TaskID] = []

        def step(text: str) -> None:
            if current:
                progress.update(current[-1], completed=1, total=1)
            current.append(progress.add_task(f"{title}: {text}", total=None))

        yield step
        if current:
            progress.update(current[-1], completed=1, total=1)


def _capacity_table(metrics: dict[str, float], what: str) -> Table:
    table = Table(title=f"Inspection capacity on {what}")
    table.add_column("inspect top", justify="right")
    table.add_column("inspected", justify="right")
    table.add_column("precision", justify="right")
    table.add_column("recall", justify="right")
    n = int(metrics.get("n", 0))
    for k in CAPACITIES:
        tag = capacity_tag(k)
        table.add_row(
            f"{tag} %",
            f"{capacity_count(k, n):,}",
            f"{metrics[f'precision_at_{tag}']:.3f}",
            f"{metrics[f'recall_at_{tag}']:.3f}",
        )
    return table


@app.command()
def ingest(
    source: Annotated[Path, typer.Argument(help="CSV or Parquet file to load.")],
    mapping: MappingOpt = "lemis",
    rejects_dir: Annotated[
        Path | None, typer.Option(help="Where rejects files go (default: output dir).")
    ] = None,
    chunk_rows: Annotated[
        int, typer.Option(min=1, help="Source lines read, checked and stored at a time.")
    ] = workflows.INGEST_CHUNK_ROWS,
) -> None:
    """Load declarations, offence records and inspection results from a source.

    Every row is checked against the data contract; bad rows are written to a rejects CSV
    (row, field, value, reason) and every valid row is loaded. The source is read in
    chunks, so its size is not bounded by memory. Loading the same file again replaces,
    never duplicates: a load cut short is simply run again.
    """
    with open_context() as ctx, rows_progress(console) as bars:
        task = bars.add_task(f"ingest {source.name}", total=None)

        def read(done: int, _: int | None) -> None:
            bars.update(task, completed=done)

        try:
            result = workflows.ingest(
                ctx.settings,
                ctx.store,
                ctx.reference,
                source,
                mapping,
                ctx.actor,
                rejects_dir=rejects_dir,
                progress=read,
                chunk_rows=chunk_rows,
            )
        except InputError as exc:
            raise fail(str(exc)) from exc
        bars.update(task, total=bars.tasks[task].completed)
    for record, tally in result.tallies.items():
        console.print(f"{record}: {tally.summary}")
        if record in result.rejects_files:
            console.print(f"  rejects written to {result.rejects_files[record]}")


@app.command()
def train(
    mapping: MappingOpt = "lemis",
    valid_from: Annotated[str, typer.Option(help="First day of the validation period.")] = (
        "2019-07-01"
    ),
    test_from: Annotated[str, typer.Option(help="First day of the test period.")] = "2020-01-01",
    test_until: Annotated[
        str | None, typer.Option(help="Day after the test period (default: open).")
    ] = None,
    seed: Annotated[int, typer.Option(help="Random seed (training is deterministic).")] = 0,
    bag: Annotated[
        int,
        typer.Option(
            min=1,
            help="Seeds averaged into one model: steadier rankings for rare labels (a few "
            "dozen positives), at that many times the training time.",
        ),
    ] = 1,
) -> str | None:
    """Train a LightGBM model on the ingested history and register it in MLflow.

    Trains before --valid-from, stops early and calibrates on the validation period, refits
    on both, and reports precision and recall at 1, 2, 5 and 10 % capacity on the test
    period. The first model becomes champion, later ones challenger.
    """
    split = Split(_date(valid_from), _date(test_from), _date(test_until))  # type: ignore[arg-type]
    with open_context() as ctx, _progress("train") as step:
        try:
            outcome = workflows.train(
                ctx.settings,
                ctx.store,
                ctx.reference,
                split,
                ctx.actor,
                mapping_name=mapping,
                seed=seed,
                bag=bag,
                progress=step,
            )
        except (InputError, ValueError) as exc:
            raise fail(str(exc)) from exc
    console.print(f"model version {outcome.version} (run {outcome.run_id}); sizes: {outcome.sizes}")
    if outcome.metrics:
        console.print(
            f"test: ROC AUC {outcome.metrics['roc_auc']:.3f}, average precision "
            f"{outcome.metrics['average_precision']:.3f}"
        )
        console.print(_capacity_table(outcome.metrics, f"the test period from {test_from}"))
    if outcome.reports:
        n = int(outcome.metrics.get("n", 0))
        table = Table(
            title=f"Model and baselines on the same {n:,} test declarations "
            "(95 % bootstrap intervals)"
        )
        for col in ("scorer", "average precision", "ROC AUC", "precision @5 %", "recall @5 %"):
            table.add_column(col, justify="left" if col == "scorer" else "right")
        for r in outcome.reports:
            cells = []
            for key in ("average_precision", "roc_auc", "precision_at_5", "recall_at_5"):
                v, ci = r.metrics.get(key, float("nan")), r.intervals.get(key)
                cells.append(f"{v:.3f}" + (f" [{ci.low:.2f}, {ci.high:.2f}]" if ci else ""))
            table.add_row(r.name, *cells)
        console.print(table)
    return outcome.version


@app.command()
def score(
    source: Annotated[Path, typer.Argument(help="CSV or Parquet file of declarations.")],
    mapping: MappingOpt = "lemis",
    out: Annotated[
        Path | None,
        typer.Option(help="Output path without extension (default: <output dir>/scored)."),
    ] = None,
    start: Annotated[str | None, typer.Option(help="Score declarations from this day.")] = None,
    end: Annotated[str | None, typer.Option(help="... up to (not including) this day.")] = None,
    model: Annotated[str, typer.Option(help="Model alias or version.")] = "champion",
    capacity: Annotated[
        float, typer.Option(help="Share of traffic that can be inspected (0.05 = 5 %).")
    ] = 0.05,
    pool: Annotated[
        str,
        typer.Option(help="office_day: capacity per office and day; batch: one quota."),
    ] = "office_day",
    random_share: Annotated[
        float, typer.Option(help="Share of traffic inspected at random (recorded as random).")
    ] = 0.02,
    chunk_rows: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Stream the file in chunks of this many rows, in bounded memory, into a "
            "folder of part-*.parquet and decisions.parquet (--out, default <output dir>/"
            "scored); rerun the same command to resume after a crash.",
        ),
    ] = None,
) -> None:
    """Score a batch: final risk, lane (red / yellow / green), selection within capacity.

    Writes a ranked Parquet and CSV with each declaration's lane, how it was selected and
    its reasons (profiles hit, the model's main contributions, the species match). Where
    inspection results of the scored declarations are known, also prints precision and
    recall at 1, 2, 5 and 10 % capacity and what model, profiles and both would have found.
    With --chunk-rows, a file larger than memory is scored in chunks instead (see there).
    """
    try:
        config = SelectionConfig.model_validate(
            {"capacity_share": capacity, "pool": pool, "random_share": random_share}
        )
    except ValueError as exc:
        raise fail(f"invalid selection settings: {exc}") from exc
    if chunk_rows is not None:
        if start or end:
            raise fail("--start and --end filter a batch held in memory: not with --chunk-rows")
        _score_in_chunks(source, mapping, out, model, config, chunk_rows)
        return
    with open_context() as ctx, _progress("score") as step:
        try:
            outcome = workflows.score_file(
                ctx.settings,
                ctx.store,
                ctx.reference,
                source,
                mapping,
                ctx.actor,
                out=out or ctx.settings.output_dir / "scored",
                start=_date(start),
                end=_date(end),
                model_ref=model,
                selection=config,
                progress=step,
            )
        except InputError as exc:
            raise fail(str(exc)) from exc
        except RuntimeError as exc:
            raise fail(str(exc)) from exc
    console.print(
        f"scored {outcome.rows:,} declarations with model v{outcome.model_version}; "
        f"{outcome.rejected_rows} rows rejected"
    )
    for kind, path in outcome.output.items():
        console.print(f"  {kind}: {path}")
    _print_lanes(outcome.lanes, outcome.report)
    if outcome.metrics:
        console.print(_capacity_table(outcome.metrics, f"{outcome.rows:,} scored declarations"))
    if outcome.comparison:
        table = Table(
            title=f"Who finds the offences at {capacity:.0%} capacity ({pool}, no random share)"
        )
        for col in ("selection", "inspected", "offences found", "precision", "recall"):
            table.add_column(col, justify="left" if col == "selection" else "right")
        for r in outcome.comparison:
            table.add_row(
                r.name,
                f"{r.inspected:,}",
                f"{r.found:,} of {r.positives:,}",
                f"{r.precision:.3f}",
                f"{r.recall:.3f}",
            )
        console.print(table)


def _score_in_chunks(
    source: Path,
    mapping: str,
    out: Path | None,
    model: str,
    config: SelectionConfig,
    chunk_rows: int,
) -> None:
    with open_context() as ctx, rows_progress(console) as bars:
        out_dir = out or ctx.settings.output_dir / "scored"
        lodge = bars.add_task("lodge", total=None)
        score = bars.add_task("score", total=None, start=False)

        def lodged(done: int, _: int | None) -> None:
            bars.update(lodge, completed=done)

        def scored(done: int, total: int | None) -> None:
            if not bars.tasks[score].started:
                bars.update(lodge, total=total, completed=total)
                bars.start_task(score)
            bars.update(score, completed=done, total=total)

        try:
            outcome = workflows.score_file_in_chunks(
                ctx.settings,
                ctx.store,
                ctx.reference,
                source,
                mapping,
                ctx.actor,
                out_dir=out_dir,
                chunk_rows=chunk_rows,
                model_ref=model,
                selection=config,
                progress=scored,
                lodging=lodged,
            )
        except (InputError, RuntimeError) as exc:
            raise fail(str(exc)) from exc
    result = outcome.result
    console.print(
        f"scored {result.rows_scored:,} declarations with model v{outcome.model_version} in "
        f"{len(result.parts)} parts; {result.rows_rejected} rows rejected"
    )
    console.print(f"  parts: {result.out_dir}/part-*.parquet")
    for what, path in (("decisions", result.decisions_path), ("rejects", result.rejects_path)):
        if path is not None:
            console.print(f"  {what}: {path}")
    _print_lanes(outcome.lanes, result.report)


def _print_lanes(lanes: dict[str, int], report: SelectionReport | None) -> None:
    """How many declarations each lane got, and the profiles suspended as runaway."""
    counts = ", ".join(f"{lane} {n:,}" for lane, n in sorted(lanes.items()))
    console.print(f"lanes: {counts or 'none (no rows)'}")
    for s in report.suspended if report is not None else ():
        console.print(
            f"[yellow]profile {s.profile_id} suspended[/]: hit {s.hits:,} declarations "
            f"({s.share:.1%} of traffic), above the runaway limit"
        )


@app.command()
def demo(
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Run the main job on the bundled LEMIS sample, end to end.

    Ingests US LEMIS amphibian imports 2016-2021 (real data, refused = action R), trains on
    2016-2019, registers the model in MLflow, scores 2020-2021 as one batch, writes the
    ranked output and prints precision and recall at 1, 2, 5 and 10 % capacity.
    """
    started = time.perf_counter()
    console.rule("cites-risk demo: LEMIS amphibian imports")
    ingest(LEMIS_SAMPLE, mapping="lemis", rejects_dir=None, chunk_rows=workflows.INGEST_CHUNK_ROWS)
    with open_context() as ctx:
        changed = workflows.install_starter_profiles(ctx.store, ctx.actor)
    console.print(f"starter risk profiles: {changed} installed or updated")
    version = train(
        mapping="lemis", valid_from="2019-07-01", test_from="2020-01-01", test_until=None, seed=seed
    )
    # The model just trained, champion or not: in a home that already has a champion (a
    # second demo, perhaps after an upgrade) it is a challenger, and the tables above are its.
    score(
        LEMIS_SAMPLE,
        mapping="lemis",
        out=None,
        start="2020-01-01",
        end=None,
        model=version or "champion",
        capacity=0.05,
        pool="batch",
        random_share=0.02,
    )
    console.print(f"demo finished in {time.perf_counter() - started:.0f} s")


app.command()(synth)
app.add_typer(profiles_app, name="profiles")
app.add_typer(watchlist_app, name="watchlist")
app.add_typer(users_app, name="users")
app.add_typer(models_app, name="models")
app.command("score-dask")(score_dask_cmd)
app.command("train-dask")(train_dask_cmd)
