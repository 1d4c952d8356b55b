"""Batch jobs: recorded so that a crashed or restarted job resumes instead of starting over.

A job's fingerprint (input content hash + parameters) makes a second upload of the same file
find the first job instead of creating a duplicate. Several processes may serve one store:
a process runs a job only while it holds the job's claim, a lease it renews as it works, so
two never write the same job and the job of a process that died is taken over once its
lease runs out.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

import sqlalchemy as sa

from cites_risk.profiling.store.core import Database, as_utc, utcnow
from cites_risk.profiling.store.schema import jobs


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True)
class Job:
    job_id: str
    kind: str
    status: JobStatus
    fingerprint: str
    input_path: str | None
    output_path: str | None
    rows_total: int | None
    rows_done: int
    rows_rejected: int
    params: dict[str, Any]
    organisation: str
    created_by: str
    created_at: datetime
    updated_at: datetime
    error: str | None
    claimed_by: str | None = None
    claimed_until: datetime | None = None

    @classmethod
    def from_row(cls, row: sa.Row[Any]) -> Job:
        m = dict(row._mapping)
        m["status"] = JobStatus(m["status"])
        m["params"] = m["params"] or {}
        m["created_at"] = as_utc(m["created_at"])
        m["updated_at"] = as_utc(m["updated_at"])
        m["claimed_until"] = as_utc(m["claimed_until"])
        return cls(**m)


class JobRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def create(
        self,
        kind: str,
        fingerprint: str,
        *,
        organisation: str,
        created_by: str,
        input_path: str | None = None,
        output_path: str | None = None,
        params: dict[str, Any] | None = None,
    ) -> Job:
        job_id = uuid.uuid4().hex
        with self.db.begin() as conn:
            now = _clock(conn)
            conn.execute(
                jobs.insert().values(
                    job_id=job_id,
                    kind=kind,
                    status=JobStatus.QUEUED,
                    fingerprint=fingerprint,
                    input_path=input_path,
                    output_path=output_path,
                    rows_done=0,
                    rows_rejected=0,
                    params=params or {},
                    organisation=organisation,
                    created_by=created_by,
                    created_at=now,
                    updated_at=now,
                )
            )
        job = self.get(job_id)
        assert job is not None
        return job

    def get(self, job_id: str) -> Job | None:
        with self.db.begin() as conn:
            row = conn.execute(sa.select(jobs).where(jobs.c.job_id == job_id)).first()
        return Job.from_row(row) if row else None

    def find(self, kind: str, fingerprint: str, organisation: str) -> Job | None:
        """The newest job of this kind over the same input, unless it failed."""
        stmt = (
            sa.select(jobs)
            .where(
                jobs.c.kind == kind,
                jobs.c.fingerprint == fingerprint,
                jobs.c.organisation == organisation,
                jobs.c.status != JobStatus.FAILED,
            )
            .order_by(jobs.c.created_at.desc())
        )
        with self.db.begin() as conn:
            row = conn.execute(stmt).first()
        return Job.from_row(row) if row else None

    def unfinished(self, kind: str | None = None, *, claimable_by: str | None = None) -> list[Job]:
        """Queued or running jobs, oldest first; only those ``claimable_by`` may take, if given."""
        stmt = sa.select(jobs).where(_UNFINISHED)
        if kind:
            stmt = stmt.where(jobs.c.kind == kind)
        with self.db.begin() as conn:
            if claimable_by is not None:
                stmt = stmt.where(_free_for(claimable_by, _clock(conn)))
            return [Job.from_row(r) for r in conn.execute(stmt.order_by(jobs.c.created_at))]

    def claim(self, job_id: str, owner: str, lease: timedelta) -> bool:
        """Hold (or keep holding) an unfinished job for ``lease``; False if another holds it.

        One conditional UPDATE, so two processes asking at once cannot both get it.
        """
        with self.db.begin() as conn:
            now = _clock(conn)
            stmt = (
                jobs.update()
                .where(jobs.c.job_id == job_id, _UNFINISHED, _free_for(owner, now))
                .values(claimed_by=owner, claimed_until=now + lease, updated_at=now)
            )
            return bool(conn.execute(stmt).rowcount)

    def finish(self, job_id: str, owner: str, **values: Any) -> bool:
        """Record a job's outcome and end its claim, only if ``owner`` still holds it.

        A process that stalled past its lease must not overwrite the outcome of the one
        that took the job over; False tells it its result was not recorded.
        """
        with self.db.begin() as conn:
            stmt = (
                jobs.update()
                .where(jobs.c.job_id == job_id, jobs.c.claimed_by == owner)
                .values(_changed(conn, claimed_by=None, claimed_until=None, **values))
            )
            return bool(conn.execute(stmt).rowcount)

    def release(self, job_id: str, owner: str) -> None:
        """Give the job up at once (a process stopping cleanly), if ``owner`` holds it."""
        with self.db.begin() as conn:
            stmt = (
                jobs.update()
                .where(jobs.c.job_id == job_id, jobs.c.claimed_by == owner)
                .values(_changed(conn, claimed_by=None, claimed_until=None))
            )
            conn.execute(stmt)

    def update(self, job_id: str, **values: Any) -> None:
        with self.db.begin() as conn:
            stmt = jobs.update().where(jobs.c.job_id == job_id).values(_changed(conn, **values))
            conn.execute(stmt)


def _changed(conn: sa.Connection, **values: Any) -> dict[str, Any]:
    """Column values of a job update, stamped with the time and the status as stored."""
    if "status" in values:
        values["status"] = JobStatus(values["status"]).value
    return {"updated_at": _clock(conn), **values}


_UNFINISHED = jobs.c.status.in_([JobStatus.QUEUED, JobStatus.RUNNING])


def _clock(conn: sa.Connection) -> datetime:
    """The time jobs are stamped, and their leases written and compared, in. On
    PostgreSQL, the server's: processes on several hosts share the store, and a host whose
    clock ran ahead would take over jobs still held (or one behind, hold them past their
    lease). An SQLite store is a file of one host: that host's clock. (``now()`` is when
    the transaction began: a claim that waited for a lock gets a shorter lease, renewed
    within a third of it.)"""
    if conn.dialect.name == "postgresql":
        now = as_utc(conn.execute(sa.select(sa.func.now())).scalar_one())
        assert now is not None
        return now
    return utcnow()


def _free_for(owner: str, now: datetime) -> sa.ColumnElement[bool]:
    """Unclaimed, claimed by ``owner`` already, or claimed by a lease that ran out."""
    return sa.or_(
        jobs.c.claimed_by.is_(None), jobs.c.claimed_by == owner, jobs.c.claimed_until < now
    )
