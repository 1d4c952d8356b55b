"""Errors: one problem+json shape; 422 names the field; 413 before the body is read."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from cites_risk.api.schemas import EXAMPLE_DECLARATION
from cites_risk.profiling.roles import Role
from tests.api.conftest import Api, declaration

PROBLEM_KEYS = {"type", "title", "status", "detail", "instance"}


def _problem(response, status: int) -> dict:  # type: ignore[no-untyped-def,type-arg]
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert set(body) >= PROBLEM_KEYS and body["status"] == status
    return body  # type: ignore[no-any-return]


def test_a_missing_required_field_is_named(api: Api) -> None:
    body = declaration()
    del body["office"]
    response = api.client.post("/v1/score", json=body, headers=api.auth(Role.INSPECTOR))
    problem = _problem(response, 422)
    assert [e["field"] for e in problem["errors"]] == ["office"]
    assert "office" in problem["detail"]


def test_a_bad_value_is_named_with_the_reason(api: Api) -> None:
    body = declaration(country_origin="QQ", quantity=-3)
    response = api.client.post("/v1/score", json=body, headers=api.auth(Role.INSPECTOR))
    problem = _problem(response, 422)
    assert "quantity" in {e["field"] for e in problem["errors"]}


def test_contract_validation_names_row_and_field(api: Api) -> None:
    rows = [declaration("E-1"), declaration("E-2", country_export="QQ")]
    response = api.client.post(
        "/v1/score/batch", json={"declarations": rows}, headers=api.auth(Role.TARGETING)
    )
    problem = _problem(response, 422)
    (error,) = problem["errors"]
    assert error["field"] == "country_export" and error["row"] == 1
    assert error["loc"] == ["body", 1, "country_export"]
    assert error["message"] == "unknown country code" and error["value"] == "QQ"


def test_unknown_fields_are_refused(api: Api) -> None:
    body = declaration(colour="green")
    response = api.client.post("/v1/score", json=body, headers=api.auth(Role.INSPECTOR))
    assert "colour" in {e["field"] for e in _problem(response, 422)["errors"]}


def test_an_oversized_body_is_refused_from_its_length(api: Api) -> None:
    big = b"x" * (api.settings.api_max_body_mb * (1 << 20) + 1)
    response = api.client.post(
        "/v1/score",
        content=big,
        headers=api.auth(Role.INSPECTOR) | {"content-type": "application/json"},
    )
    assert "MiB" in _problem(response, 413)["detail"]


def test_an_oversized_chunked_body_is_refused_while_it_streams(api: Api) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(api.settings.api_max_body_mb * 4 + 1):
            yield b" " * (1 << 18)

    response = api.client.post(
        "/v1/score",
        content=chunks(),
        headers=api.auth(Role.INSPECTOR) | {"content-type": "application/json"},
    )
    _problem(response, 413)


def test_too_many_rows_in_a_json_batch(api: Api) -> None:
    rows = [declaration(f"B-{i}") for i in range(api.settings.api_max_batch + 1)]
    response = api.client.post(
        "/v1/score/batch", json={"declarations": rows}, headers=api.auth(Role.TARGETING)
    )
    assert "batch job" in _problem(response, 413)["detail"]


def test_unknown_routes_and_methods_are_problems_too(api: Api) -> None:
    _problem(api.client.get("/v1/nothing-here"), 404)
    _problem(api.client.delete("/health"), 405)


def test_metrics_count_requests_by_route_template(api: Api) -> None:
    missing = api.client.get("/v1/offences/some-id", headers=api.auth(Role.TARGETING))
    text = api.client.get("/metrics", headers=api.auth(Role.INSPECTOR)).text
    assert 'route="/v1/offences/{offence_id}"' in text
    assert (
        f'cites_risk_requests_total{{method="GET",route="/v1/offences/{{offence_id}}",'
        f'status="{missing.status_code}"}}'
    ) in text
    assert "some-id" not in text
    assert "cites_risk_ready 1.0" in text


def test_the_documented_example_is_a_valid_request(api: Api) -> None:
    """The example in the API documentation is the one the tests send: it cannot rot."""
    schemas = api.app.openapi()["components"]["schemas"]
    assert schemas["DeclarationIn"]["examples"] == [EXAMPLE_DECLARATION]
    response = api.client.post(
        "/v1/score", json=EXAMPLE_DECLARATION, headers=api.auth(Role.INSPECTOR)
    )
    assert response.status_code == 200, response.text
    assert response.json()["declaration_id"] == EXAMPLE_DECLARATION["declaration_id"]


@pytest.mark.parametrize("path", ["/health", "/inspector", "/v1/nothing-here", "/v1/audit"])
def test_every_answer_carries_the_security_headers(api: Api, path: str) -> None:
    """Answers, pages and errors alike (200, 404, 401)."""
    response = api.client.get(path)
    assert response.headers["content-security-policy"].startswith("default-src 'none'")
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    assert response.headers["cache-control"] == "no-store"


def test_an_offset_beyond_any_list_is_a_422_naming_it(api: Api) -> None:
    response = api.client.get(
        "/v1/offences", params={"offset": 2**63}, headers=api.auth(Role.TARGETING)
    )
    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["errors"]] == ["offset"]


def test_an_infinite_quantity_is_a_422_naming_it(api: Api) -> None:
    body = json.dumps(declaration("INF-1")).replace('"quantity": 120', '"quantity": 1e999')
    assert "1e999" in body
    response = api.client.post(
        "/v1/score",
        content=body,
        headers=api.auth(Role.INSPECTOR) | {"Content-Type": "application/json"},
    )
    assert response.status_code == 422, response.text
    assert "quantity" in [e["field"] for e in response.json()["errors"]]


@pytest.mark.parametrize(
    ("name", "reason", "field"), [(" ", "tip-off", "name"), ("ACME", " ", "reason")]
)
def test_a_blank_watchlist_field_is_a_422_naming_that_field(
    api: Api, name: str, reason: str, field: str
) -> None:
    response = api.client.post(
        "/v1/watchlist",
        json={"kind": "importer", "name": name, "reason": reason},
        headers=api.auth(Role.ANALYST),
    )
    assert response.status_code == 422, response.text
    assert [e["field"] for e in response.json()["errors"]] == [field]


def test_a_batch_score_and_a_job_lookup_are_audited_with_what_they_touched(api: Api) -> None:
    ids = ["AUD-1", "AUD-2", "AUD-3"]
    batch = {"declarations": [declaration(i) for i in ids]}
    scored = api.client.post("/v1/score/batch", json=batch, headers=api.auth(Role.TARGETING))
    assert scored.status_code == 200, scored.text
    probe = api.client.get("/v1/jobs/not-a-job-of-yours", headers=api.auth(Role.TARGETING))
    assert probe.status_code == 404
    admin = api.auth(Role.ADMIN)
    many = api.client.get("/v1/audit", params={"action": "score.many"}, headers=admin).json()
    assert any(e["detail"].get("declarations") == ids for e in many)
    looked = api.client.get("/v1/audit", params={"action": "job.get"}, headers=admin).json()
    assert any(
        e["target"] == "not-a-job-of-yours" and e["detail"] == {"found": False} for e in looked
    )


def test_a_nested_extra_value_is_a_422_naming_that_extra(api: Api) -> None:
    """Past the value at fault pydantic names the types it tried: the field was "str"."""
    body = declaration(extras={"x_broker": {"name": "B1"}})
    response = api.client.post("/v1/score", json=body, headers=api.auth(Role.INSPECTOR))
    problem = _problem(response, 422)
    assert problem["errors"] == [
        {
            "field": "x_broker",
            "loc": ["body", "extras", "x_broker"],
            "message": "Input should be a valid string or input should be a valid number",
        }
    ]
    assert problem["detail"] == "invalid request: check x_broker"


def test_an_extra_the_model_does_not_read_is_a_422_naming_it(api: Api) -> None:
    """A misspelt extra would otherwise score as if the declarant had left it out."""
    headers = api.auth(Role.INSPECTOR)
    misspelt = declaration("X-1", extras={"species_cod": "RACA"})
    problem = _problem(api.client.post("/v1/score", json=misspelt, headers=headers), 422)
    assert [(e["field"], e["value"]) for e in problem["errors"]] == [("extras.species_cod", "RACA")]
    assert "species_code" in problem["errors"][0]["message"]
    # In a batch, the row is named, and nothing of the batch is scored.
    rows = [declaration("X-2", extras={"species_code": "RACA"}), misspelt]
    batch = api.client.post(
        "/v1/score/batch", json={"declarations": rows}, headers=api.auth(Role.TARGETING)
    )
    assert [(e["row"], e["field"]) for e in _problem(batch, 422)["errors"]] == [
        (1, "extras.species_cod")
    ]
    spelt = declaration("X-1", extras={"species_code": "RACA"})
    assert api.client.post("/v1/score", json=spelt, headers=headers).status_code == 200


def test_a_lookup_or_change_refused_is_audited_too(api: Api) -> None:
    """Probing ids is what an audit trail is for: a miss leaves an event as a hit does."""
    probes = [
        ("get", "/v1/jobs/job-probe-1/results", Role.TARGETING, "job.results"),
        ("get", "/v1/jobs/job-probe-1/rejects", Role.TARGETING, "job.rejects"),
        ("delete", "/v1/watchlist/entry-probe-1", Role.ANALYST, "watchlist.remove"),
    ]
    for method, path, role, action in probes:
        response = getattr(api.client, method)(path, headers=api.auth(role))
        assert response.status_code == 404, response.text
        (event,) = [e for e in api.service.store.audit.query(action=action) if e["target"] in path]
        assert event["detail"]["found"] is False and event["role"] == role.value


def test_a_bad_condition_of_a_profile_is_named_by_its_place(api: Api) -> None:
    body = {
        "id": "p-bad",
        "title": "t",
        "owner": "o",
        "rationale": "r",
        "source": "s",
        "weight": 0.5,
        "criteria": {
            "all": [{"field": "importer", "equals": "x"}, {"field": "nope", "equals": "x"}]
        },
    }
    response = api.client.put("/v1/profiles/p-bad", json=body, headers=api.auth(Role.ANALYST))
    (error,) = _problem(response, 422)["errors"]
    assert error["field"] == "criteria.all.1" and "unknown field 'nope'" in error["message"]
