"""The store: upgrades without losing data, consent on every offence read, append-only audit."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import polars as pl
import pytest
import sqlalchemy as sa

from cites_risk.features.contract import INSPECTION, OFFENCE, conform
from cites_risk.profiling.profiles.watchlist import WatchlistRepository
from cites_risk.profiling.store import Actor, Store
from cites_risk.profiling.store.core import make_engine, upgrade, upsert
from cites_risk.profiling.store.schema import LATEST, TS, inspections, offences

ADMIN = Actor("tester", "US-FWS", "admin")


def _offences() -> pl.DataFrame:
    rows = [
        {
            "offence_id": "o1",
            "detected_at": datetime(2020, 1, 1, tzinfo=UTC),
            "importer": "ACME",
            "provider_org": "US-FWS",
            "shared_with": [],
        },
        {
            "offence_id": "o2",
            "detected_at": datetime(2020, 2, 1, tzinfo=UTC),
            "importer": "ACME",
            "provider_org": "KR-KCS",
            "shared_with": ["US-FWS"],
        },
        {
            "offence_id": "o3",
            "detected_at": datetime(2020, 3, 1, tzinfo=UTC),
            "importer": "BETA",
            "provider_org": "KR-KCS",
            "shared_with": [],
        },
        {
            "offence_id": "o4",
            "detected_at": datetime(2020, 4, 1, tzinfo=UTC),
            "importer": "GAMMA",
            "provider_org": "WCO",
            "shared_with": ["*"],
        },
    ]
    return pl.DataFrame(rows).cast({"detected_at": OFFENCE.schema["detected_at"]})


def test_upgrade_from_version_1_keeps_rows(store_url: str) -> None:
    url = store_url
    engine = make_engine(url)
    assert upgrade(engine, target=1) == 1
    # Rows as version 1's code wrote them: no change counter existed yet.
    rows = conform(_offences().lazy(), OFFENCE).collect().to_dicts()
    with engine.begin() as conn:
        upsert(
            conn, offences, [r | {"recorded_at": datetime.now(UTC)} for r in rows], ["offence_id"]
        )
    engine.dispose()
    upgraded = Store(url)
    assert upgraded.version == LATEST
    assert upgraded.offences.count() == 4
    with upgraded.db.begin() as conn:
        assert sa.inspect(conn).has_table("api_keys")
    # Version 3's change counters start empty and count from the first change.
    assert upgraded.stamps() == ()
    upgraded.offences.set_consent("o1", "US-FWS", ["*"])
    assert upgraded.stamps() == (("offences", 1),)
    upgraded.close()


def test_upgrade_to_version_3_adds_job_claims_to_a_jobs_table_without_them(
    store_url: str,
) -> None:
    engine = make_engine(url := store_url)
    assert upgrade(engine, target=2) == 2
    now = datetime.now(UTC)
    with engine.begin() as conn:
        # The jobs table as versions 1 and 2 created it, with a job a process left running.
        for column in ("claimed_by", "claimed_until"):
            conn.exec_driver_sql(f"ALTER TABLE jobs DROP COLUMN {column}")
        conn.execute(
            sa.text(
                "INSERT INTO jobs (job_id, kind, status, fingerprint, rows_done, rows_rejected,"
                " organisation, created_by, created_at, updated_at) VALUES ('j1', 'score',"
                " 'running', 'fp', 10, 0, 'US-FWS', 'analyst', :now, :now)"
            ),
            {"now": now},
        )
    engine.dispose()
    store = Store(url)
    job = store.jobs.get("j1")
    assert job is not None and job.rows_done == 10 and job.claimed_by is None
    assert [j.job_id for j in store.jobs.unfinished("score", claimable_by="p1")] == ["j1"]
    assert store.jobs.claim("j1", "p1", timedelta(minutes=1))
    assert not store.jobs.claim("j1", "p2", timedelta(minutes=1))
    assert store.jobs.unfinished("score", claimable_by="p2") == []
    store.close()


def test_newer_store_than_engine_is_refused(store_url: str) -> None:
    url = store_url
    s = Store(url)
    with s.db.begin() as conn:
        conn.exec_driver_sql(f"UPDATE schema_info SET version = {LATEST + 1}")
    s.close()
    from cites_risk.profiling.store import StoreError

    with pytest.raises(StoreError, match="newer than this engine"):
        Store(url)


def test_offences_are_filtered_by_consent(any_store: Store) -> None:
    any_store.offences.add(_offences())
    assert sorted(any_store.offences.visible_to("US-FWS")["offence_id"]) == ["o1", "o2", "o4"]
    assert sorted(any_store.offences.visible_to("KR-KCS")["offence_id"]) == ["o2", "o3", "o4"]
    assert sorted(any_store.offences.visible_to("NL-CUSTOMS")["offence_id"]) == ["o4"]
    assert any_store.offences.get("o3", "US-FWS") is None
    assert any_store.offences.get("o3", "KR-KCS") is not None


def test_only_the_provider_changes_consent(any_store: Store) -> None:
    any_store.offences.add(_offences())
    assert not any_store.offences.set_consent("o3", "US-FWS", ["US-FWS"])
    assert any_store.offences.get("o3", "US-FWS") is None
    assert any_store.offences.set_consent("o3", "KR-KCS", ["US-FWS"])
    assert any_store.offences.get("o3", "US-FWS") is not None


def test_a_narrowed_consent_is_a_withdrawal_from_who_lost_sight_only(any_store: Store) -> None:
    offences = any_store.offences
    offences.add(_offences())
    start = datetime.now(UTC)
    assert not offences.withdrawn_since("US-FWS", start)  # new records withdraw nothing
    # Loaded again with less sharing (o2 no longer to US-FWS) is a withdrawal as well.
    offences.add(
        _offences().with_columns(pl.lit([], dtype=pl.List(pl.String)).alias("shared_with"))
    )
    assert offences.withdrawn_since("US-FWS", start)
    # o4 was shared with everyone, now only with NL-CUSTOMS: all others lost it.
    mark = datetime.now(UTC)
    assert offences.set_consent("o4", "WCO", ["*"])
    assert offences.set_consent("o4", "WCO", ["NL-CUSTOMS"])
    assert offences.withdrawn_since("KR-KCS", mark) and offences.withdrawn_since("ANY", mark)
    assert not offences.withdrawn_since("NL-CUSTOMS", mark)
    assert not offences.withdrawn_since("WCO", mark)  # the provider always sees its own
    later = datetime.now(UTC)
    assert offences.set_consent("o4", "WCO", ["NL-CUSTOMS", "KR-KCS"])  # widened
    assert not offences.withdrawn_since("KR-KCS", later)


def _results(*rows: tuple[str, int, str]) -> pl.DataFrame:
    """Inspection results of US-FWS: (declaration, day of January 2021, outcome)."""
    return pl.DataFrame(
        [
            {
                "declaration_id": d,
                "inspected_at": datetime(2021, 1, day, tzinfo=UTC),
                "outcome": outcome,
                "selected_by": "rule",
                "inspecting_org": "US-FWS",
            }
            for d, day, outcome in rows
        ]
    ).cast({"inspected_at": INSPECTION.schema["inspected_at"]})


def _outcomes(store: Store) -> list[tuple[str, int, str]]:
    frame = store.inspections.all().sort("declaration_id", "inspected_at")
    return [(d, t.day, o) for d, t, o in frame.select(INSPECTION.names[:3]).iter_rows()]


def test_a_declaration_inspected_again_keeps_both_results(any_store: Store) -> None:
    # A documentary check clears d1 on the 4th; a physical one finds the offence on the 14th.
    any_store.inspections.add(_results(("d1", 4, "clear"), ("d2", 4, "hit")))
    any_store.inspections.add(_results(("d1", 14, "hit")))
    assert _outcomes(any_store) == [("d1", 4, "clear"), ("d1", 14, "hit"), ("d2", 4, "hit")]
    # The same result sent again (or corrected) replaces itself.
    any_store.inspections.add(_results(("d1", 14, "hit"), ("d2", 4, "clear")))
    assert _outcomes(any_store) == [("d1", 4, "clear"), ("d1", 14, "hit"), ("d2", 4, "clear")]


@pytest.mark.parametrize("left", ["aside only", "aside and an empty rebuild"])
def test_version_5_cut_short_after_its_copy_keeps_every_inspection(
    store_url: str, left: str
) -> None:
    """SQLite commits each schema change at once: a first run stopped after copying the
    rows aside leaves the table dropped, or rebuilt and empty. The next start refills it."""
    engine = make_engine(url := store_url)
    assert upgrade(engine, target=4) == 4
    rows = conform(_results(("d1", 4, "clear"), ("d2", 5, "hit")).lazy(), INSPECTION)
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(
            inspections.insert(), [r | {"recorded_at": now} for r in rows.collect().to_dicts()]
        )
        columns = ", ".join(c.name for c in inspections.columns)
        conn.exec_driver_sql(f"CREATE TABLE inspections_v4 AS SELECT {columns} FROM inspections")
        inspections.drop(conn)
        if left == "aside and an empty rebuild":
            inspections.create(conn)
    engine.dispose()
    store = Store(url)
    assert store.version == LATEST
    assert _outcomes(store) == [("d1", 4, "clear"), ("d2", 5, "hit")]
    with store.db.begin() as conn:
        assert not sa.inspect(conn).has_table("inspections_v4")
    store.close()


def test_upgrade_to_version_5_keeps_every_inspection_and_keys_them_by_time(
    store_url: str,
) -> None:
    engine = make_engine(url := store_url)
    assert upgrade(engine, target=4) == 4
    # The inspections table as versions 1 to 4 created it: one result per organisation.
    before = sa.MetaData()
    old = sa.Table(
        "inspections",
        before,
        sa.Column("declaration_id", sa.String, primary_key=True),
        sa.Column("inspecting_org", sa.String, primary_key=True),
        sa.Column("inspected_at", TS, nullable=False, index=True),
        *(sa.Column(c.name, c.type, nullable=c.nullable) for c in inspections.columns[3:]),
    )
    with engine.begin() as conn:
        inspections.drop(conn)
        old.create(conn)
        rows = conform(_results(("d1", 4, "clear"), ("d2", 5, "hit")).lazy(), INSPECTION)
        now = datetime.now(UTC)
        conn.execute(old.insert(), [r | {"recorded_at": now} for r in rows.collect().to_dicts()])
    engine.dispose()
    store = Store(url)
    assert store.version == LATEST >= 5
    assert _outcomes(store) == [("d1", 4, "clear"), ("d2", 5, "hit")]
    store.inspections.add(_results(("d1", 14, "hit")))
    assert _outcomes(store) == [("d1", 4, "clear"), ("d1", 14, "hit"), ("d2", 5, "hit")]
    store.close()


def test_rerun_does_not_duplicate(any_store: Store) -> None:
    any_store.offences.add(_offences())
    any_store.offences.add(_offences())
    assert any_store.offences.count() == 4


def test_audit_is_append_only(any_store: Store) -> None:
    any_store.audit.record(ADMIN, "offence.read", "o1", reason="test")
    events = any_store.audit.query()
    assert events[0]["action"] == "offence.read" and events[0]["detail"] == {"reason": "test"}
    with pytest.raises(sa.exc.DatabaseError, match="append-only"), any_store.db.begin() as conn:
        conn.exec_driver_sql("DELETE FROM audit_events")
    with pytest.raises(sa.exc.DatabaseError, match="append-only"), any_store.db.begin() as conn:
        conn.exec_driver_sql("UPDATE audit_events SET actor = 'someone else'")
    assert len(any_store.audit.query()) == 1


def test_audit_since_is_an_instant_whatever_its_time_zone(any_store: Store) -> None:
    any_store.audit.record(ADMIN, "offence.read", "o1")
    at = any_store.audit.query()[0]["at"]
    east, west = timezone(timedelta(hours=5)), timezone(timedelta(hours=-5))
    for zone in (UTC, east, west):
        before = (at - timedelta(minutes=30)).astimezone(zone)
        after = (at + timedelta(minutes=30)).astimezone(zone)
        assert len(any_store.audit.query(since=before)) == 1, zone
        assert any_store.audit.query(since=after) == [], zone


def test_jobs_are_found_by_fingerprint(any_store: Store) -> None:
    job = any_store.jobs.create("score", "abc", organisation="US-FWS", created_by="t")
    assert any_store.jobs.find("score", "abc", "US-FWS") == job
    assert any_store.jobs.find("score", "abc", "KR-KCS") is None
    any_store.jobs.update(job.job_id, status="failed", error="boom")
    assert any_store.jobs.find("score", "abc", "US-FWS") is None
    assert [j.job_id for j in any_store.jobs.unfinished()] == []


def test_upgrade_to_version_6_gives_each_watchlist_entry_its_adders_organisation(
    store_url: str,
) -> None:
    engine = make_engine(url := store_url)
    assert upgrade(engine, target=5) == 5
    now = datetime.now(UTC)
    entry = {
        "entity_kind": "importer",
        "reason": "case",
        "added_by": "ana",
        "added_at": now,
    }
    with engine.begin() as conn:
        # The watch-list as versions 2 to 5 created it: no organisation.
        conn.exec_driver_sql("DROP INDEX ix_watchlist_organisation")
        conn.exec_driver_sql("ALTER TABLE watchlist DROP COLUMN organisation")
        for entry_id, name in (("w1", "Acme"), ("w2", "Beta")):
            conn.execute(
                sa.text(
                    "INSERT INTO watchlist (entry_id, entity_kind, name, normalised_name, reason,"
                    " added_by, added_at) VALUES (:id, :entity_kind, :name, :name, :reason,"
                    " :added_by, :added_at)"
                ),
                entry | {"id": entry_id, "name": name},
            )
        # Only w1's adding is in the audit log (then a later event on it by another).
        for org, action in (("US-FWS", "watchlist.add"), ("NG-CUSTOMS", "watchlist.remove")):
            conn.execute(
                sa.text(
                    "INSERT INTO audit_events (at, actor, organisation, role, action, target)"
                    " VALUES (:at, 'x', :org, 'analyst', :action, 'w1')"
                ),
                {"at": now, "org": org, "action": action},
            )
    engine.dispose()
    store = Store(url)
    assert store.version == LATEST >= 6
    repo = WatchlistRepository(store)
    assert {e.entry_id: e.organisation for e in repo.entries("US-FWS")} == {
        "w1": "US-FWS",
        "w2": None,
    }
    # An entry whose organisation nobody recorded stays on every list, as it was.
    assert [e.entry_id for e in repo.entries("NG-CUSTOMS")] == ["w2"]
    store.close()


def test_version_6_fills_organisations_a_first_run_cut_short_left_empty(store_url: str) -> None:
    """SQLite commits ALTER TABLE at once: a first run may have added the column, then
    been stopped before filling it. The next start fills it."""
    engine = make_engine(url := store_url)
    assert upgrade(engine, target=5) == 5
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO watchlist (entry_id, entity_kind, name, normalised_name, reason,"
                " added_by, added_at) VALUES ('w1', 'importer', 'Acme', 'acme', 'case', 'ana',"
                " :now)"
            ),
            {"now": now},
        )
        conn.execute(
            sa.text(
                "INSERT INTO audit_events (at, actor, organisation, role, action, target)"
                " VALUES (:now, 'ana', 'US-FWS', 'analyst', 'watchlist.add', 'w1')"
            ),
            {"now": now},
        )
    engine.dispose()
    store = Store(url)
    assert [e.organisation for e in WatchlistRepository(store).entries("US-FWS")] == ["US-FWS"]
    assert WatchlistRepository(store).entries("NG-CUSTOMS") == []
    store.close()


# An SQLite store is a file of one host, read by one clock.
@pytest.mark.parametrize("store_url", ["postgresql"], indirect=True)
def test_a_host_whose_clock_runs_ahead_does_not_take_a_job_still_held(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Processes on several hosts share a PostgreSQL store: leases are dated and compared
    by the server's clock, not the claimer's."""
    store = Store(store_url)
    job = store.jobs.create("score", "fp", organisation="US-FWS", created_by="analyst")
    assert store.jobs.claim(job.job_id, "host-a", timedelta(minutes=1))
    # The host clock is the boundary faked: host B's runs two hours ahead.
    ahead = datetime.now(UTC) + timedelta(hours=2)
    monkeypatch.setattr("cites_risk.profiling.store.jobs.utcnow", lambda: ahead)
    assert store.jobs.unfinished("score", claimable_by="host-b") == []
    assert not store.jobs.claim(job.job_id, "host-b", timedelta(minutes=1))
    assert store.jobs.claim(job.job_id, "host-a", timedelta(minutes=1))  # A renews as before
    store.close()
