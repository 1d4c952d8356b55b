"""``cites-risk synth``: write a synthetic, ground-truthed scenario as Parquet."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cites_risk.features.reference import load_reference
from cites_risk.profiling.cli.progress import rows_progress
from cites_risk.profiling.synth import write_scenario


def _parse_start(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError as exc:
        raise typer.BadParameter(
            f"not a date (YYYY-MM-DD): {text!r}", param_hint="--start"
        ) from exc


def synth(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Directory to write to (created if missing).")
    ],
    rows: Annotated[
        int, typer.Option("--rows", "-n", min=0, help="Number of declarations.")
    ] = 100_000,
    offences: Annotated[
        int | None,
        typer.Option(
            "--offences",
            min=0,
            help="Offence records known before this run (history and foreign intelligence). "
            "Default: scaled to --rows.",
        ),
    ] = None,
    seed: Annotated[
        int, typer.Option("--seed", help="Random seed; the same seed gives the same data.")
    ] = 0,
    start: Annotated[
        str, typer.Option("--start", help="First day of the period (YYYY-MM-DD).")
    ] = "2024-01-01",
    days: Annotated[int, typer.Option("--days", min=1, help="Length of the period in days.")] = 365,
    chunk_rows: Annotated[
        int, typer.Option("--chunk-rows", min=1, help="Declarations per Parquet part file.")
    ] = 1_000_000,
) -> None:
    """Generate a realistic synthetic scenario with planted trafficking patterns.

    Writes declarations/, inspections/ and truth/ as Parquet parts (one per chunk).

    offences.parquet holds the offence history and this run's seizures.

    manifest.json records the seed, sizes and how often each pattern was planted.

    Deterministic: the same --seed and sizes give the same data, whatever --chunk-rows is.
    """
    first_day = _parse_start(start)
    console = Console(stderr=True)
    reference = load_reference()
    with rows_progress(console) as progress:
        task = progress.add_task("synth", total=rows)

        def advance(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        manifest = write_scenario(
            out,
            rows,
            seed=seed,
            reference=reference,
            start=first_day,
            days=days,
            n_offences=offences,
            chunk_rows=chunk_rows,
            progress=advance,
        )
    console.print(_summary(manifest, out))


def _summary(manifest: dict[str, Any], out: Path) -> Table:
    table = Table(title=f"scenario written to {out}", show_header=True)
    table.add_column("what")
    table.add_column("count", justify="right")
    for name, count in manifest["sizes"].items():
        table.add_row(name, f"{count:,}")
    for name, stats in manifest["patterns"].items():
        table.add_row(f"pattern {name}", f"{stats['declarations']:,}")
    table.add_row("prevalence", f"{manifest['prevalence']:.3%}")
    return table
