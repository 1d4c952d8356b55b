"""Declaration history kept as Parquet files: columnar, appendable, cheap to scan.

Declarations are many and read in bulk by the features, so they live beside the SQL store,
one file per ingested batch; a batch written again replaces its file, so reruns never
duplicate. A declaration lodged in several batches is the one written last: a correction
sent later replaces what was lodged before. Offences and inspections (few, consent-filtered,
edited) stay in SQL.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import polars as pl

from cites_risk.features.adapters import EXTRA_PREFIX
from cites_risk.features.contract import DECLARATION, D, conform, empty
from cites_risk.features.history import History
from cites_risk.profiling.atomic_files import atomic_parquet
from cites_risk.profiling.store import Store

_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def batch_name(mapping: str, path: Path) -> str:
    """The batch lodged from ``path`` (a source file, or a job's folder): named after it,
    with a digest of where it is, so that the same file lodged again replaces its batch and
    two folders' files of one name (each day's ``export.csv``) are two batches."""
    where = hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]
    return f"{mapping}-{path.name}-{where}"


class DeclarationHistory:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def path(self, batch: str) -> Path:
        return self.folder / f"{_SAFE.sub('_', batch)}.parquet"

    @staticmethod
    def part(batch: str, k: int) -> str:
        """The ``k``-th chunk of a batch lodged in chunks, a batch of its own."""
        return f"{batch}-{k:05d}"

    def discard_parts(self, batch: str) -> None:
        """Remove every chunk lodged for ``batch`` (a lodging started again from its start)."""
        for path in self.folder.glob(self._parts_pattern(batch)):
            path.unlink()

    def stage(self, declarations: pl.DataFrame, batch: str, k: int) -> None:
        """Write chunk ``k`` of ``batch`` aside: the history's readers see none of a batch
        being loaded until ``publish``, and a load that fails leaves the batch as it was."""
        DeclarationHistory(self._staging).append(declarations, self.part(batch, k))

    def clear_staged(self, batch: str) -> None:
        """Forget chunks of ``batch`` staged by a load that did not finish."""
        DeclarationHistory(self._staging).discard_parts(batch)

    def publish(self, batch: str) -> None:
        """Put the staged chunks of ``batch`` in place of what it held (lodged whole or in
        chunks). Each chunk replaces its namesake in one rename; then what the new load
        did not write goes."""
        staged = sorted(self._staging.glob(self._parts_pattern(batch)))
        self.folder.mkdir(parents=True, exist_ok=True)
        for path in staged:
            path.replace(self.folder / path.name)
        written = {path.name for path in staged}
        for old in [self.path(batch), *self.folder.glob(self._parts_pattern(batch))]:
            if old.name not in written:
                old.unlink(missing_ok=True)

    @property
    def _staging(self) -> Path:
        # Beside the batches, but not one of them: ``scan`` reads the folder's own files.
        return self.folder / "_staging"

    @staticmethod
    def _parts_pattern(batch: str) -> str:
        return f"{_SAFE.sub('_', batch)}-[0-9][0-9][0-9][0-9][0-9].parquet"

    def append(self, declarations: pl.DataFrame, batch: str) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.path(batch)
        extras = [c for c in declarations.columns if c.startswith(EXTRA_PREFIX)]
        contract = conform(declarations.lazy(), DECLARATION).collect()
        # A crash leaves the old file or the new, never half of one.
        atomic_parquet(contract.with_columns(declarations.select(extras)), path)
        return path

    def scan(self) -> pl.LazyFrame:
        # In the order written (the name breaks a tie): unique() keeps a repeated id's last.
        # A restored backup must keep its file times (cp -p, rsync -a) to keep that order.
        files = sorted(self.folder.glob("*.parquet"), key=lambda f: (f.stat().st_mtime_ns, f.name))
        if not files:
            return empty(DECLARATION).lazy()
        # Batches from different sources may carry different extra columns.
        frames = [pl.scan_parquet(f) for f in files]
        return pl.concat(frames, how="diagonal_relaxed").unique(
            subset=[D.ID], keep="last", maintain_order=True
        )


def history_for(store: Store, declarations: DeclarationHistory, organisation: str) -> History:
    """Everything ``organisation`` may know: its consent-filtered offences and all results."""
    return History(
        declarations=declarations.scan(),
        offences=store.offences.visible_to(organisation).lazy(),
        inspections=store.inspections.all().lazy(),
    )
