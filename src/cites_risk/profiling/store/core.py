"""The store: one SQLAlchemy engine (SQLite file by default, PostgreSQL by URL) and upgrades."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from cites_risk.profiling.store.schema import LATEST, MIGRATIONS, schema_info


class StoreError(RuntimeError):
    """The store cannot be opened or upgraded."""


def utcnow() -> datetime:
    return datetime.now(UTC)


def as_utc(value: datetime | None) -> datetime | None:
    """SQLite hands back naive datetimes; everything we write is UTC."""
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite:///"):
        path = Path(url.removeprefix("sqlite:///"))
        if str(path) not in ("", ":memory:"):
            path.parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30, "check_same_thread": False})

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            # WAL lets the API read while a batch job writes.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return sa.create_engine(url, pool_pre_ping=True)


def current_version(conn: Connection) -> int:
    if not sa.inspect(conn).has_table(schema_info.name):
        return 0
    version = conn.execute(sa.select(schema_info.c.version)).scalar()
    return int(version or 0)


def upgrade(engine: Engine, target: int = LATEST) -> int:
    """Apply migrations up to ``target`` in one transaction each; returns the new version."""
    with engine.begin() as conn:
        version = current_version(conn)
    if version > LATEST:
        raise StoreError(
            f"the store is at schema version {version}, newer than this engine ({LATEST}); "
            "upgrade cites-risk"
        )
    for step in range(version + 1, target + 1):
        with engine.begin() as conn:
            MIGRATIONS[step](conn)
            if step == 1:
                conn.execute(schema_info.insert().values(id=1, version=1))
            else:
                conn.execute(schema_info.update().values(version=step))
    return max(version, target)


def upsert(
    conn: Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]], keys: Iterable[str]
) -> None:
    """Insert rows, replacing those whose key exists: reruns never duplicate."""
    if not rows:
        return
    keys = list(keys)
    dialect = conn.dialect.name
    if dialect == "sqlite":
        stmt: Any = sqlite.insert(table)
    elif dialect == "postgresql":
        stmt = postgresql.insert(table)
    else:
        raise StoreError(f"unsupported database dialect {dialect!r}")
    update = {c.name: stmt.excluded[c.name] for c in table.columns if c.name not in keys}
    stmt = stmt.on_conflict_do_update(index_elements=keys, set_=update)
    # Chunks keep SQLite under its bound-parameter limit.
    chunk = max(1, 30000 // max(1, len(table.columns)))
    for start in range(0, len(rows), chunk):
        conn.execute(stmt, list(rows[start : start + chunk]))


class Database:
    """Engine plus transaction helper; repositories share one instance."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = make_engine(url)
        try:
            self.version = upgrade(self.engine)
        except sa.exc.OperationalError as exc:
            raise StoreError(f"cannot open the store at {url}: {exc.orig}") from exc

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        with self.engine.begin() as conn:
            yield conn

    def dispose(self) -> None:
        self.engine.dispose()
