"""Files a rerun trusts: written whole or not at all."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import polars as pl


def atomic_write(path: Path, write: Callable[[Path], object]) -> None:
    """``write`` to a temporary name beside ``path``, then rename: a crash leaves the
    file whole or absent, never cut short (what lets a rerun trust what it finds)."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    tmp.replace(path)


def atomic_parquet(frame: pl.DataFrame, path: Path) -> None:
    atomic_write(path, frame.write_parquet)
