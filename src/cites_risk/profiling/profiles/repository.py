"""Profiles in the store: every change is a new version with a diff and an audit event.

GAO found a weight update in CBP's targeting "made without documented analysis"; here no
profile changes without a ``profile_versions`` row saying who changed which fields when,
and an ``audit_events`` row (``profile.create`` / ``profile.update`` / ``profile.disable``
/ ``profile.enable``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from cites_risk.profiling.profiles.model import Profile, load_profiles_yaml, parse_profile
from cites_risk.profiling.store import Actor, Store, Topic
from cites_risk.profiling.store.core import as_utc, upsert, utcnow
from cites_risk.profiling.store.schema import profile_versions, profiles


class ProfileConflictError(RuntimeError):
    """The profile changed since the caller read it (optimistic concurrency)."""


@dataclass(frozen=True)
class StoredProfile:
    profile: Profile
    version: int
    updated_at: datetime
    updated_by: str


@dataclass(frozen=True)
class ProfileVersion:
    profile: Profile
    version: int
    changed_by: str
    changed_at: datetime
    change: dict[str, Any]


@dataclass(frozen=True)
class SaveResult:
    stored: StoredProfile
    #: profile.create / profile.update / profile.disable / profile.enable, or None: unchanged.
    action: str | None


def diff(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """Top-level fields that differ, with their old and new values."""
    fields = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    return {
        "fields": fields,
        "from": {k: old.get(k) for k in fields},
        "to": {k: new.get(k) for k in fields},
    }


def _utc(value: datetime) -> datetime:
    out = as_utc(value)
    assert out is not None
    return out


class ProfileRepository:
    def __init__(self, store: Store) -> None:
        self.store = store

    def get(self, profile_id: str) -> StoredProfile | None:
        with self.store.db.begin() as conn:
            row = conn.execute(
                sa.select(profiles).where(profiles.c.profile_id == profile_id)
            ).first()
        return self._stored(row) if row else None

    def all(self, *, enabled_only: bool = False) -> list[StoredProfile]:
        stmt = sa.select(profiles).order_by(profiles.c.profile_id)
        if enabled_only:
            stmt = stmt.where(profiles.c.enabled.is_(True))
        with self.store.db.begin() as conn:
            return [self._stored(r) for r in conn.execute(stmt).all()]

    def enabled(self) -> list[Profile]:
        """The profiles scoring applies (validity dates are checked per declaration)."""
        return [s.profile for s in self.all(enabled_only=True)]

    def history(self, profile_id: str) -> list[ProfileVersion]:
        stmt = (
            sa.select(profile_versions)
            .where(profile_versions.c.profile_id == profile_id)
            .order_by(profile_versions.c.version)
        )
        with self.store.db.begin() as conn:
            rows = conn.execute(stmt).all()
        return [
            ProfileVersion(
                profile=parse_profile(r.body),
                version=r.version,
                changed_by=r.changed_by,
                changed_at=_utc(r.changed_at),
                change=r.change or {},
            )
            for r in rows
        ]

    def save(
        self, profile: Profile, actor: Actor, *, expected_version: int | None = None
    ) -> SaveResult:
        """Create or update; a save that changes nothing writes nothing.

        ``expected_version`` (the version the editor read) refuses to overwrite a change
        someone else made meanwhile.
        """
        body = profile.body()
        now = utcnow()
        with self.store.db.begin() as conn:
            row = conn.execute(
                sa.select(profiles).where(profiles.c.profile_id == profile.id)
            ).first()
            current = row.version if row else 0
            if expected_version is not None and expected_version != current:
                raise ProfileConflictError(
                    f"profile {profile.id!r} is at version {current}, not {expected_version}"
                )
            if row is None:
                action, change = "profile.create", diff({}, body)
            else:
                change = diff(row.body, body)
                if not change["fields"]:
                    return SaveResult(self._stored(row), None)
                action = "profile.update"
                if row.enabled and not profile.enabled:
                    action = "profile.disable"
                elif not row.enabled and profile.enabled:
                    action = "profile.enable"
            version = current + 1
            upsert(
                conn,
                profiles,
                [
                    {
                        "profile_id": profile.id,
                        "version": version,
                        "body": body,
                        "enabled": profile.enabled,
                        "updated_at": now,
                        "updated_by": actor.name,
                    }
                ],
                ["profile_id"],
            )
            conn.execute(
                profile_versions.insert().values(
                    profile_id=profile.id,
                    version=version,
                    body=body,
                    changed_by=actor.name,
                    changed_at=now,
                    change=change,
                )
            )
            self.store.db.bump(conn, Topic.PROFILES)
        self.store.audit.record(actor, action, profile.id, version=version, fields=change["fields"])
        return SaveResult(StoredProfile(profile, version, now, actor.name), action)

    def set_enabled(self, profile_id: str, enabled: bool, actor: Actor) -> SaveResult:
        stored = self.get(profile_id)
        if stored is None:
            raise KeyError(f"no profile {profile_id!r}")
        return self.save(stored.profile.model_copy(update={"enabled": enabled}), actor)

    def import_profiles(self, items: Sequence[Profile], actor: Actor) -> list[SaveResult]:
        return [self.save(p, actor) for p in items]

    def import_yaml(self, source: str | Path, actor: Actor) -> list[SaveResult]:
        """Validate the whole file first: a file with one bad profile imports nothing."""
        return self.import_profiles(load_profiles_yaml(source), actor)

    @staticmethod
    def _stored(row: Any) -> StoredProfile:
        return StoredProfile(
            profile=parse_profile(row.body),
            version=row.version,
            updated_at=_utc(row.updated_at),
            updated_by=row.updated_by,
        )
