"""The append-only audit log: who did what, for which organisation, when."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa

from cites_risk.profiling.store.core import Database, as_utc, utcnow
from cites_risk.profiling.store.schema import audit_events


@dataclass(frozen=True)
class Actor:
    """Who acts: a user or key name, its organisation and role. The CLI acts as itself."""

    name: str
    organisation: str
    role: str


@dataclass(frozen=True)
class Event:
    """One audit event: who, what, on which target, and the details worth keeping."""

    actor: Actor
    action: str
    target: str | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)


class AuditLog:
    def __init__(self, db: Database) -> None:
        self.db = db

    def record(self, actor: Actor, action: str, target: str | None = None, **detail: Any) -> None:
        self.record_many([Event(actor, action, target, detail)])

    def record_many(self, events: Sequence[Event]) -> None:
        """Several events in one transaction (requests scored together are audited each)."""
        if not events:
            return
        at = utcnow()
        with self.db.begin() as conn:
            conn.execute(
                audit_events.insert(),
                [
                    {
                        "at": at,
                        "actor": e.actor.name,
                        "organisation": e.actor.organisation,
                        "role": e.actor.role,
                        "action": e.action,
                        "target": e.target,
                        "detail": dict(e.detail) or None,
                    }
                    for e in events
                ],
            )

    def query(
        self,
        *,
        action: str | None = None,
        actor: str | None = None,
        organisation: str | None = None,
        since: datetime | None = None,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        stmt = sa.select(audit_events).order_by(audit_events.c.event_id.desc()).limit(limit)
        if action:
            stmt = stmt.where(audit_events.c.action == action)
        if actor:
            stmt = stmt.where(audit_events.c.actor == actor)
        if organisation:
            stmt = stmt.where(audit_events.c.organisation == organisation)
        if since:
            # Stored as UTC clock time: a bound in another zone must be the same instant.
            stmt = stmt.where(audit_events.c.at >= as_utc(since))
        with self.db.begin() as conn:
            rows = conn.execute(stmt).all()
        return [dict(r._mapping) | {"at": as_utc(r.at)} for r in rows]
