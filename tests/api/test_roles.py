"""The role matrix: every route x every role, allowed or denied as documented."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from cites_risk.profiling.roles import Role, at_least
from tests.api.conftest import ROLES, SETUP, Api, declaration

OFFENCE = {"detected_at": "2020-01-01T00:00:00Z", "importer": "Matrix Importer"}
INSPECTION = {
    "declaration_id": "RM-9",
    "inspected_at": "2021-06-02T00:00:00Z",
    "outcome": "clear",
    "selected_by": "manual",
}


@dataclass(frozen=True)
class Call:
    method: str
    path: str
    minimum: Role
    #: The route template this call exercises (to check every route is in the matrix).
    route: str
    kwargs: dict[str, Any] = field(default_factory=dict)


# Calls an allowed role can make without changing what other tests see: unknown ids (404),
# invalid bodies (422) or harmless writes.
MATRIX = [
    Call("POST", "/v1/score", Role.INSPECTOR, "/v1/score", {"json": declaration("RM-1")}),
    Call(
        "POST",
        "/v1/score/batch",
        Role.TARGETING,
        "/v1/score/batch",
        {"json": {"declarations": [declaration("RM-2")]}},
    ),
    Call("GET", "/v1/scores/RM-1", Role.INSPECTOR, "/v1/scores/{declaration_id}"),
    Call(
        "POST",
        "/v1/inspections",
        Role.INSPECTOR,
        "/v1/inspections",
        {"json": {"results": [INSPECTION]}},
    ),
    Call(
        "POST",
        "/v1/jobs",
        Role.TARGETING,
        "/v1/jobs",
        {"files": {"file": ("x.csv", b"a,b\n1,2\n")}, "data": {"mapping": "no-such-mapping"}},
    ),
    Call("GET", "/v1/jobs/nope", Role.TARGETING, "/v1/jobs/{job_id}"),
    Call("GET", "/v1/jobs/nope/results", Role.TARGETING, "/v1/jobs/{job_id}/results"),
    Call("GET", "/v1/jobs/nope/rejects", Role.TARGETING, "/v1/jobs/{job_id}/rejects"),
    Call("POST", "/v1/offences", Role.TARGETING, "/v1/offences", {"json": OFFENCE}),
    Call("GET", "/v1/offences", Role.TARGETING, "/v1/offences"),
    Call("GET", "/v1/offences/nope", Role.TARGETING, "/v1/offences/{offence_id}"),
    Call(
        "PATCH",
        "/v1/offences/nope/consent",
        Role.ANALYST,
        "/v1/offences/{offence_id}/consent",
        {"json": {"shared_with": []}},
    ),
    Call("GET", "/v1/profiles", Role.ANALYST, "/v1/profiles"),
    Call("PUT", "/v1/profiles/x", Role.ANALYST, "/v1/profiles/{profile_id}", {"json": {}}),
    Call("GET", "/v1/watchlist", Role.ANALYST, "/v1/watchlist"),
    Call("POST", "/v1/watchlist", Role.ANALYST, "/v1/watchlist", {"json": {}}),
    Call("DELETE", "/v1/watchlist/nope", Role.ANALYST, "/v1/watchlist/{entry_id}"),
    Call("GET", "/v1/models", Role.ANALYST, "/v1/models"),
    Call(
        "POST", "/v1/models/999/promote", Role.ANALYST, "/v1/models/{version}/promote", {"json": {}}
    ),
    Call("GET", "/v1/audit", Role.ADMIN, "/v1/audit"),
    Call("GET", "/metrics", Role.INSPECTOR, "/metrics"),
]
PUBLIC = ["/health", "/", "/inspector", "/static/inspector.js", "/static/inspector.css"]


def _id(call: Call) -> str:
    return f"{call.method} {call.path}"


@pytest.mark.parametrize("role", ROLES, ids=[r.value for r in ROLES])
@pytest.mark.parametrize("call", MATRIX, ids=_id)
def test_role_matrix(api: Api, call: Call, role: Role) -> None:
    response = api.client.request(call.method, call.path, headers=api.auth(role), **call.kwargs)
    if at_least(role, call.minimum):
        assert response.status_code not in (401, 403), response.text
        assert response.status_code < 500, response.text
    else:
        assert response.status_code == 403, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert call.minimum.value in response.json()["detail"]


@pytest.mark.parametrize("call", MATRIX, ids=_id)
def test_every_protected_route_needs_a_key(api: Api, call: Call) -> None:
    response = api.client.request(call.method, call.path, **call.kwargs)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    wrong = api.client.request(
        call.method, call.path, headers={"X-API-Key": "abc.def"}, **call.kwargs
    )
    assert wrong.status_code == 401


@pytest.mark.parametrize("path", PUBLIC)
def test_public_paths_need_no_key(api: Api, path: str) -> None:
    assert api.client.get(path).status_code == 200


def test_the_api_schema_needs_a_key_and_no_page_serves_it_without(api: Api) -> None:
    for path in ("/openapi.json", "/docs", "/redoc", "/docs/oauth2-redirect"):
        assert api.client.get(path).status_code == 404, path
    assert api.client.get("/v1/openapi.json").status_code == 401
    served = api.client.get("/v1/openapi.json", headers=api.auth(Role.INSPECTOR))
    assert served.status_code == 200 and "/v1/score" in served.json()["paths"]


def test_the_matrix_covers_every_route(api: Api) -> None:
    routes = {
        (method.upper(), path)
        for path, item in api.app.openapi()["paths"].items()
        for method in item
    }
    covered = {(c.method, c.route) for c in MATRIX} | {("GET", "/health"), ("GET", "/ready")}
    assert routes == covered


def test_x_api_key_header_and_revocation(api: Api) -> None:
    issued = api.service.keys.issue("temp", "US-FWS", Role.INSPECTOR, SETUP)
    ok = api.client.get("/metrics", headers={"X-API-Key": issued.token})
    assert ok.status_code == 200
    api.service.keys.revoke(issued.key.key_id, SETUP)
    assert api.client.get("/metrics", headers={"X-API-Key": issued.token}).status_code == 401
    tampered = issued.token[:-2] + ("AA" if not issued.token.endswith("AA") else "BB")
    assert api.client.get("/metrics", headers={"X-API-Key": tampered}).status_code == 401
