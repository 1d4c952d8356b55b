"""Declaration history kept as Parquet files: columnar, appendable, cheap to scan.

Declarations are many and read in bulk by the features, so they live beside the SQL store,
one file per ingested batch; a batch written again replaces its file, so reruns never
duplicate. A declaration lodged in several batches is the one written last: a correction
sent later replaces what was lodged before. Offences and inspections (few, consent-filtered,
edited) stay in SQL.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
import time
from pathlib import Path
from uuid import uuid4

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
        for path in self._parts(self.folder, batch):
            path.unlink()

    def loading(self, batch: str) -> Loading:
        """A new load of ``batch``: its chunks are staged aside and replace what the batch
        held only at ``Loading.publish``. Staging left by loads whose process is gone is
        removed first."""
        staging = self.folder / _STAGING
        for stale in staging.glob(f"{_SAFE.sub('_', batch)}.*"):
            pid = stale.name.rsplit(".", 1)[-1].split("-", 1)[0]
            if stale.is_dir() and pid.isdigit() and not _alive(int(pid)):
                shutil.rmtree(stale, ignore_errors=True)
        return Loading(self, batch)

    @staticmethod
    def _parts(folder: Path, batch: str) -> list[Path]:
        """The chunks of ``batch`` in ``folder``: five digits or more (chunk 100,000 on)."""
        safe = _SAFE.sub("_", batch)
        name = re.compile(rf"{re.escape(safe)}-[0-9]{{5,}}\.parquet")
        return [p for p in folder.glob(f"{safe}-[0-9]*.parquet") if name.fullmatch(p.name)]

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


#: Where loads stage their chunks: beside the batches, but not one of them (``scan`` reads
#: the history folder's own files only).
_STAGING = "_staging"


class Loading:
    """One load of a batch, its chunks written to a folder of its own until ``publish``.

    A load that fails leaves the batch as it was; two loads of one source (a retried job,
    a score of the file during its ingest) never mix their chunks. Used as a context
    manager, an exception abandons the load.
    """

    def __init__(self, history: DeclarationHistory, batch: str) -> None:
        self.history = history
        self.batch = batch
        self.folder = (
            history.folder / _STAGING / f"{_SAFE.sub('_', batch)}.{os.getpid()}-{uuid4().hex}"
        )

    def stage(self, declarations: pl.DataFrame, k: int) -> None:
        DeclarationHistory(self.folder).append(declarations, DeclarationHistory.part(self.batch, k))

    def publish(self) -> None:
        """Put this load's chunks in place of what the batch held (whole or in chunks).

        Under a lock per batch, so that of two loads the later publish is the whole
        result. Each chunk replaces its namesake in one rename, then what this load did
        not write goes: a reader at that instant may see part of the load.
        """
        folder = self.history.folder
        folder.mkdir(parents=True, exist_ok=True)
        lock = folder / _STAGING / f"{_SAFE.sub('_', self.batch)}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with lock.open("a") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            staged = DeclarationHistory._parts(self.folder, self.batch)
            for path in staged:
                target = folder / path.name
                path.replace(target)
                # Dated when published, not when staged: of two batches holding an id, the
                # one published last wins, whatever was lodged during a long load.
                now = time.time_ns()
                os.utime(target, ns=(now, now))
            written = {path.name for path in staged}
            old = [self.history.path(self.batch), *DeclarationHistory._parts(folder, self.batch)]
            for path in old:
                if path.name not in written:
                    path.unlink(missing_ok=True)
        self.abandon()

    def abandon(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self) -> Loading:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is not None:
            self.abandon()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
