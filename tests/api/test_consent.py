"""Consent (WCO-CITES MoU clause 10): an organisation without consent cannot learn of an
offence record by any route: list, get, consent change, score reasons and features,
stored scores or the audit log. The provider, and whoever it shares with, can."""

from __future__ import annotations

import gzip
import io
import json
from typing import Any

import polars as pl
import pytest
import sqlalchemy as sa

from cites_risk.profiling.roles import Role
from cites_risk.profiling.sources import LEMIS_SAMPLE
from cites_risk.profiling.store import Store
from tests.api.conftest import ORG, OTHER, Api, declaration
from tests.api.test_jobs import _wait

IMPORTER = "Shadow Reptile Traders"
PROFILE = {
    "id": "importer-with-offence",
    "title": "Importer with a recorded offence",
    "owner": "consent-test",
    "rationale": "The importer was involved in a recorded CITES offence.",
    "source": "test",
    "criteria": {"all": [{"field": "importer_offences", "range": {"min": 1}}]},
    "weight": 0.5,
    "lane": "red",
}


def _score(api: Api, org: str, declaration_id: str) -> dict[str, Any]:
    body = declaration(declaration_id, importer=IMPORTER)
    response = api.client.post("/v1/score", json=body, headers=api.auth(Role.ADMIN, org))
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def _comparable(result: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in result.items() if k not in ("scored_at", "declaration_id")}


@pytest.fixture(scope="module")
def offence(api: Api) -> str:
    """A profile that fires on any importer offence, then US-FWS's unshared record."""
    saved = api.client.put(
        f"/v1/profiles/{PROFILE['id']}", json=PROFILE, headers=api.auth(Role.ANALYST)
    )
    assert saved.status_code == 200, saved.text
    before = _score(api, OTHER, "C-before")
    created = api.client.post(
        "/v1/offences",
        json={
            "detected_at": "2021-01-15T00:00:00Z",
            "importer": IMPORTER,
            "taxon": "Python regius",
            "country_export": "GH",
            "concealment": "false bottom",
        },
        headers=api.auth(Role.TARGETING, ORG),
    )
    assert created.status_code == 201, created.text
    record = created.json()
    assert record["provider_org"] == ORG and record["shared_with"] == []
    after = _score(api, OTHER, "C-after")
    # The other organisation's view did not move at all when the record arrived.
    assert _comparable(before) == _comparable(after)
    return str(record["offence_id"])


def test_the_provider_sees_it_and_it_changes_its_scores(api: Api, offence: str) -> None:
    got = api.client.get(f"/v1/offences/{offence}", headers=api.auth(Role.TARGETING, ORG))
    assert got.status_code == 200 and got.json()["importer"] == IMPORTER
    result = _score(api, ORG, "C-own")
    assert PROFILE["id"] in result["profile_hits"]
    assert result["lane"] == "red"
    assert any("recorded CITES offence" in r for r in result["reasons"])


@pytest.mark.parametrize("role", [Role.TARGETING, Role.ANALYST, Role.ADMIN])
def test_no_route_reveals_it_to_another_organisation(api: Api, offence: str, role: Role) -> None:
    headers = api.auth(role, OTHER)
    listed = api.client.get("/v1/offences", params={"limit": 1000}, headers=headers)
    assert listed.status_code == 200
    assert offence not in listed.text and IMPORTER not in listed.text
    got = api.client.get(f"/v1/offences/{offence}", headers=headers)
    missing = api.client.get("/v1/offences/US-FWS-does-not-exist", headers=headers)
    # "Not visible" and "does not exist" are the same answer, word for word.
    assert got.status_code == missing.status_code == 404
    assert got.json()["title"] == missing.json()["title"]
    if role != Role.TARGETING:
        patched = api.client.patch(
            f"/v1/offences/{offence}/consent", json={"shared_with": ["*"]}, headers=headers
        )
        assert patched.status_code == 404


def test_scores_of_another_organisation_carry_nothing_of_it(api: Api, offence: str) -> None:
    result = _score(api, OTHER, "C-other")
    assert PROFILE["id"] not in result["profile_hits"]
    text = json.dumps(result)
    assert not any("recorded CITES offence" in r for r in result["reasons"])
    features = {f["name"]: f["value"] for f in result["top_features"]}
    assert features.get("importer_offences") in (None, 0.0)
    assert offence not in text
    # Stored results are per organisation: the provider's stored score is not theirs.
    mine = api.client.get("/v1/scores/C-own", headers=api.auth(Role.INSPECTOR, OTHER))
    assert mine.status_code == 404


def test_the_audit_log_of_another_organisation_does_not_name_it(api: Api, offence: str) -> None:
    events = api.client.get(
        "/v1/audit", params={"limit": 1000}, headers=api.auth(Role.ADMIN, OTHER)
    )
    assert events.status_code == 200
    assert IMPORTER not in events.text
    assert {e["organisation"] for e in events.json()} == {OTHER}
    # The id appears only in the other organisation's own (unanswered) lookups of it.
    naming = [e for e in events.json() if offence in json.dumps(e)]
    assert {e["action"] for e in naming} <= {"offence.get"}
    assert all("found" not in (e["detail"] or {}) for e in naming)
    own = api.client.get(
        "/v1/audit",
        params={"action": "offence.create", "limit": 1000},
        headers=api.auth(Role.ADMIN, ORG),
    )
    assert offence in own.text


def test_sharing_makes_it_visible_and_only_the_provider_may_share(api: Api, offence: str) -> None:
    shared = api.client.patch(
        f"/v1/offences/{offence}/consent",
        json={"shared_with": [OTHER]},
        headers=api.auth(Role.ANALYST, ORG),
    )
    assert shared.status_code == 200 and shared.json()["shared_with"] == [OTHER]
    try:
        other = api.auth(Role.ANALYST, OTHER)
        assert api.client.get(f"/v1/offences/{offence}", headers=other).status_code == 200
        result = _score(api, OTHER, "C-shared")
        assert PROFILE["id"] in result["profile_hits"]
        # Seeing a record is not owning it: the recipient cannot widen its consent.
        widened = api.client.patch(
            f"/v1/offences/{offence}/consent", json={"shared_with": ["*"]}, headers=other
        )
        assert widened.status_code == 403
        refusals = api.service.store.audit.query(action="offence.consent.refused")
        assert [(e["target"], e["organisation"]) for e in refusals] == [(offence, OTHER)]
    finally:
        api.client.patch(
            f"/v1/offences/{offence}/consent",
            json={"shared_with": []},
            headers=api.auth(Role.ANALYST, ORG),
        )


def test_revoked_consent_is_never_served_from_a_cached_history(api: Api, offence: str) -> None:
    """The service keeps each organisation's history between requests; consent must win."""
    provider = api.auth(Role.ANALYST, ORG)
    assert PROFILE["id"] not in _score(api, OTHER, "R-1")["profile_hits"]  # cached, unshared
    api.client.patch(
        f"/v1/offences/{offence}/consent", json={"shared_with": [OTHER]}, headers=provider
    )
    assert PROFILE["id"] in _score(api, OTHER, "R-2")["profile_hits"]  # cached, shared
    api.client.patch(f"/v1/offences/{offence}/consent", json={"shared_with": []}, headers=provider)
    revoked = _score(api, OTHER, "R-3")
    assert PROFILE["id"] not in revoked["profile_hits"]
    assert IMPORTER not in json.dumps(revoked["reasons"]) or "offence" not in json.dumps(
        revoked["reasons"]
    )


def test_a_score_stored_while_shared_is_not_served_once_consent_is_withdrawn(
    api: Api, offence: str
) -> None:
    provider = api.auth(Role.ANALYST, ORG)
    reader = api.auth(Role.INSPECTOR, OTHER)
    api.client.patch(
        f"/v1/offences/{offence}/consent", json={"shared_with": [OTHER]}, headers=provider
    )
    try:
        assert PROFILE["id"] in _score(api, OTHER, "W-shared")["profile_hits"]
        stored = api.client.get("/v1/scores/W-shared", headers=reader)
        assert stored.status_code == 200 and PROFILE["id"] in stored.json()["profile_hits"]
        _score(api, ORG, "W-own")
    finally:
        api.client.patch(
            f"/v1/offences/{offence}/consent", json={"shared_with": []}, headers=provider
        )
    gone = api.client.get("/v1/scores/W-shared", headers=reader)
    assert gone.status_code == 404, gone.text
    assert IMPORTER not in gone.text and "score it again" in gone.json()["detail"]
    # Scored again after the withdrawal: stored and served, without the record.
    assert PROFILE["id"] not in _score(api, OTHER, "W-shared")["profile_hits"]
    again = api.client.get("/v1/scores/W-shared", headers=reader)
    assert again.status_code == 200 and PROFILE["id"] not in again.json()["profile_hits"]
    # The provider's own stored scores are untouched by its sharing decisions.
    assert api.client.get("/v1/scores/W-own", headers=api.auth(Role.INSPECTOR)).status_code == 200


def test_a_withdrawal_committed_while_a_score_is_computed_withholds_the_stored_score(
    api: Api, offence: str
) -> None:
    """Another process commits the provider's withdrawal just after this call read the
    records: the answer carries the record, and the stored score must not outlive it."""
    provider = api.auth(Role.ANALYST, ORG)
    api.client.patch(
        f"/v1/offences/{offence}/consent", json={"shared_with": [OTHER]}, headers=provider
    )
    elsewhere = Store(api.settings.store_url)  # the other process's own connection
    withdrawn: list[bool] = []

    def withdraw_once(conn: object, cursor: object, statement: str, *rest: object) -> None:
        if not withdrawn and "FROM offences" in statement:
            withdrawn.append(elsewhere.offences.set_consent(offence, ORG, []))

    engine = api.service.store.db.engine
    sa.event.listen(engine, "after_cursor_execute", withdraw_once)
    try:
        raced = _score(api, OTHER, "W-race")
    finally:
        sa.event.remove(engine, "after_cursor_execute", withdraw_once)
        elsewhere.close()
    assert withdrawn == [True]
    assert PROFILE["id"] in raced["profile_hits"]  # scored with the record it had read
    stored = api.client.get("/v1/scores/W-race", headers=api.auth(Role.INSPECTOR, OTHER))
    assert stored.status_code == 404, stored.text


def _hits(api: Api, job_id: str, headers: dict[str, str]) -> int:
    results = api.client.get(f"/v1/jobs/{job_id}/results", headers=headers)
    assert results.status_code == 200, results.text
    frame = pl.read_parquet(io.BytesIO(results.content))
    return int(frame["profile_hits"].list.contains(PROFILE["id"]).sum())


def test_a_job_scored_while_shared_is_scored_again_once_consent_is_withdrawn(
    api: Api, offence: str
) -> None:
    provider = api.auth(Role.ANALYST, ORG)
    other = api.auth(Role.TARGETING, OTHER)
    text = gzip.decompress(LEMIS_SAMPLE.read_bytes()).decode()
    lines = pl.read_csv(io.StringIO(text), infer_schema=False).tail(30)
    upload = lines.with_columns(pl.lit(IMPORTER).alias("us_co")).write_csv().encode()
    api.client.patch(
        f"/v1/offences/{offence}/consent", json={"shared_with": [OTHER]}, headers=provider
    )
    try:
        submitted = api.client.post(
            "/v1/jobs",
            files={"file": ("shared.csv", upload, "text/csv")},
            data={"mapping": "lemis"},
            headers=other,
        )
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["job_id"]
        assert _wait(api.client, job_id, other, {"done", "failed"})["status"] == "done"
        assert _hits(api, job_id, other) > 0
    finally:
        api.client.patch(
            f"/v1/offences/{offence}/consent", json={"shared_with": []}, headers=provider
        )
    # Its rejects come from validation alone: they stay, and do not make it score again.
    assert api.client.get(f"/v1/jobs/{job_id}/rejects", headers=other).status_code == 200
    assert api.client.get(f"/v1/jobs/{job_id}", headers=other).json()["status"] == "done"
    withheld = api.client.get(f"/v1/jobs/{job_id}/results", headers=other)
    assert withheld.status_code == 503 and "withdrawn" in withheld.json()["detail"]
    assert _wait(api.client, job_id, other, {"done", "failed"})["status"] == "done"
    assert _hits(api, job_id, other) == 0


def test_a_recipient_is_not_told_who_else_a_record_is_shared_with(api: Api, offence: str) -> None:
    provider = api.auth(Role.ANALYST, ORG)
    api.client.patch(
        f"/v1/offences/{offence}/consent",
        json={"shared_with": [OTHER, "THIRD-ORG"]},
        headers=provider,
    )
    try:
        other = api.auth(Role.ANALYST, OTHER)
        seen = api.client.get(f"/v1/offences/{offence}", headers=other).json()
        assert seen["shared_with"] == [OTHER]
        listed = api.client.get("/v1/offences", params={"limit": 1000}, headers=other).json()
        assert [r["shared_with"] for r in listed if r["offence_id"] == offence] == [[OTHER]]
        own = api.client.get(f"/v1/offences/{offence}", headers=provider).json()
        assert own["shared_with"] == sorted([OTHER, "THIRD-ORG"])
    finally:
        api.client.patch(
            f"/v1/offences/{offence}/consent", json={"shared_with": []}, headers=provider
        )
