"""``cites-risk score-dask`` and ``train-dask``: batch scoring and training on a Dask cluster.

Register in ``app.py``::

    from cites_risk.profiling.cli.scale_cmd import score_dask_cmd, train_dask_cmd

    app.command("score-dask")(score_dask_cmd)
    app.command("train-dask")(train_dask_cmd)
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from cites_risk.profiling.cli.context import Context, console, fail, open_context
from cites_risk.profiling.distributed import (
    HistoryFiles,
    Partition,
    ScoreJob,
    TrainJob,
    partitions,
    run_score_dask,
    run_train_dask,
)
from cites_risk.profiling.fast_score import DEFAULT_EXPLAIN_SHARE
from cites_risk.profiling.history_store import DeclarationHistory, history_for

DaskOpt = Annotated[
    str | None,
    typer.Option(
        "--dask",
        metavar="ADDRESS",
        help="Scheduler address, e.g. tcp://10.0.0.5:8786 (default: a local cluster).",
    ),
]
SourcesArg = Annotated[
    list[Path],
    typer.Argument(
        help="A synthetic scenario folder (cites-risk synth) or Parquet files of declarations "
        "in the contract schema. Every worker must be able to read these paths."
    ),
]


def _inputs(ctx: Context, sources: list[Path], work: Path) -> tuple[list[Path], HistoryFiles]:
    """Declaration files and the shared history (the scenario's, or the store's, lodged)."""
    if len(sources) == 1 and (sources[0] / "manifest.json").exists():
        files = HistoryFiles.of_scenario(sources[0])
        return list(files.declarations), files
    missing = [s for s in sources if not s.is_file()]
    if missing:
        raise fail(f"not a file: {missing[0]}")
    stored = history_for(
        ctx.store, DeclarationHistory(ctx.settings.history_dir), ctx.actor.organisation
    )
    written = HistoryFiles.write(stored, work / "_history")
    # The batch is lodged: its own lines are history for each other (consignment siblings).
    return sources, HistoryFiles(
        (*written.declarations, *sources), written.offences, written.inspections
    )


def _model_folder(ctx: Context, model: str) -> tuple[Path, str]:
    as_path = Path(model)
    if (as_path / "model.json").exists():
        return as_path, as_path.name
    from cites_risk.models.tracking import load_model
    from cites_risk.profiling.workflows import tracking_for

    loaded, version = load_model(tracking_for(ctx.settings), model)
    folder = ctx.settings.home / "models" / f"v{version}"
    if not (folder / "model.json").exists():
        loaded.save(folder)
    return folder, version


def score_dask_cmd(
    sources: SourcesArg,
    out: Annotated[Path, typer.Option(help="Output folder of part-*.parquet.")],
    dask: DaskOpt = None,
    model: Annotated[
        str, typer.Option(help="Model alias or version in MLflow, or a saved model folder.")
    ] = "champion",
    partition_rows: Annotated[
        int | None, typer.Option(help="Cut files into partitions of this many rows.")
    ] = None,
    fast: Annotated[
        bool,
        typer.Option(help="Compiled trees; model reasons for the top --explain-share only."),
    ] = True,
    explain_share: Annotated[
        float, typer.Option(help="Share of each partition given model reasons (--fast).")
    ] = DEFAULT_EXPLAIN_SHARE,
    workers: Annotated[int, typer.Option(help="Workers of the local cluster (no --dask).")] = 2,
) -> None:
    """Score declarations on a Dask cluster into resumable parts (rerun to resume)."""
    from cites_risk.profiling.distributed import dask_client, score_dask

    with open_context() as ctx:
        out.mkdir(parents=True, exist_ok=True)
        files, history = _inputs(ctx, sources, out)
        folder, version = _model_folder(ctx, model)
        parts: list[Partition] = partitions(files, partition_rows)
        job = ScoreJob(folder, history, out, version, fast=fast, explain_share=explain_share)

        def progress(done: int, total: int) -> None:
            console.print(f"  {done}/{total} parts", end="\r")

        if dask is None:
            with dask_client(None, n_workers=workers) as client:
                result = score_dask(client, parts, job, progress=progress)
        else:
            result = run_score_dask(dask, parts, job, progress=progress)
        ctx.store.audit.record(
            ctx.actor, "score.dask", str(out), rows=result.rows_scored, model_version=version
        )
    rate = result.rows_scored / max(result.seconds, 1e-9)
    if result.kept_recorded_partitions:
        console.print(
            f"{out} was started with other partitions of these files: kept them "
            f"({len(result.parts)} parts), so no row is lost or scored twice"
        )
    console.print(
        f"scored {result.rows_scored:,} declarations in {len(result.parts)} parts "
        f"({result.parts_skipped} already done) in {result.seconds:.1f} s, {rate:,.0f} rows/s "
        f"-> {out}"
    )


def train_dask_cmd(
    sources: SourcesArg,
    valid_from: Annotated[
        str, typer.Option(help="Rows from this day (YYYY-MM-DD) calibrate; earlier ones train.")
    ],
    out: Annotated[Path, typer.Option(help="Folder to save the trained model in.")],
    dask: DaskOpt = None,
    rounds: Annotated[int, typer.Option(help="Boosting rounds (trees).")] = 300,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Train a model on the inspected declarations with LightGBM on a Dask cluster."""
    try:
        start = datetime.fromisoformat(valid_from).replace(tzinfo=UTC)
    except ValueError as exc:
        raise fail(f"not a date (YYYY-MM-DD): {valid_from!r}") from exc
    with open_context() as ctx:
        work = out.parent / f".{out.name}.work"
        files, history = _inputs(ctx, sources, work)
        job = TrainJob(history, work, start)
        model = run_train_dask(dask, partitions(files), job, num_boost_round=rounds, seed=seed)
        model.save(out)
        ctx.store.audit.record(ctx.actor, "model.train.dask", str(out), **model.info["rows"])
    console.print(f"trained {model.booster.num_trees()} trees -> {out}")
