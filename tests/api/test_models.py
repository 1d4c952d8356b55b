"""Model versions: list, and a promotion that refuses a worse challenger unless forced."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from cites_risk.api.app import create_app
from cites_risk.profiling.roles import Role
from cites_risk.profiling.service import Service
from tests.api.conftest import Trained, bearer, copy_home, issue_keys


def test_a_worse_challenger_needs_force_and_the_promotion_is_audited(
    trained: Trained, tmp_path: Path
) -> None:
    settings = copy_home(trained, tmp_path)
    service = Service.start(settings)
    keys = issue_keys(service.store)
    analyst = bearer(keys, Role.ANALYST)
    admin = bearer(keys, Role.ADMIN)
    with TestClient(create_app(settings, service)) as client:
        versions = client.get("/v1/models", headers=analyst).json()
        assert [(v["version"], v["aliases"]) for v in versions] == [
            ("1", ["champion"]),
            ("2", ["challenger"]),
        ]
        assert versions[0]["holdout"] and versions[0]["holdout"] == versions[1]["holdout"]
        refused = client.post("/v1/models/2/promote", json={}, headers=analyst)
        assert refused.status_code == 409
        assert "average_precision" in refused.json()["detail"]
        params = {"action": "model.promote.refused"}
        (refusal,) = client.get("/v1/audit", params=params, headers=admin).json()
        assert refusal["target"] == "2" and refusal["detail"]["reasons"]
        assert client.get("/ready").json()["model_version"] == "1"

        forced = client.post("/v1/models/2/promote", json={"force": True}, headers=analyst)
        assert forced.status_code == 200, forced.text
        assert forced.json()["forced"] is True and forced.json()["previous"] == "1"
        assert forced.json()["deltas"]["average_precision"] < 0
        assert client.get("/ready").json() == {
            "ready": True,
            "model_version": "2",
            "problems": [],
        }
        events = client.get("/v1/audit", params={"action": "model.promote"}, headers=admin).json()
        (event,) = events
        assert event["target"] == "2" and event["detail"]["forced"] is True
        assert event["role"] == "analyst" and event["detail"]["reasons"]
        after = {
            v["version"]: v["aliases"] for v in client.get("/v1/models", headers=analyst).json()
        }
        assert after == {"1": ["challenger"], "2": ["champion"]}
    service.close()


def test_promoting_the_champion_again_changes_nothing(trained: Trained, tmp_path: Path) -> None:
    settings = copy_home(trained, tmp_path)
    service = Service.start(settings)
    keys = issue_keys(service.store)
    analyst = bearer(keys, Role.ANALYST)
    admin = bearer(keys, Role.ADMIN)
    stamps = service.store.stamps()
    with TestClient(create_app(settings, service)) as client:
        again = client.post("/v1/models/1/promote", json={"force": True}, headers=analyst)
        assert again.status_code == 200, again.text
        assert again.json()["previous"] == "1" and again.json()["forced"] is False
        assert "already champion: nothing changed" in again.json()["reasons"][0]
        events = client.get("/v1/audit", params={"action": "model.promote"}, headers=admin).json()
        assert events == []
    # Other workers are not told to reload a champion that did not change.
    assert service.store.stamps() == stamps
    service.close()


def test_not_ready_without_a_champion(tmp_path: Path) -> None:
    from tests.api.conftest import settings_for

    settings = settings_for(tmp_path / "empty")
    service = Service.start(settings)
    keys = issue_keys(service.store)
    with TestClient(create_app(settings, service)) as client:
        ready = client.get("/ready")
        assert ready.status_code == 503 and "train one first" in ready.json()["problems"][0]
        assert client.get("/health").status_code == 200
        scored = client.post(
            "/v1/score",
            json={"declaration_id": "x", "declared_at": "2021-01-01", "office": "LA"},
            headers={"X-API-Key": keys[("US-FWS", Role.INSPECTOR)]},
        )
        assert scored.status_code == 503
        assert scored.headers["content-type"] == "application/problem+json"
    service.close()
