"""Offence records and inspection results: the history the features learn from.

Offence records leave the store only through :meth:`OffenceRepository.visible_to`, which
applies the providing organisation's consent (WCO-CITES MoU clause 10). There is no other
read path, so no route, feature or explanation can see a record its caller may not.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import polars as pl
import sqlalchemy as sa

from cites_risk.features.contract import INSPECTION, OFFENCE, I, O, Record, conform
from cites_risk.profiling.store.core import Database, Topic, as_utc, upsert, utcnow
from cites_risk.profiling.store.schema import consent_withdrawals, inspections, offences

#: In ``shared_with``, this entry means the provider consents to share with everyone.
EVERYONE = "*"


def _rows(frame: pl.DataFrame, record: Record) -> list[dict[str, Any]]:
    now = utcnow()
    rows = conform(frame.lazy(), record).collect().to_dicts()
    for row in rows:
        row["recorded_at"] = now
    return rows


def _frame(rows: Sequence[Sequence[Any]], record: Record) -> pl.DataFrame:
    data = [
        {
            f.name: as_utc(v) if f.name == record.time else v
            for f, v in zip(record.fields, r, strict=True)
        }
        for r in rows
    ]
    if not data:
        return pl.DataFrame(schema=record.schema)
    return pl.DataFrame(data, schema=record.schema, strict=False)


def can_see(org: str, provider: str, shared_with: Sequence[str] | None) -> bool:
    """The consent rule, in one place."""
    shared = shared_with or ()
    return org == provider or org in shared or EVERYONE in shared


def sharing_seen_by(org: str, provider: str, shared_with: Sequence[str] | None) -> list[str]:
    """Whom a record is shared with, as ``org`` may know it: the provider sees its whole
    consent; a recipient sees only the entries that let it in, not the other recipients."""
    shared = list(shared_with or ())
    return shared if org == provider else [s for s in shared if s in (org, EVERYONE)]


def withdrawals(
    before: tuple[str, Sequence[str] | None] | None, after: tuple[str, Sequence[str]]
) -> list[tuple[str, list[str]]]:
    """(organisation, kept) for each that could see a record and no longer can.

    ``before`` and ``after`` are (provider, shared_with); ``before`` is None for a new record.
    Organisation ``*`` stands for every organisation but those in ``kept``.
    """
    if before is None:
        return []
    saw = {before[0], *(before[1] or ())}
    sees = {after[0], *after[1]}
    if EVERYONE in sees:
        return []
    lost: list[tuple[str, list[str]]] = [(org, []) for org in sorted(saw - sees - {EVERYONE})]
    if EVERYONE in saw:
        lost.append((EVERYONE, sorted(sees)))
    return lost


class OffenceRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, frame: pl.DataFrame) -> list[str]:
        """Add or replace records; returns the ids refused: held under another provider.

        Only a record's provider decides what it says and whom it is shared with, so a
        source naming another provider for an id already held (a clash of ids, or a file
        that would re-share someone else's record) must not replace it."""
        rows = _rows(frame, OFFENCE)
        for row in rows:
            row[O.SHARED_WITH] = list(row[O.SHARED_WITH] or [])
            row[O.TRANSIT] = list(row[O.TRANSIT] or [])
        with self.db.begin() as conn:
            # A record loaded again may be shared with fewer than before.
            before = self._sharing(conn, [row[O.ID] for row in rows])
            refused = {
                row[O.ID]
                for row in rows
                if row[O.ID] in before and before[row[O.ID]][0] != row[O.PROVIDER]
            }
            rows = [row for row in rows if row[O.ID] not in refused]
            upsert(conn, offences, rows, [O.ID])
            for row in rows:
                self._withdrawn(
                    conn,
                    row[O.ID],
                    before.get(row[O.ID]),
                    (row[O.PROVIDER], row[O.SHARED_WITH]),
                )
            self.db.bump(conn, Topic.OFFENCES)
        return sorted(refused)

    @staticmethod
    def _sharing(
        conn: sa.Connection, ids: Sequence[str]
    ) -> dict[str, tuple[str, Sequence[str] | None]]:
        found: dict[str, tuple[str, Sequence[str] | None]] = {}
        # Chunks: SQLite takes a bounded number of parameters per statement.
        for start in range(0, len(ids), 500):
            stmt = sa.select(offences.c.offence_id, offences.c.provider_org, offences.c.shared_with)
            chunk = ids[start : start + 500]
            for r in conn.execute(stmt.where(offences.c.offence_id.in_(chunk))):
                found[r.offence_id] = (r.provider_org, r.shared_with)
        return found

    @staticmethod
    def _withdrawn(
        conn: sa.Connection,
        offence_id: str,
        before: tuple[str, Sequence[str] | None] | None,
        after: tuple[str, Sequence[str]],
    ) -> None:
        lost = withdrawals(before, after)
        if lost:
            now = utcnow()
            conn.execute(
                consent_withdrawals.insert(),
                [
                    {
                        "offence_id": offence_id,
                        "organisation": org,
                        "kept": kept,
                        "withdrawn_at": now,
                    }
                    for org, kept in lost
                ],
            )

    def withdrawn_since(self, org: str, since: datetime) -> bool:
        """Whether ``org`` lost sight of any record after ``since``: what it was given
        then may carry a record it may no longer see."""
        stmt = sa.select(consent_withdrawals.c.organisation, consent_withdrawals.c.kept).where(
            consent_withdrawals.c.withdrawn_at > as_utc(since),
            consent_withdrawals.c.organisation.in_([org, EVERYONE]),
        )
        with self.db.begin() as conn:
            rows = conn.execute(stmt).all()
        return any(r.organisation == org or org not in r.kept for r in rows)

    def visible_to(self, org: str) -> pl.DataFrame:
        cols = [offences.c[f.name] for f in OFFENCE.fields]
        with self.db.begin() as conn:
            rows = conn.execute(sa.select(*cols).order_by(offences.c.detected_at)).all()
        shared_idx = OFFENCE.names.index(O.SHARED_WITH)
        provider_idx = OFFENCE.names.index(O.PROVIDER)
        visible = [
            (
                *r[:shared_idx],
                sharing_seen_by(org, r[provider_idx], r[shared_idx]),
                *r[shared_idx + 1 :],
            )
            for r in rows
            if can_see(org, r[provider_idx], r[shared_idx])
        ]
        return _frame(visible, OFFENCE)

    def get(self, offence_id: str, org: str) -> dict[str, Any] | None:
        """One record, or None both when it does not exist and when ``org`` may not see it."""
        with self.db.begin() as conn:
            row = conn.execute(
                sa.select(offences).where(offences.c.offence_id == offence_id)
            ).first()
        if row is None or not can_see(org, row.provider_org, row.shared_with):
            return None
        return dict(row._mapping) | {
            O.SHARED_WITH: sharing_seen_by(org, row.provider_org, row.shared_with)
        }

    def set_consent(self, offence_id: str, org: str, shared_with: Sequence[str]) -> bool:
        """Only the providing organisation may change whom a record is shared with."""
        with self.db.begin() as conn:
            before = self._sharing(conn, [offence_id]).get(offence_id)
            result = conn.execute(
                offences.update()
                .where(offences.c.offence_id == offence_id, offences.c.provider_org == org)
                .values(shared_with=sorted(set(shared_with)))
            )
            if result.rowcount:
                self._withdrawn(conn, offence_id, before, (org, list(shared_with)))
            # Every process holding offences in memory must drop them: no row count or
            # write time changes, and a reader must never keep a withdrawn consent.
            self.db.bump(conn, Topic.OFFENCES)
        return bool(result.rowcount)

    def count(self) -> int:
        with self.db.begin() as conn:
            return int(conn.execute(sa.select(sa.func.count()).select_from(offences)).scalar() or 0)


class InspectionRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, frame: pl.DataFrame) -> int:
        rows = _rows(frame, INSPECTION)
        for row in rows:
            row[I.ORG] = row[I.ORG] or ""
        with self.db.begin() as conn:
            upsert(conn, inspections, rows, [I.DECLARATION, I.ORG, I.INSPECTED_AT])
            self.db.bump(conn, Topic.INSPECTIONS)
        return len(rows)

    def all(self) -> pl.DataFrame:
        cols = [inspections.c[f.name] for f in INSPECTION.fields]
        with self.db.begin() as conn:
            rows = conn.execute(sa.select(*cols).order_by(inspections.c.inspected_at)).all()
        return _frame(rows, INSPECTION)

    def count(self) -> int:
        with self.db.begin() as conn:
            return int(
                conn.execute(sa.select(sa.func.count()).select_from(inspections)).scalar() or 0
            )
