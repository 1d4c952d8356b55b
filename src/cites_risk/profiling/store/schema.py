"""Tables of the store and the numbered migrations that build them.

A store at any version upgrades in place to the newest one without losing a row. Version 1
holds what the engine needs to run; later versions add what later features brought (keys,
watch-lists, profile history, stored scores; change counters and job claims for several
processes over one store); version 5 keys inspections by their time as well, so that a
declaration inspected twice keeps both results.
"""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Connection

metadata = sa.MetaData()
TS = sa.DateTime(timezone=True)

schema_info = sa.Table(
    "schema_info",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
)

offences = sa.Table(
    "offences",
    metadata,
    sa.Column("offence_id", sa.String, primary_key=True),
    sa.Column("detected_at", TS, nullable=False, index=True),
    sa.Column("importer", sa.String, index=True),
    sa.Column("exporter", sa.String, index=True),
    sa.Column("declarant", sa.String),
    sa.Column("hs_code", sa.String),
    sa.Column("taxon", sa.String),
    sa.Column("appendix", sa.String),
    sa.Column("country_origin", sa.String),
    sa.Column("country_export", sa.String),
    sa.Column("countries_transit", sa.JSON),
    sa.Column("country_destination", sa.String),
    sa.Column("office", sa.String),
    sa.Column("concealment", sa.String),
    sa.Column("quantity", sa.Float),
    sa.Column("mass_kg", sa.Float),
    sa.Column("provider_org", sa.String, nullable=False, index=True),
    sa.Column("shared_with", sa.JSON, nullable=False),
    sa.Column("recorded_at", TS, nullable=False),
)

inspections = sa.Table(
    "inspections",
    metadata,
    sa.Column("declaration_id", sa.String, primary_key=True),
    sa.Column("inspecting_org", sa.String, primary_key=True),
    # Part of the key since version 5: a declaration inspected again (a documentary check,
    # then a physical one) keeps both results; the same result sent again replaces itself.
    sa.Column("inspected_at", TS, primary_key=True, index=True),
    sa.Column("outcome", sa.String, nullable=False),
    sa.Column("selected_by", sa.String, nullable=False),
    sa.Column("finding", sa.String),
    sa.Column("recorded_at", TS, nullable=False),
)

profiles = sa.Table(
    "profiles",
    metadata,
    sa.Column("profile_id", sa.String, primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("body", sa.JSON, nullable=False),
    sa.Column("enabled", sa.Boolean, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
    sa.Column("updated_by", sa.String, nullable=False),
)

audit_events = sa.Table(
    "audit_events",
    metadata,
    sa.Column("event_id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("at", TS, nullable=False, index=True),
    sa.Column("actor", sa.String, nullable=False),
    sa.Column("organisation", sa.String, nullable=False),
    sa.Column("role", sa.String, nullable=False),
    sa.Column("action", sa.String, nullable=False, index=True),
    sa.Column("target", sa.String),
    sa.Column("detail", sa.JSON),
)

jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("job_id", sa.String, primary_key=True),
    sa.Column("kind", sa.String, nullable=False),
    sa.Column("status", sa.String, nullable=False),
    sa.Column("fingerprint", sa.String, nullable=False, index=True),
    sa.Column("input_path", sa.String),
    sa.Column("output_path", sa.String),
    sa.Column("rows_total", sa.Integer),
    sa.Column("rows_done", sa.Integer, nullable=False, default=0),
    sa.Column("rows_rejected", sa.Integer, nullable=False, default=0),
    sa.Column("params", sa.JSON),
    sa.Column("organisation", sa.String, nullable=False),
    sa.Column("created_by", sa.String, nullable=False),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("updated_at", TS, nullable=False),
    sa.Column("error", sa.String),
    # The process running the job and until when its claim holds (renewed as it works):
    # several API workers share one queue, and a job whose worker died is taken over.
    sa.Column("claimed_by", sa.String),
    sa.Column("claimed_until", TS),
)

# --- version 2 ---------------------------------------------------------------------------

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("key_id", sa.String, primary_key=True),
    sa.Column("name", sa.String, nullable=False),
    sa.Column("organisation", sa.String, nullable=False),
    sa.Column("role", sa.String, nullable=False),
    sa.Column("key_hash", sa.String, nullable=False, unique=True),
    sa.Column("created_at", TS, nullable=False),
    sa.Column("revoked_at", TS),
)

watchlist = sa.Table(
    "watchlist",
    metadata,
    sa.Column("entry_id", sa.String, primary_key=True),
    sa.Column("entity_kind", sa.String, nullable=False),
    sa.Column("name", sa.String, nullable=False),
    sa.Column("normalised_name", sa.String, nullable=False, index=True),
    sa.Column("reason", sa.String, nullable=False),
    sa.Column("expires_at", TS),
    sa.Column("added_by", sa.String, nullable=False),
    sa.Column("added_at", TS, nullable=False),
    # Whose list the entry is on: only that organisation's analysts see, change and match
    # it. NULL: added before entries had one, and its adding is not in the audit log; such
    # an entry stays on every organisation's list, as it was.
    sa.Column("organisation", sa.String, index=True),
)

profile_versions = sa.Table(
    "profile_versions",
    metadata,
    sa.Column("profile_id", sa.String, primary_key=True),
    sa.Column("version", sa.Integer, primary_key=True),
    sa.Column("body", sa.JSON, nullable=False),
    sa.Column("changed_by", sa.String, nullable=False),
    sa.Column("changed_at", TS, nullable=False),
    sa.Column("change", sa.JSON),
)

scores = sa.Table(
    "scores",
    metadata,
    sa.Column("declaration_id", sa.String, primary_key=True),
    sa.Column("organisation", sa.String, primary_key=True),
    sa.Column("scored_at", TS, nullable=False),
    sa.Column("model_version", sa.String),
    sa.Column("score", sa.Float, nullable=False),
    sa.Column("lane", sa.String, nullable=False),
    sa.Column("result", sa.JSON, nullable=False),
)

#: One counter per kind of change that processes caching store contents must notice
#: (a consent change replaces no row, a promotion lives in the model registry).
changes = sa.Table(
    "changes",
    metadata,
    sa.Column("topic", sa.String, primary_key=True),
    sa.Column("counter", sa.Integer, nullable=False),
    sa.Column("changed_at", TS, nullable=False),
)

#: Who lost sight of an offence record, and when (consent narrowed). Results computed
#: before that (stored scores, batch jobs) may carry the record and are not served again.
consent_withdrawals = sa.Table(
    "consent_withdrawals",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("offence_id", sa.String, nullable=False),
    # An organisation, or "*": every organisation except those in ``kept``.
    sa.Column("organisation", sa.String, nullable=False, index=True),
    sa.Column("kept", sa.JSON, nullable=False),
    sa.Column("withdrawn_at", TS, nullable=False),
)

_V1 = (schema_info, offences, inspections, profiles, audit_events, jobs)
_V2 = (api_keys, watchlist, profile_versions, scores)
_V3 = (changes,)
_V4 = (consent_withdrawals,)


def _append_only_audit(conn: Connection) -> None:
    """The audit log refuses UPDATE and DELETE at the database, not only in our code."""
    if conn.dialect.name == "sqlite":
        for op in ("UPDATE", "DELETE"):
            conn.exec_driver_sql(
                f"CREATE TRIGGER IF NOT EXISTS audit_no_{op.lower()} BEFORE {op} ON audit_events "
                "BEGIN SELECT RAISE(ABORT, 'audit log is append-only'); END"
            )
    elif conn.dialect.name == "postgresql":
        conn.exec_driver_sql(
            "CREATE OR REPLACE FUNCTION audit_append_only() RETURNS trigger AS $$ "
            "BEGIN RAISE EXCEPTION 'audit log is append-only'; END; $$ LANGUAGE plpgsql"
        )
        conn.exec_driver_sql(
            "DROP TRIGGER IF EXISTS audit_append_only ON audit_events; "
            "CREATE TRIGGER audit_append_only BEFORE UPDATE OR DELETE ON audit_events "
            "FOR EACH ROW EXECUTE FUNCTION audit_append_only()"
        )


def _v1(conn: Connection) -> None:
    metadata.create_all(conn, tables=list(_V1))
    _append_only_audit(conn)


def _v2(conn: Connection) -> None:
    metadata.create_all(conn, tables=list(_V2))


def _v3(conn: Connection) -> None:
    metadata.create_all(conn, tables=list(_V3))
    # A store created at version 1 by this code already has the claim columns.
    present = {c["name"] for c in sa.inspect(conn).get_columns(jobs.name)}
    for column in (jobs.c.claimed_by, jobs.c.claimed_until):
        if column.name not in present:
            kind = column.type.compile(dialect=conn.dialect)
            conn.exec_driver_sql(f"ALTER TABLE {jobs.name} ADD COLUMN {column.name} {kind}")


def _v4(conn: Connection) -> None:
    metadata.create_all(conn, tables=list(_V4))


def _v5(conn: Connection) -> None:
    """Inspections keyed by (declaration, organisation, time). The table is copied aside,
    rebuilt and filled again: neither database alters a primary key in place the same way.

    SQLite commits each schema change at once, so a first run cut short may have left the
    copy aside and the table missing, or rebuilt and empty. While the copy is there, it
    holds the rows, and every step after it is run again from it."""
    aside = f"{inspections.name}_v4"
    inspector = sa.inspect(conn)
    columns = ", ".join(c.name for c in inspections.columns)
    if not inspector.has_table(aside):
        pk = inspector.get_pk_constraint(inspections.name)["constrained_columns"]
        if "inspected_at" in pk:
            return  # created at version 1 by this code
        conn.exec_driver_sql(f"CREATE TABLE {aside} AS SELECT {columns} FROM {inspections.name}")
    inspections.drop(conn, checkfirst=True)
    inspections.create(conn)
    conn.exec_driver_sql(
        f"INSERT INTO {inspections.name} ({columns}) SELECT {columns} FROM {aside}"
    )
    conn.exec_driver_sql(f"DROP TABLE {aside}")


def _v6(conn: Connection) -> None:
    """Watch-list entries belong to an organisation: the one whose analyst added each,
    as the audit log recorded it. Every step may run again: SQLite commits a schema change
    at once, so a first run cut short may have added the column and filled nothing."""
    inspector = sa.inspect(conn)
    if "organisation" not in {c["name"] for c in inspector.get_columns(watchlist.name)}:
        kind = watchlist.c.organisation.type.compile(dialect=conn.dialect)
        conn.exec_driver_sql(f"ALTER TABLE {watchlist.name} ADD COLUMN organisation {kind}")
    indexed = {i["name"] for i in inspector.get_indexes(watchlist.name)}
    for index in watchlist.indexes:
        if "organisation" in index.columns and index.name not in indexed:
            index.create(conn)
    added = (
        sa.select(audit_events.c.organisation)
        .where(audit_events.c.action == "watchlist.add")
        .where(audit_events.c.target == watchlist.c.entry_id)
        .order_by(audit_events.c.event_id)
        .limit(1)
        .scalar_subquery()
    )
    conn.execute(
        watchlist.update().where(watchlist.c.organisation.is_(None)).values(organisation=added)
    )


MIGRATIONS: dict[int, Callable[[Connection], None]] = {
    1: _v1,
    2: _v2,
    3: _v3,
    4: _v4,
    5: _v5,
    6: _v6,
}
LATEST = max(MIGRATIONS)
