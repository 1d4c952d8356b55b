"""Progress bars of the commands that stream rows: count, rows per second, ETA."""

from __future__ import annotations

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class RowsPerSecond(ProgressColumn):
    """Throughput in declarations per second (rich's speed column speaks bytes)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        label = "? rows/s" if speed is None else f"{speed:,.0f} rows/s"
        return Text(label, style="progress.data.speed")


def rows_progress(console: Console) -> Progress:
    """A bar per task (its description in bold) with rows done, rows/s, elapsed and ETA."""
    return Progress(
        TextColumn("[bold]{task.description}[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        RowsPerSecond(),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console,
    )
