"""Offence records and inspection results: the history the features learn from.

Offence records leave the store only through :meth:`OffenceRepository.visible_to`, which
applies the providing organisation's consent (WCO-CITES MoU clause 10). There is no other
read path, so no route, feature or explanation can see a record its caller may not.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import polars as pl
import sqlalchemy as sa

from cites_risk.features.contract import INSPECTION, OFFENCE, I, O, Record, conform
from cites_risk.profiling.store.core import Database, Topic, as_utc, upsert, utcnow
from cites_risk.profiling.store.schema import inspections, offences

#: In ``shared_with``, this entry means the provider consents to share with everyone.
EVERYONE = "*"


def _rows(frame: pl.DataFrame, record: Record) -> list[dict[str, Any]]:
    now = utcnow()
    rows = conform(frame.lazy(), record).collect().to_dicts()
    for row in rows:
        row["recorded_at"] = now
    return rows


def _frame(rows: Sequence[sa.Row[Any]], record: Record) -> pl.DataFrame:
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


class OffenceRepository:
    def __init__(self, db: Database) -> None:
        self.db = db

    def add(self, frame: pl.DataFrame) -> int:
        rows = _rows(frame, OFFENCE)
        for row in rows:
            row[O.SHARED_WITH] = list(row[O.SHARED_WITH] or [])
            row[O.TRANSIT] = list(row[O.TRANSIT] or [])
        with self.db.begin() as conn:
            upsert(conn, offences, rows, [O.ID])
            self.db.bump(conn, Topic.OFFENCES)
        return len(rows)

    def visible_to(self, org: str) -> pl.DataFrame:
        cols = [offences.c[f.name] for f in OFFENCE.fields]
        with self.db.begin() as conn:
            rows = conn.execute(sa.select(*cols).order_by(offences.c.detected_at)).all()
        shared_idx = OFFENCE.names.index(O.SHARED_WITH)
        provider_idx = OFFENCE.names.index(O.PROVIDER)
        visible = [r for r in rows if can_see(org, r[provider_idx], r[shared_idx])]
        return _frame(visible, OFFENCE)

    def get(self, offence_id: str, org: str) -> dict[str, Any] | None:
        """One record, or None both when it does not exist and when ``org`` may not see it."""
        with self.db.begin() as conn:
            row = conn.execute(
                sa.select(offences).where(offences.c.offence_id == offence_id)
            ).first()
        if row is None or not can_see(org, row.provider_org, row.shared_with):
            return None
        return dict(row._mapping)

    def set_consent(self, offence_id: str, org: str, shared_with: Sequence[str]) -> bool:
        """Only the providing organisation may change whom a record is shared with."""
        with self.db.begin() as conn:
            result = conn.execute(
                offences.update()
                .where(offences.c.offence_id == offence_id, offences.c.provider_org == org)
                .values(shared_with=sorted(set(shared_with)))
            )
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
            upsert(conn, inspections, rows, [I.DECLARATION, I.ORG])
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
