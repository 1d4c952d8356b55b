"""Each organisation's watch-list is its own: listed, removed and matched for it alone;
an entry of no organisation is on every list and only an administrator removes it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from cites_risk.api.app import create_app
from cites_risk.profiling.profiles.watchlist import entity_key
from cites_risk.profiling.roles import Role
from cites_risk.profiling.service import Service
from cites_risk.profiling.store.core import utcnow
from cites_risk.profiling.store.schema import watchlist
from tests.api.conftest import ORG, OTHER, Trained, bearer, copy_home, declaration, issue_keys

IMPORTER = "Watched Imports Ltd"
PROFILE = {
    "id": "watched-importer",
    "title": "Watch-listed importer",
    "owner": "watchlist-test",
    "rationale": "The importer is on the watch-list.",
    "source": "test",
    "criteria": {"all": [{"watchlist": "importer"}]},
    "lane": "red",
}


def test_another_organisation_neither_sees_removes_nor_matches_an_entry(
    trained: Trained, tmp_path: Path
) -> None:
    settings = copy_home(trained, tmp_path)
    service = Service.start(settings)
    keys = issue_keys(service.store)

    def auth(role: Role, org: str = ORG) -> dict[str, str]:
        return bearer(keys, role, org)

    try:
        with TestClient(create_app(settings, service)) as client:
            saved = client.put(
                f"/v1/profiles/{PROFILE['id']}", json=PROFILE, headers=auth(Role.ANALYST)
            )
            assert saved.status_code == 200, saved.text
            added = client.post(
                "/v1/watchlist",
                json={"kind": "importer", "name": IMPORTER, "reason": "case 2021-7"},
                headers=auth(Role.ANALYST),
            )
            assert added.status_code == 201, added.text
            entry: dict[str, Any] = added.json()
            assert entry["organisation"] == ORG

            def listed(org: str) -> list[str]:
                got = client.get("/v1/watchlist", headers=auth(Role.ANALYST, org))
                assert got.status_code == 200, got.text
                return [e["entry_id"] for e in got.json()]

            def hits(org: str, declaration_id: str) -> list[str]:
                body = declaration(declaration_id, importer=IMPORTER)
                scored = client.post("/v1/score", json=body, headers=auth(Role.ADMIN, org))
                assert scored.status_code == 200, scored.text
                found: list[str] = scored.json()["profile_hits"]
                return found

            assert listed(ORG) == [entry["entry_id"]]
            assert listed(OTHER) == []
            assert hits(ORG, "W-1") == [PROFILE["id"]]
            assert hits(OTHER, "W-2") == []
            gone = client.delete(
                f"/v1/watchlist/{entry['entry_id']}", headers=auth(Role.ANALYST, OTHER)
            )
            assert gone.status_code == 404, gone.text
            assert listed(ORG) == [entry["entry_id"]]
    finally:
        service.close()


def test_a_shared_entry_is_removed_by_an_administrator_only(
    trained: Trained, tmp_path: Path
) -> None:
    """An entry of no organisation (kept from before lists were per organisation) is on
    every list: an analyst of any organisation is refused its removal, with the reason,
    and the refusal is audited; an administrator removes it."""
    settings = copy_home(trained, tmp_path)
    service = Service.start(settings)
    keys = issue_keys(service.store)
    with service.store.db.begin() as conn:
        conn.execute(
            watchlist.insert().values(
                entry_id="shared-1",
                entity_kind="importer",
                name=IMPORTER,
                normalised_name=entity_key(IMPORTER),
                reason="listed before lists were per organisation",
                added_by="migration",
                added_at=utcnow(),
                organisation=None,
            )
        )

    def auth(role: Role, org: str = ORG) -> dict[str, str]:
        return bearer(keys, role, org)

    try:
        with TestClient(create_app(settings, service)) as client:
            for org in (ORG, OTHER):
                refused = client.delete("/v1/watchlist/shared-1", headers=auth(Role.ANALYST, org))
                assert refused.status_code == 403, refused.text
                assert "only an administrator" in refused.json()["detail"]
                listed = client.get("/v1/watchlist", headers=auth(Role.ANALYST, org))
                assert [e["entry_id"] for e in listed.json()] == ["shared-1"]
            removals = service.store.audit.query(action="watchlist.remove")
            refusals = [e for e in removals if "refused" in (e["detail"] or {})]
            assert [(e["target"], e["organisation"]) for e in refusals] == [
                ("shared-1", OTHER),
                ("shared-1", ORG),
            ]
            gone = client.delete("/v1/watchlist/shared-1", headers=auth(Role.ADMIN, OTHER))
            assert gone.status_code == 204, gone.text
            for org in (ORG, OTHER):
                listed = client.get("/v1/watchlist", headers=auth(Role.ANALYST, org))
                assert listed.json() == []
    finally:
        service.close()
