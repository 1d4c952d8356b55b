"""API keys: issued once, stored only as a salted hash, revocable, resolved to an Actor.

A key reads ``<key_id>.<secret>``. The key id finds the row (it is not secret); the secret
is checked against ``sha256(salt + secret)`` with a constant-time comparison. The secret
itself is never stored or logged, so a copy of the database issues no keys.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa

from cites_risk.profiling.roles import Role
from cites_risk.profiling.store import Actor, Store
from cites_risk.profiling.store.core import as_utc, utcnow
from cites_risk.profiling.store.schema import api_keys

_SCHEME = "sha256"
#: What a wrong secret is compared against when the key id is unknown: the same work is
#: done either way, so timing does not tell which key ids exist.
_DUMMY = f"{_SCHEME}$00$" + "0" * 64


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    name: str
    organisation: str
    role: Role
    created_at: datetime
    revoked_at: datetime | None

    @property
    def actor(self) -> Actor:
        return Actor(name=self.name, organisation=self.organisation, role=self.role.value)


@dataclass(frozen=True)
class IssuedKey:
    """A new key: ``token`` is shown to its holder once and never again."""

    key: ApiKey
    token: str


def _digest(salt: str, secret: str) -> str:
    return hashlib.sha256(f"{salt}{secret}".encode()).hexdigest()


def _hash(secret: str) -> str:
    salt = secrets.token_hex(16)
    return f"{_SCHEME}${salt}${_digest(salt, secret)}"


def _matches(stored: str, secret: str) -> bool:
    scheme, _, rest = stored.partition("$")
    salt, _, digest = rest.partition("$")
    if scheme != _SCHEME:
        return False
    return hmac.compare_digest(_digest(salt, secret), digest)


def _key(row: sa.Row[object]) -> ApiKey:
    m = row._mapping
    created = as_utc(m["created_at"])
    assert created is not None  # NOT NULL column
    return ApiKey(
        key_id=str(m["key_id"]),
        name=str(m["name"]),
        organisation=str(m["organisation"]),
        role=Role(m["role"]),
        created_at=created,
        revoked_at=as_utc(m["revoked_at"]),
    )


class KeyRepository:
    """Issue, list, revoke and check API keys in the store's ``api_keys`` table."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def issue(self, name: str, organisation: str, role: Role | str, by: Actor) -> IssuedKey:
        if not name.strip() or not organisation.strip():
            raise ValueError("a key needs a name and an organisation")
        role = Role(role)
        key_id = secrets.token_hex(8)
        secret = secrets.token_urlsafe(32)
        now = utcnow()
        with self.store.db.begin() as conn:
            conn.execute(
                api_keys.insert().values(
                    key_id=key_id,
                    name=name.strip(),
                    organisation=organisation.strip(),
                    role=role.value,
                    key_hash=_hash(secret),
                    created_at=now,
                )
            )
        self.store.audit.record(
            by, "key.issue", key_id, name=name, organisation=organisation, role=role.value
        )
        key = ApiKey(key_id, name.strip(), organisation.strip(), role, now, None)
        return IssuedKey(key, f"{key_id}.{secret}")

    def revoke(self, key_id: str, by: Actor) -> bool:
        with self.store.db.begin() as conn:
            done = conn.execute(
                api_keys.update()
                .where(api_keys.c.key_id == key_id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=utcnow())
            ).rowcount
        if done:
            self.store.audit.record(by, "key.revoke", key_id)
        return bool(done)

    def list(self) -> list[ApiKey]:
        with self.store.db.begin() as conn:
            rows = conn.execute(sa.select(api_keys).order_by(api_keys.c.created_at)).all()
        return [_key(r) for r in rows]

    def authenticate(self, token: str) -> Actor | None:
        """The actor a presented key stands for, or None (unknown, wrong or revoked)."""
        key_id, _, secret = token.strip().partition(".")
        row = None
        if key_id and secret:
            with self.store.db.begin() as conn:
                row = conn.execute(sa.select(api_keys).where(api_keys.c.key_id == key_id)).first()
        stored = str(row._mapping["key_hash"]) if row is not None else _DUMMY
        ok = _matches(stored, secret)
        if row is None or not ok or row._mapping["revoked_at"] is not None:
            return None
        return _key(row).actor
