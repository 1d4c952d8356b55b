"""The store: one SQLAlchemy engine (SQLite file by default, PostgreSQL by URL) and upgrades."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from cites_risk.profiling.store.schema import LATEST, MIGRATIONS, changes, schema_info


class StoreError(RuntimeError):
    """The store cannot be opened or upgraded."""


class Topic(StrEnum):
    """What a process that keeps store contents in memory must notice has changed."""

    #: Offence records added, replaced, or shared differently (consent).
    OFFENCES = "offences"
    #: Inspection results recorded.
    INSPECTIONS = "inspections"
    #: A model version promoted to champion (the registry does not tell the API workers).
    CHAMPION = "champion"
    #: A rule profile created, changed, enabled or disabled.
    PROFILES = "profiles"


#: The change counters at one moment: ``((topic, counter), ...)``, sorted by topic.
Stamps = tuple[tuple[str, int], ...]


def counter(stamps: Stamps, topic: Topic) -> int:
    """``topic``'s counter in ``stamps`` (0 before its first change)."""
    return dict(stamps).get(topic.value, 0)


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
        # Connections are kept, not opened per use: an API process under load has a
        # dozen threads in the store at once, and each connection opened beyond the pool
        # ran its pragmas again (an eighth of the event loop's time at saturation).
        engine = sa.create_engine(
            url,
            connect_args={"timeout": 30, "check_same_thread": False},
            pool_size=20,
            max_overflow=20,
        )

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


def _insert(conn: Connection, table: sa.Table) -> Any:
    """An INSERT that can say ON CONFLICT (the two databases the store runs on)."""
    dialect = conn.dialect.name
    if dialect == "sqlite":
        return sqlite.insert(table)
    if dialect == "postgresql":
        return postgresql.insert(table)
    raise StoreError(f"unsupported database dialect {dialect!r}")


def upsert(
    conn: Connection, table: sa.Table, rows: Sequence[Mapping[str, Any]], keys: Iterable[str]
) -> None:
    """Insert rows, replacing those whose key exists: reruns never duplicate."""
    if not rows:
        return
    keys = list(keys)
    stmt = _insert(conn, table)
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

    def bump(self, conn: Connection, topic: Topic) -> None:
        """Count a change of ``topic`` in the caller's transaction: it commits with it."""
        stmt = _insert(conn, changes).values(topic=topic.value, counter=1, changed_at=utcnow())
        conn.execute(
            stmt.on_conflict_do_update(
                index_elements=[changes.c.topic],
                set_={"counter": changes.c.counter + 1, "changed_at": stmt.excluded.changed_at},
            )
        )

    def stamps(self) -> Stamps:
        """Every change counter, read in one query.

        A process compares them with those it read when it filled a cache. Read them
        *before* reading what they guard: a change committed in between then shows as a
        new stamp on the next read, never as stale data under a current stamp.
        """
        with self.begin() as conn:
            rows = conn.execute(sa.select(changes.c.topic, changes.c.counter)).all()
        return tuple(sorted((str(t), int(c)) for t, c in rows))

    def dispose(self) -> None:
        self.engine.dispose()
