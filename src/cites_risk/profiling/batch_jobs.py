"""Batch jobs behind the API: upload once, score in the background, survive a restart.

* **Same file twice, same job.** A job's fingerprint is the SHA-256 of the file's bytes and
  of its parameters; a second upload of the same bytes with the same mapping (by the same
  organisation) returns the first job instead of scoring again.
* **One worker per process.** Jobs run one at a time in a background thread: a batch
  already uses every core (polars, LightGBM), and two would only fight for memory.
* **Several processes, one queue.** The store is the queue. A process runs a job only while
  it holds the job's claim (``JobRepository.claim``), renewed by a heartbeat; an idle
  process polls for jobs submitted to another one, or left by one that died.
* **Restart-safe.** The job row says where the input and output live and how it was
  chunked. On start-up, unfinished jobs nobody holds are queued again (a process that
  stopped cleanly released its claim; one that crashed holds it until its lease runs out);
  :func:`score_stream` skips parts already written, so a resumed job finishes without
  duplicate rows.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl

from cites_risk.features.contract import D
from cites_risk.features.validation import REJECT_SCHEMA
from cites_risk.profiling.atomic_files import atomic_write
from cites_risk.profiling.batch import DECISIONS, score_stream
from cites_risk.profiling.engine import REASONS
from cites_risk.profiling.roles import Role
from cites_risk.profiling.selection import FINAL_RISK
from cites_risk.profiling.service import (
    FieldProblem,
    InvalidInputError,
    NotFoundError,
    NotReadyError,
    Service,
)
from cites_risk.profiling.sources import InputError, shipped_mapping
from cites_risk.profiling.store import Actor, Job, JobStatus
from cites_risk.profiling.store.core import utcnow

#: The lowest role that may download a job's results (``api/routes/jobs.py``).
RESULTS_READER = Role.TARGETING.value
KIND = "score"
FORMATS = ("parquet", "csv")
_SUFFIXES = (".csv", ".parquet", ".gz", ".txt", ".tsv")
log = logging.getLogger(__name__)


class _InterruptedError(Exception):
    """The runner is stopping: leave the job unfinished so that a restart resumes it."""


class _LostClaimError(Exception):
    """Another process took the job over (this one stalled past its lease): stop writing."""


class _Heartbeat:
    """Renews a job's claim every third of the lease while the job runs.

    A renewal that fails (database busy or unreachable) is tried again at the next beat;
    the claim counts as lost once a whole lease has passed since the last renewal that
    succeeded, since another process may hold the job by then.
    """

    def __init__(self, runner: JobRunner, job_id: str) -> None:
        self.runner = runner
        self.job_id = job_id
        self._renewed = time.monotonic()
        self._taken = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="cites-risk-job-claim", daemon=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._done.set()
        self._thread.join()

    @property
    def lost(self) -> bool:
        expired = time.monotonic() - self._renewed >= self.runner.lease.total_seconds()
        return self._taken or expired

    def _beat(self) -> None:
        lease = self.runner.lease
        while not self._done.wait(lease.total_seconds() / 3):
            started = time.monotonic()
            try:
                held = self.runner.service.store.jobs.claim(self.job_id, self.runner.owner, lease)
            except Exception:  # the next beat tries again; ``lost`` watches the lease
                log.warning("could not renew the claim on job %s", self.job_id, exc_info=True)
                continue
            if not held:
                self._taken = True
                return
            self._renewed = started


def fingerprint(content_sha256: str, params: dict[str, Any]) -> str:
    text = content_sha256 + "|" + json.dumps(params, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _suffix(filename: str) -> str:
    # The reader dispatches on the suffix (.parquet, .csv.gz); anything else reads as CSV.
    suffixes = [s.lower() for s in Path(filename).suffixes if s.lower() in _SUFFIXES]
    return "".join(suffixes[-2:]) or ".csv"


class JobRunner:
    """Queue, worker thread and files of the batch jobs of one service."""

    def __init__(self, service: Service, *, chunk_rows: int = 200_000) -> None:
        self.service = service
        self.chunk_rows = chunk_rows
        self.root = service.settings.home / "jobs"
        self._queue: queue.Queue[str | None] = queue.Queue()
        self._queued: set[str] = set()
        #: Who holds a claim: host and process, and a nonce for two runners in one process.
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lease = timedelta(seconds=service.settings.job_lease_seconds)
        self.poll_seconds = service.settings.job_poll_seconds
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._idle = threading.Event()
        self._idle.set()

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> list[str]:
        """Start the worker and queue the unfinished jobs no live process holds."""
        if self._thread is not None and self._thread.is_alive():
            return []  # already running: one worker per runner, whoever asks twice
        self._stop.clear()
        resumed = self._queue_claimable()
        self._thread = threading.Thread(target=self._work, name="cites-risk-jobs", daemon=True)
        self._thread.start()
        return resumed

    def stop(self, timeout: float = 30.0) -> None:
        """Stop after the current part; an interrupted job stays queued for the next start."""
        self._stop.set()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def wait_idle(self, timeout: float | None = None) -> bool:
        """True once the queue is empty and no job runs (tests, graceful shutdown)."""
        return self._idle.wait(timeout)

    # -- submitting and reading --------------------------------------------------------

    def submit(self, actor: Actor, upload: Path, filename: str, mapping: str) -> tuple[Job, bool]:
        """A job for the uploaded file (moved into the job's folder); (job, created)."""
        try:
            shipped_mapping(mapping)
        except InputError as exc:
            upload.unlink(missing_ok=True)
            raise InvalidInputError(str(exc), [FieldProblem(None, "mapping", str(exc))]) from None
        sha = _sha256(upload)
        suffix = _suffix(filename)
        fp = fingerprint(sha, {"mapping": mapping, "suffix": suffix})
        store = self.service.store
        existing = store.jobs.find(KIND, fp, actor.organisation)
        if existing is not None:
            upload.unlink(missing_ok=True)
            store.audit.record(actor, "job.reuse", existing.job_id, filename=filename)
            return existing, False
        # score_stream names history files after the output folder: one name per job.
        folder_name = fp[:16]
        folder = self.root / actor.organisation / folder_name
        folder.mkdir(parents=True, exist_ok=True)
        source = folder / f"input{suffix}"
        shutil.move(upload, source)
        params = {
            "mapping": mapping,
            "filename": filename,
            "sha256": sha,
            "chunk_rows": self.chunk_rows,
            "role": actor.role,
        }
        job = store.jobs.create(
            KIND,
            fp,
            organisation=actor.organisation,
            created_by=actor.name,
            input_path=str(source),
            output_path=str(folder / f"scored-{folder_name}"),
            params=params,
        )
        store.audit.record(actor, "job.submit", job.job_id, filename=filename, mapping=mapping)
        self._enqueue(job.job_id)
        return job, True

    def get(self, actor: Actor, job_id: str) -> Job:
        """A job of the actor's organisation; others' jobs do not exist for it."""
        job = self.service.store.jobs.get(job_id)
        if job is None or job.organisation != actor.organisation:
            raise NotFoundError(f"no job {job_id!r}")
        return job

    def _looked_up(self, actor: Actor, action: str, job_id: str, find: Callable[[], Job]) -> Job:
        """``find()``, a failed lookup audited too: ids of other organisations' jobs probed."""
        try:
            return find()
        except NotFoundError:
            self.service.store.audit.record(actor, action, job_id, found=False)
            raise

    def poll(self, actor: Actor, job_id: str) -> Job:
        """:meth:`get`, audited."""
        job = self._looked_up(actor, "job.get", job_id, lambda: self.get(actor, job_id))
        self.service.store.audit.record(actor, "job.get", job_id, found=True)
        return job

    def results(self, actor: Actor, job_id: str, fmt: str) -> Path:
        """The scored rows as one file (built once, when first asked for)."""
        job = self._looked_up(actor, "job.results", job_id, lambda: self._finished(actor, job_id))
        out = Path(str(job.output_path))
        path = out / f"results.{fmt}"
        if not path.exists():
            frame = _scored(out)
            if fmt == "csv":
                lists = [c for c, t in frame.schema.items() if isinstance(t, pl.List)]
                frame = frame.with_columns(pl.col(c).list.join(" | ") for c in lists)
            atomic_write(path, frame.write_csv if fmt == "csv" else frame.write_parquet)
        self.service.store.audit.record(actor, "job.results", job_id, format=fmt)
        return path

    def rejects(self, actor: Actor, job_id: str) -> Path:
        # Validation alone: no offence record is in them, so no withdrawal touches them.
        job = self._looked_up(
            actor, "job.rejects", job_id, lambda: self._finished(actor, job_id, scores=False)
        )
        out = Path(str(job.output_path))
        path = out / "rejects.csv"
        if not path.exists():  # no rejected row: an empty file with the header
            pl.DataFrame(schema=REJECT_SCHEMA).write_csv(path)
        self.service.store.audit.record(actor, "job.rejects", job_id)
        return path

    def _finished(self, actor: Actor, job_id: str, *, scores: bool = True) -> Job:
        """The finished job; with ``scores``, scored again first if an offence record was
        withdrawn from its organisation since it was scored."""
        job = self.get(actor, job_id)
        if job.status != JobStatus.DONE:
            raise NotReadyError(f"job {job_id} is {job.status.value}; poll until it is done")
        if scores and self.service.store.offences.withdrawn_since(
            job.organisation, _scored_from(job)
        ):
            self._score_again(actor, job)
            raise NotReadyError(
                f"job {job_id} was scored with an offence record since withdrawn from your "
                "organisation; it is being scored again: poll until it is done"
            )
        return job

    def _score_again(self, actor: Actor, job: Job) -> None:
        """Its results are dropped and the job queued again, under today's consent."""
        shutil.rmtree(Path(str(job.output_path)), ignore_errors=True)
        params = dict(job.params or {}) | {"scored_from": utcnow().isoformat()}
        self.service.store.jobs.update(
            job.job_id, status=JobStatus.QUEUED, rows_done=0, rows_total=None, params=params
        )
        self.service.store.audit.record(actor, "job.rescore", job.job_id, reason="consent")
        self._enqueue(job.job_id)

    # -- the worker --------------------------------------------------------------------

    def _enqueue(self, job_id: str) -> None:
        if job_id not in self._queued:
            self._queued.add(job_id)
            self._idle.clear()
            self._queue.put(job_id)

    def _queue_claimable(self) -> list[str]:
        found = [
            job.job_id for job in self.service.store.jobs.unfinished(KIND, claimable_by=self.owner)
        ]
        for job_id in found:
            self._enqueue(job_id)
        return found

    def _work(self) -> None:
        while not self._stop.is_set():
            try:
                job_id = self._queue.get(timeout=self.poll_seconds)
            except queue.Empty:
                job_id = ""
            if job_id is None or self._stop.is_set():
                break
            self._idle.clear()
            try:
                if job_id:
                    self._queued.discard(job_id)
                    self._run(job_id)
                else:
                    # Jobs submitted to another process of this deployment, or left by one
                    # that died: the store is the queue they share.
                    self._queue_claimable()
            except _InterruptedError:
                log.info("job %s interrupted; it resumes on the next start", job_id)
                break
            except Exception:  # the store may be briefly unreachable: poll again later
                log.exception("the job worker could not reach the store; trying again")
            finally:
                if self._queue.empty():
                    self._idle.set()

    def _run(self, job_id: str) -> None:
        store = self.service.store
        job = store.jobs.get(job_id)
        if job is None or job.status in (JobStatus.DONE, JobStatus.FAILED):
            return
        self.service.refresh()  # a champion promoted or first registered since
        if not self.service.ready:
            return  # without a champion it would only fail: a ready process will take it
        if not store.jobs.claim(job_id, self.owner, self.lease):
            return  # another process of this deployment runs it
        try:
            with _Heartbeat(self, job_id) as heartbeat:
                self._claimed(job, heartbeat)
        except _InterruptedError:
            store.jobs.release(job_id, self.owner)  # the next process to start resumes it
            raise
        except _LostClaimError:
            log.warning("job %s was taken over by another process; this one stops", job_id)

    def _claimed(self, job: Job, heartbeat: _Heartbeat) -> None:
        store = self.service.store
        job_id = job.job_id
        actor = Actor(job.created_by, job.organisation, str(job.params.get("role", "")))
        store.jobs.update(job_id, status=JobStatus.RUNNING)

        def progress(done: int, total: int | None) -> None:
            if heartbeat.lost:
                raise _LostClaimError
            store.jobs.update(job_id, rows_done=done, rows_total=total)
            if self._stop.is_set():
                raise _InterruptedError

        try:
            engine = self.service.engine()
            result = score_stream(
                self.service.settings,
                store,
                self.service.reference,
                engine,
                Path(str(job.input_path)),
                shipped_mapping(str(job.params["mapping"])),
                actor,
                Path(str(job.output_path)),
                chunk_rows=int(job.params.get("chunk_rows", self.chunk_rows)),
                progress=progress,
                # Rationales as the least trusted role that may read the results sees them:
                # a targeting user must not read an admin's job for secret profiles.
                deciding=self.service.batch_deciding(replace(actor, role=RESULTS_READER)),
            )
        except (_InterruptedError, _LostClaimError):
            raise
        except Exception as exc:  # the worker outlives any one job; the job says why
            log.exception("job %s failed", job_id)
            if store.jobs.finish(job_id, self.owner, status=JobStatus.FAILED, error=str(exc)):
                store.audit.record(actor, "job.failed", job_id, error=str(exc))
            return
        finished = store.jobs.finish(
            job_id,
            self.owner,
            status=JobStatus.DONE,
            rows_done=result.rows_read,
            rows_total=result.rows_read,
            rows_rejected=result.rows_rejected,
        )
        if not finished:
            raise _LostClaimError
        store.audit.record(
            actor,
            "job.done",
            job_id,
            rows=result.rows_scored,
            rejected=result.rows_rejected,
            model_version=engine.model_version,
        )


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _scored_from(job: Job) -> datetime:
    """When the job's current results began to be scored: no consent change before it
    touches them."""
    again = (job.params or {}).get("scored_from")
    return datetime.fromisoformat(str(again)) if again else job.created_at


def _scored(out: Path) -> pl.DataFrame:
    """Scored parts with the batch's decisions: lane, selection and the full reasons."""
    frames: Iterable[pl.DataFrame] = (
        pl.read_parquet(p) for p in sorted(out.glob("part-*.parquet"))
    )
    kept = [f for f in frames if f.height]
    if not kept:
        return pl.DataFrame()
    scored = pl.concat(kept, how="diagonal_relaxed")
    decisions = out / DECISIONS
    if not decisions.exists():
        return scored
    # The decisions' reasons include the model's: they replace the parts' model-only list.
    return (
        scored.drop(REASONS)
        .join(pl.read_parquet(decisions), on=D.ID, how="left", maintain_order="left")
        .sort(FINAL_RISK, D.ID, descending=[True, False])
    )
