"""Watch-lists of importers, exporters and declarants, matched fuzzily on normalised names.

Names in declarations are typed by hand ("ACME Trading Co., Ltd" / "Acme Trading Company"),
so entries match on a standardised key (``normalise_name`` minus legal-form words) with a
token-based similarity (rapidfuzz ``token_sort_ratio``, word order does not matter). A batch
is matched on its *distinct* names, never row by row: a day with millions of lines has a
few thousand distinct importers. Expired entries never match.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import polars as pl
import sqlalchemy as sa
from rapidfuzz import fuzz, process

from cites_risk.features.reference import normalise_name, normalise_name_expr
from cites_risk.profiling.profiles.model import EntityKind
from cites_risk.profiling.roles import Role
from cites_risk.profiling.store import Actor, Store
from cites_risk.profiling.store.core import as_utc, utcnow
from cites_risk.profiling.store.schema import watchlist

DEFAULT_THRESHOLD = 90.0
#: Legal-form words carry no identity ("Acme Ltd" is "Acme Limited"); dropped from the key.
LEGAL_FORMS = frozenset(
    "ltd limited co company inc incorporated llc corp corporation gmbh sarl sa srl spa bv nv "  # noqa: SIM905
    "ag plc pte pty oy ab as kg jsc ojsc ooo sdn bhd lda ltda cv".split()
)
#: Distinct names compared per rapidfuzz call: bounds the score matrix at ~20 MB.
_CHUNK = 20_000


def entity_key(name: str) -> str:
    """Normalised name without legal-form words (kept when they are all there is)."""
    tokens = normalise_name(name).split()
    kept = [t for t in tokens if t not in LEGAL_FORMS]
    return " ".join(kept or tokens)


def _keys(names: Sequence[str]) -> list[str]:
    normalised = (
        pl.Series("n", names, dtype=pl.String).to_frame().select(normalise_name_expr(pl.col("n")))
    )
    out = []
    for text in normalised.to_series().to_list():
        tokens = (text or "").split()
        kept = [t for t in tokens if t not in LEGAL_FORMS]
        out.append(" ".join(kept or tokens))
    return out


def _numbers(key: str) -> frozenset[str]:
    """Tokens with digits: "Importer 1" and "Importer 10" are different companies, however
    similar the strings (a registration number, a branch number)."""
    return frozenset(t for t in key.split() if any(c.isdigit() for c in t))


@dataclass(frozen=True)
class WatchlistEntry:
    entry_id: str
    kind: EntityKind
    name: str
    normalised_name: str
    reason: str
    expires_at: datetime | None
    added_by: str
    added_at: datetime
    #: Whose list it is on (None: every organisation's, see ``store.schema.watchlist``).
    organisation: str | None

    def active(self, at: datetime) -> bool:
        return self.expires_at is None or self.expires_at > at

    def as_dict(self) -> dict[str, Any]:
        return {
            "entry_id": self.entry_id,
            "kind": self.kind.value,
            "name": self.name,
            "normalised_name": self.normalised_name,
            "reason": self.reason,
            "expires_at": self.expires_at.isoformat() if self.expires_at else None,
            "added_by": self.added_by,
            "added_at": self.added_at.isoformat(),
            "organisation": self.organisation,
        }


@dataclass(frozen=True)
class WatchMatch:
    """A declared name matched to an entry: what an inspector is told about the match."""

    name: str
    entry_id: str
    entry_name: str
    score: float

    def sentence(self, kind: EntityKind) -> str:
        how = "exactly" if self.score >= 100 else f"at {self.score:.0f}% similarity"
        return (
            f"{kind.value.capitalize()} {self.name!r} matches watch-list entry "
            f"{self.entry_name!r} {how}"
        )


class WatchlistIndex:
    """Active entries of each kind, ready to match batches of names. Pure: no store access."""

    def __init__(
        self, entries: Iterable[WatchlistEntry], threshold: float = DEFAULT_THRESHOLD
    ) -> None:
        self.threshold = threshold
        self._by_kind: dict[EntityKind, list[WatchlistEntry]] = {k: [] for k in EntityKind}
        for entry in entries:
            self._by_kind[entry.kind].append(entry)

    def entries(self, kind: EntityKind) -> list[WatchlistEntry]:
        return list(self._by_kind[kind])

    def match(self, kind: EntityKind, names: Iterable[str | None]) -> dict[str, WatchMatch]:
        """Best entry (at or above the threshold) for each distinct name that has one."""
        entries = self._by_kind[kind]
        distinct = sorted({n for n in names if n})
        if not entries or not distinct:
            return {}
        choices = [e.normalised_name for e in entries]
        exact = {key: i for i, key in enumerate(choices)}
        keys = _keys(distinct)
        found: dict[str, WatchMatch] = {}
        pending: list[int] = []
        for i, key in enumerate(keys):
            j = exact.get(key)
            if j is not None:
                found[distinct[i]] = WatchMatch(
                    distinct[i], entries[j].entry_id, entries[j].name, 100.0
                )
            elif key:
                pending.append(i)
        for start in range(0, len(pending), _CHUNK):
            chunk = pending[start : start + _CHUNK]
            scores = process.cdist(
                [keys[i] for i in chunk],
                choices,
                scorer=fuzz.token_sort_ratio,
                score_cutoff=self.threshold,
                dtype=np.uint8,
                workers=-1,
            )
            for row, col in zip(*np.nonzero(scores), strict=True):
                i = chunk[int(row)]
                score = float(scores[row, col])
                best = found.get(distinct[i])
                if (best is None or score > best.score) and _numbers(keys[i]) == _numbers(
                    choices[int(col)]
                ):
                    entry = entries[int(col)]
                    found[distinct[i]] = WatchMatch(distinct[i], entry.entry_id, entry.name, score)
        return found

    def match_frame(
        self,
        frame: pl.DataFrame,
        kinds: Iterable[EntityKind],
        columns: Mapping[str, str] | None = None,
    ) -> dict[EntityKind, dict[str, WatchMatch]]:
        """Matches of the distinct names in each kind's column of ``frame``."""
        out: dict[EntityKind, dict[str, WatchMatch]] = {}
        for kind in kinds:
            column = (columns or {}).get(kind.value, kind.value)
            if column not in frame.columns:  # the evaluator reports the missing column
                continue
            names = frame.get_column(column).drop_nulls().unique().to_list()
            out[kind] = self.match(kind, names)
        return out


def _entry(row: Any) -> WatchlistEntry:
    added_at = as_utc(row.added_at)
    assert added_at is not None  # the column is NOT NULL
    return WatchlistEntry(
        entry_id=row.entry_id,
        kind=EntityKind(row.entity_kind),
        name=row.name,
        normalised_name=row.normalised_name,
        reason=row.reason,
        expires_at=as_utc(row.expires_at),
        added_by=row.added_by,
        added_at=added_at,
        organisation=row.organisation,
    )


class WatchlistEntryError(ValueError):
    """A watch-list entry refused, and the field that made it so."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class SharedEntryError(PermissionError):
    """A shared entry (of no organisation) that only an administrator may remove."""


class WatchlistRepository:
    """Audited add / remove / list of watch-list entries in the store.

    Each organisation keeps its own list: an entry is added to the actor's organisation's,
    and only that organisation reads, removes and matches it. A list names suspects and
    why; like offence records, it is not another organisation's to read.
    """

    def __init__(self, store: Store) -> None:
        self.store = store

    def add(
        self,
        kind: EntityKind | str,
        name: str,
        reason: str,
        actor: Actor,
        expires_at: datetime | None = None,
    ) -> WatchlistEntry:
        kind = EntityKind(kind)
        if not name.strip():
            raise WatchlistEntryError("name", "a watch-list entry needs a name")
        if not reason.strip():
            raise WatchlistEntryError("reason", "a watch-list entry needs a reason")
        entry = WatchlistEntry(
            entry_id=uuid.uuid4().hex[:16],
            kind=kind,
            name=name.strip(),
            normalised_name=entity_key(name),
            reason=reason.strip(),
            expires_at=as_utc(expires_at),
            added_by=actor.name,
            added_at=utcnow(),
            organisation=actor.organisation,
        )
        with self.store.db.begin() as conn:
            conn.execute(
                watchlist.insert().values(
                    entry_id=entry.entry_id,
                    entity_kind=kind.value,
                    name=entry.name,
                    normalised_name=entry.normalised_name,
                    reason=entry.reason,
                    expires_at=entry.expires_at,
                    added_by=entry.added_by,
                    added_at=entry.added_at,
                    organisation=entry.organisation,
                )
            )
        self.store.audit.record(actor, "watchlist.add", entry.entry_id, **entry.as_dict())
        return entry

    def remove(self, entry_id: str, actor: Actor) -> bool:
        """False if the actor's organisation has no such entry (another's is not told).

        An entry of no organisation (kept from before lists were per organisation) is on
        every organisation's list: removed, it is gone from all of them, so only an
        administrator may remove it (:class:`SharedEntryError` for anyone else).
        """
        entry = self.get(entry_id, actor.organisation)
        if entry is None:
            return False
        admin = actor.role == Role.ADMIN
        if entry.organisation is None and not admin:
            raise SharedEntryError(
                f"watch-list entry {entry_id!r} is shared by every organisation (it has "
                "none): only an administrator may remove it"
            )
        # The delete checks again what it may remove, whatever happened since the read.
        removable = (
            _on_list(actor.organisation)
            if admin
            else watchlist.c.organisation == actor.organisation
        )
        with self.store.db.begin() as conn:
            gone = conn.execute(
                watchlist.delete().where(watchlist.c.entry_id == entry_id, removable)
            ).rowcount
        if not gone:  # removed meanwhile by another request
            return False
        # The audit event keeps what was removed: the table itself forgets it.
        self.store.audit.record(actor, "watchlist.remove", entry_id, **entry.as_dict())
        return True

    def get(self, entry_id: str, organisation: str) -> WatchlistEntry | None:
        stmt = sa.select(watchlist).where(watchlist.c.entry_id == entry_id, _on_list(organisation))
        with self.store.db.begin() as conn:
            row = conn.execute(stmt).first()
        return _entry(row) if row else None

    def entries(
        self,
        organisation: str,
        kind: EntityKind | str | None = None,
        *,
        include_expired: bool = False,
        at: datetime | None = None,
    ) -> list[WatchlistEntry]:
        """``organisation``'s entries, by kind and name."""
        stmt = (
            sa.select(watchlist)
            .where(_on_list(organisation))
            .order_by(watchlist.c.entity_kind, watchlist.c.name)
        )
        if kind is not None:
            stmt = stmt.where(watchlist.c.entity_kind == EntityKind(kind).value)
        with self.store.db.begin() as conn:
            entries = [_entry(r) for r in conn.execute(stmt).all()]
        if include_expired:
            return entries
        now = as_utc(at) or utcnow()
        return [e for e in entries if e.active(now)]

    def index(
        self, organisation: str, at: datetime | None = None, threshold: float = DEFAULT_THRESHOLD
    ) -> WatchlistIndex:
        """``organisation``'s entries active at ``at`` (default now), ready to match a batch."""
        return WatchlistIndex(self.entries(organisation, at=at), threshold)


def _on_list(organisation: str) -> sa.ColumnElement[bool]:
    """Entries on ``organisation``'s list: its own and those no organisation owns."""
    return sa.or_(watchlist.c.organisation == organisation, watchlist.c.organisation.is_(None))
