"""Declaration history kept as Parquet files: columnar, appendable, cheap to scan.

Declarations are many and read in bulk by the features, so they live beside the SQL store,
one file per ingested batch; a batch written again replaces its file, so reruns never
duplicate. A declaration lodged in several batches is the one written last: a correction
sent later replaces what was lodged before. Offences and inspections (few, consent-filtered,
edited) stay in SQL.

A batch loaded in chunks (``Loading``) is published as a folder of its own, a generation,
named ``<batch>@<sequence>``: it appears whole in one rename, and readers take each batch's
highest sequence. The generation it replaces is kept for ``retire_after`` seconds, because
a reader lists the files when it plans its query and opens them only when it runs it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import re
import shutil
from itertools import pairwise
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


#: Between a batch's name and its generation's sequence; ``_safe`` never leaves it in a name.
_AT = "@"
#: How long a replaced generation is kept for readers that listed it: a batch score reads
#: the history it listed for as long as it runs. Measured on the history folder's own
#: clock (``_folder_clock``), the same for every host that loads into it.
RETIRE_AFTER = 24 * 3600.0
#: A chunk of a batch lodged in chunks: the batch's file name, then five digits or more.
_PART = re.compile(r"(.+)-[0-9]{5,}")


def _safe(batch: str) -> str:
    """``batch`` as a file name."""
    return _SAFE.sub("_", batch)


class DeclarationHistory:
    def __init__(self, folder: Path, *, retire_after: float = RETIRE_AFTER) -> None:
        self.folder = folder
        self.retire_after = retire_after

    def path(self, batch: str) -> Path:
        return self.folder / f"{_safe(batch)}.parquet"

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
        held only at ``Loading.publish``. Staging left by loads that are gone is removed
        first."""
        staging = self.folder / _STAGING
        now = _folder_clock(self.folder)
        for stale in staging.glob(f"{_safe(batch)}.*"):
            if stale.is_dir():
                _remove_if_abandoned(stale)
        # A staging folder still under its hidden name is being made, for microseconds: one
        # left for an hour is a load that crashed before it could hold its lock.
        for making in staging.glob(f".{_safe(batch)}.*"):
            if making.is_dir() and now - making.stat().st_mtime_ns > _MAKING_FOR * 10**9:
                shutil.rmtree(making, ignore_errors=True)
        self.retire(None, now)
        return Loading(self, batch)

    @staticmethod
    def _parts(folder: Path, batch: str) -> list[Path]:
        """The chunks of ``batch`` in ``folder``: five digits or more (chunk 100,000 on)."""
        safe = _safe(batch)
        return [p for p in folder.glob(f"{safe}-[0-9]*.parquet") if _batch_of(p) == safe]

    def _generations(self, batch: str | None = None) -> dict[str, list[tuple[int, Path]]]:
        """Published generations by batch (file-name form), oldest first."""
        pattern = f"{_safe(batch)}{_AT}*" if batch is not None else f"*{_AT}*"
        found: dict[str, list[tuple[int, Path]]] = {}
        for path in self.folder.glob(pattern):
            name, _, sequence = path.name.rpartition(_AT)
            if path.is_dir() and sequence.isdigit():
                found.setdefault(name, []).append((int(sequence), path))
        return {name: sorted(generations) for name, generations in found.items()}

    def files(self) -> list[Path]:
        """The files the history holds now, in the order written (the name breaks a tie):
        every batch written whole, and the live generation of every batch loaded in chunks.
        A batch's files in the history folder itself (a load published before generations)
        are replaced by its first generation."""
        generations = self._generations()
        files = [f for f in self.folder.glob("*.parquet") if _batch_of(f) not in generations]
        for published in generations.values():
            files.extend(published[-1][1].glob("*.parquet"))
        # A restored backup must keep its file times (cp -p, rsync -a) to keep that order.
        return sorted(files, key=lambda f: (f.stat().st_mtime_ns, f.name))

    def stamp(self) -> tuple[tuple[str, int, int], ...]:
        """Changes whenever what ``files`` lists does, and costs one listing of the history
        folder: a generation never changes once published, so its name stands for it."""
        if not self.folder.is_dir():
            return ()
        stamps = []
        with os.scandir(self.folder) as entries:
            for entry in entries:
                if entry.name.endswith(".parquet") and entry.is_file():
                    info = entry.stat()
                    stamps.append((entry.name, info.st_mtime_ns, info.st_size))
                elif _AT in entry.name:
                    stamps.append((entry.name, 0, 0))
        return tuple(sorted(stamps))

    def append(self, declarations: pl.DataFrame, batch: str) -> Path:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.path(batch)
        extras = [c for c in declarations.columns if c.startswith(EXTRA_PREFIX)]
        contract = conform(declarations.lazy(), DECLARATION).collect()
        # A crash leaves the old file or the new, never half of one.
        atomic_parquet(contract.with_columns(declarations.select(extras)), path)
        return path

    def scan(self) -> pl.LazyFrame:
        # In the order written: unique() keeps a repeated id's last.
        files = self.files()
        if not files:
            return empty(DECLARATION).lazy()
        # Batches from different sources may carry different extra columns.
        frames = [pl.scan_parquet(f) for f in files]
        return pl.concat(frames, how="diagonal_relaxed").unique(
            subset=[D.ID], keep="last", maintain_order=True
        )

    def retire(self, batch: str | None, now_ns: int) -> None:
        """Remove what ``batch`` (None: every batch) held and was replaced more than
        ``retire_after`` ago: a generation was replaced when the next one was published
        (its sequence), the batch's files in the history folder when the first one was.
        Safe beside a publish: that only adds a later generation."""
        old_enough = now_ns - round(self.retire_after * 1e9)  # in integers: ns past 2**53
        generations = self._generations(batch)
        for published in generations.values():
            for (_, old), (replaced_at, _) in pairwise(published):
                if replaced_at <= old_enough:
                    shutil.rmtree(old, ignore_errors=True)
        for path in self.folder.glob("*.parquet"):
            published = generations.get(_batch_of(path), [])
            if published and published[0][0] <= old_enough:
                path.unlink(missing_ok=True)


def history_for(store: Store, declarations: DeclarationHistory, organisation: str) -> History:
    """Everything ``organisation`` may know: its consent-filtered offences and all results."""
    return History(
        declarations=declarations.scan(),
        offences=store.offences.visible_to(organisation).lazy(),
        inspections=store.inspections.all().lazy(),
    )


#: Where loads stage their chunks: beside the batches, but not one of them (``files`` reads
#: the batches and their generations only).
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
        self.folder = history.folder / _STAGING / f"{_safe(batch)}.{os.getpid()}-{uuid4().hex}"
        # Held while the load lives: a load elsewhere (another host, another PID
        # namespace) tells it from an abandoned one by this lock, not by a process id.
        # Made under a hidden name, so that it is never seen unheld.
        making = self.folder.with_name(f".{self.folder.name}")
        making.mkdir(parents=True)
        self._held = (making / _HELD).open("a")
        fcntl.flock(self._held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        making.rename(self.folder)
        self._staged: set[str] = set()

    def stage(self, declarations: pl.DataFrame, k: int) -> None:
        if not self.folder.is_dir():
            raise RuntimeError(
                f"the chunks staged for {self.batch} in {self.folder} are gone (removed by "
                "another process?): load the source again"
            )
        path = DeclarationHistory(self.folder).append(
            declarations, DeclarationHistory.part(self.batch, k)
        )
        self._staged.add(path.name)

    def publish(self) -> None:
        """Put this load's chunks in place of what the batch held (whole or in chunks).

        Under a lock per batch, so that of two loads the later publish is the whole
        result. The staged folder becomes the batch's next generation in one rename: a
        reader sees the load whole or not at all. What it replaces is removed once
        retired for ``retire_after`` (``retire``).
        """
        folder = self.history.folder
        folder.mkdir(parents=True, exist_ok=True)
        safe = _safe(self.batch)
        lock = folder / _STAGING / f"{safe}.lock"
        lock.parent.mkdir(parents=True, exist_ok=True)
        with lock.open("a") as held:
            fcntl.flock(held, fcntl.LOCK_EX)
            published = [s for s, _ in self.history._generations(self.batch).get(safe, [])]
            # Dated when published, not when staged: of two batches holding an id, the one
            # published last wins, whatever was lodged during a long load. Later than
            # anything published before, even if the clock stepped back.
            latest = [f.stat().st_mtime_ns for f in self.history.files()[-1:]]
            now = max([_folder_clock(folder), *(t + 1 for t in [*published, *latest])])
            staged = DeclarationHistory._parts(self.folder, self.batch)
            if {p.name for p in staged} != self._staged:
                raise RuntimeError(
                    f"the chunks staged for {self.batch} in {self.folder} are gone (removed "
                    "by another process?): nothing was published; load the source again"
                )
            for path in staged:
                os.utime(path, ns=(now, now))
            generation = folder / f"{safe}{_AT}{now:020d}"
            # Held through the rename: the staging is never seen unheld.
            self.folder.rename(generation)
            (generation / _HELD).unlink()
            self.history.retire(self.batch, now)
        self.abandon()

    def abandon(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
        self._held.close()

    def __enter__(self) -> Loading:
        return self

    def __exit__(self, kind: type[BaseException] | None, *_: object) -> None:
        if kind is not None:
            self.abandon()


def _folder_clock(folder: Path) -> int:
    """Now, in ns, by the clock of the file system holding ``folder``.

    Generations are dated and retired by it, so that hosts loading into one shared history
    agree on how old a generation is: a host whose own clock ran a day ahead would retire
    generations that other hosts' readers still hold. A file's time set to "now" is the
    file system's time (a network file system's server sets it).
    """
    mark = folder / _STAGING / ".clock"
    mark.parent.mkdir(parents=True, exist_ok=True)
    mark.touch()
    return mark.stat().st_mtime_ns


def _batch_of(path: Path) -> str:
    """The batch (file-name form) a file of the history folder holds, whole or a chunk."""
    part = _PART.fullmatch(path.stem)
    return part.group(1) if part else path.stem


#: The lock file of a load's staging folder.
_HELD = ".held"
#: Seconds after which a staging folder still under its hidden name was left by a crash.
_MAKING_FOR = 3600


def _remove_if_abandoned(staging: Path) -> None:
    """Remove a load's staging folder if no load holds it. One written before loads held
    a lock is judged by the process id in its name."""
    try:
        held = (staging / _HELD).open("r")
    except FileNotFoundError:
        pid = staging.name.rsplit(".", 1)[-1].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(staging, ignore_errors=True)
        return
    with held:
        try:
            fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # a load holds it
        shutil.rmtree(staging, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
