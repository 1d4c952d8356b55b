"""Batch jobs: recorded so that a crashed or restarted job resumes instead of starting over.

A job's fingerprint (input content hash + parameters) makes a second upload of the same file
find the first job instead of creating a duplicate.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
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

    @classmethod
    def from_row(cls, row: sa.Row[Any]) -> Job:
        m = dict(row._mapping)
        m["status"] = JobStatus(m["status"])
        m["params"] = m["params"] or {}
        m["created_at"] = as_utc(m["created_at"])
        m["updated_at"] = as_utc(m["updated_at"])
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
        now = utcnow()
        job_id = uuid.uuid4().hex
        with self.db.begin() as conn:
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

    def unfinished(self, kind: str | None = None) -> list[Job]:
        stmt = sa.select(jobs).where(jobs.c.status.in_([JobStatus.QUEUED, JobStatus.RUNNING]))
        if kind:
            stmt = stmt.where(jobs.c.kind == kind)
        with self.db.begin() as conn:
            return [Job.from_row(r) for r in conn.execute(stmt.order_by(jobs.c.created_at))]

    def update(self, job_id: str, **values: Any) -> None:
        if "status" in values:
            values["status"] = JobStatus(values["status"]).value
        with self.db.begin() as conn:
            conn.execute(
                jobs.update().where(jobs.c.job_id == job_id).values(updated_at=utcnow(), **values)
            )
