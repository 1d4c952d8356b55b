"""The store: offences, inspections, profiles, audit events and jobs, behind one facade."""

from __future__ import annotations

from cites_risk.profiling.store.audit import Actor, AuditLog, Event
from cites_risk.profiling.store.core import Database, Stamps, StoreError, Topic, counter
from cites_risk.profiling.store.jobs import Job, JobRepository, JobStatus
from cites_risk.profiling.store.records import (
    EVERYONE,
    InspectionRepository,
    OffenceRepository,
    can_see,
)


class Store:
    """Every repository over one database. Open once per process and pass it around."""

    def __init__(self, url: str) -> None:
        self.db = Database(url)
        self.offences = OffenceRepository(self.db)
        self.inspections = InspectionRepository(self.db)
        self.audit = AuditLog(self.db)
        self.jobs = JobRepository(self.db)

    @property
    def version(self) -> int:
        return self.db.version

    def stamps(self) -> Stamps:
        return self.db.stamps()

    def changed(self, topic: Topic) -> None:
        """Count a change made outside this database (e.g. in the model registry)."""
        with self.db.begin() as conn:
            self.db.bump(conn, topic)

    def close(self) -> None:
        self.db.dispose()


__all__ = [
    "EVERYONE",
    "Actor",
    "AuditLog",
    "Database",
    "Event",
    "InspectionRepository",
    "Job",
    "JobRepository",
    "JobStatus",
    "OffenceRepository",
    "Stamps",
    "Store",
    "StoreError",
    "Topic",
    "can_see",
    "counter",
]
