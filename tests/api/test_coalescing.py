"""Single-declaration requests scored together answer each request as if it came alone."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from cites_risk.features.contract import D
from cites_risk.profiling.history_store import history_for
from cites_risk.profiling.roles import Role
from cites_risk.profiling.service import InvalidInputError, ScoreResult, Service, ServiceError
from cites_risk.profiling.store import Actor
from tests.api.conftest import ORG, OTHER, Api, Trained, copy_home, declaration

AFTER = "2022-03-01T09:00:00Z"  # after the history: the carried snapshot
INSIDE = "2019-05-02T09:00:00Z"  # inside it: the full history


def _alone(service: Any, actor: Actor, row: dict[str, Any]) -> ScoreResult | ServiceError:
    try:
        [result] = service.score(actor, [row])
    except ServiceError as exc:
        return exc
    return result


def _same(left: ScoreResult | ServiceError, right: ScoreResult | ServiceError) -> None:
    if isinstance(left, ScoreResult):
        assert isinstance(right, ScoreResult)
        assert left.model_dump(exclude={"scored_at"}) == right.model_dump(exclude={"scored_at"})
    else:
        assert type(left) is type(right) and str(left) == str(right)
        assert isinstance(left, InvalidInputError) and isinstance(right, InvalidInputError)
        assert left.problems == right.problems


def test_requests_scored_together_get_the_answers_each_gets_alone(api: Api) -> None:
    service = api.service
    lodged = history_for(service.store, service.declarations, ORG).declarations.collect()
    known = lodged.get_column(D.ID)[0]
    inspector = Actor("i", ORG, Role.INSPECTOR.value)
    analyst = Actor("a", ORG, Role.ANALYST.value)
    elsewhere = Actor("o", OTHER, Role.INSPECTOR.value)
    requests = [
        (inspector, declaration("CO-1", declared_at=AFTER)),
        (analyst, declaration("CO-2", declared_at=AFTER, country_origin="CN")),
        (inspector, declaration("CO-3", declared_at=AFTER, country_origin="QQ")),  # invalid
        (elsewhere, declaration("CO-4", declared_at=AFTER)),  # another organisation's history
        (inspector, declaration(known, declared_at=AFTER)),  # lodged already: scored again
        (inspector, declaration("CO-1", declared_at=AFTER, quantity=900)),  # asked twice
        (inspector, declaration("CO-5", declared_at=INSIDE)),  # needs the whole history
        (analyst, declaration("CO-6", declared_at=AFTER, consignment_id="SHIP-9")),
        (analyst, declaration("CO-7", declared_at=AFTER, consignment_id="SHIP-9")),
    ]

    together = service.score_each(requests)

    # The last answer for an id asked twice is the one stored, as it would have been alone.
    stored = service.stored_score(inspector, "CO-1")
    assert stored.model_dump(exclude={"scored_at"}) == together[5].model_dump(  # type: ignore[union-attr]
        exclude={"scored_at"}
    )
    assert len(together) == len(requests)
    assert isinstance(together[2], InvalidInputError)
    assert sum(isinstance(r, ScoreResult) for r in together) == len(requests) - 1
    for (actor, row), answer in zip(requests, together, strict=True):
        _same(answer, _alone(service, actor, row))


def test_every_request_is_audited_as_one_score(api: Api) -> None:
    service = api.service
    actor = Actor("audited", ORG, Role.INSPECTOR.value)
    ids = [f"AU-{i}" for i in range(3)]
    service.score_each([(actor, declaration(i, declared_at=AFTER)) for i in ids])
    events = service.store.audit.query(actor="audited")
    assert sorted(e["target"] for e in events if e["action"] == "score.one") == ids


def _metric(api: Api, name: str) -> float:
    text = api.client.get("/metrics", headers=api.auth(Role.ADMIN)).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"{name} not exported")


def test_concurrent_requests_get_their_own_answers(api: Api) -> None:
    rows = [
        declaration(f"CC-{i}", declared_at=AFTER, quantity=10 * (i + 1), country_origin=c)
        for i, c in enumerate(["MX", "CN", "QQ", "US", "MX", "NG", "VN", "MX"])
    ]
    counted = _metric(api, "cites_risk_scoring_batch_declarations_sum")
    headers = api.auth(Role.INSPECTOR)

    def post(row: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        r = api.client.post("/v1/score", json=row, headers=headers)
        return r.status_code, r.json()

    with ThreadPoolExecutor(max_workers=len(rows)) as pool:
        answers = list(pool.map(post, rows))

    assert _metric(api, "cites_risk_scoring_batch_declarations_sum") - counted == len(rows)
    for row, (status, body) in zip(rows, answers, strict=True):
        if row["country_origin"] == "QQ":
            assert status == 422 and "country_origin" in str(body)
            continue
        assert status == 200 and body["declaration_id"] == row["declaration_id"]
        again = api.client.post("/v1/score", json=row, headers=headers).json()
        assert {k: v for k, v in again.items() if k != "scored_at"} == {
            k: v for k, v in body.items() if k != "scored_at"
        }


def test_a_store_failure_fails_only_the_requests_it_touched(
    trained: Trained, tmp_path: Path
) -> None:
    """The database refuses the other organisation's results (a real SQLite trigger): its
    request fails alone, and what was stored before it was audited."""
    service = Service.start(copy_home(trained, tmp_path))
    try:
        with service.store.db.begin() as conn:
            conn.exec_driver_sql(
                "CREATE TRIGGER refuse_other BEFORE INSERT ON scores "
                f"WHEN NEW.organisation = '{OTHER}' BEGIN SELECT RAISE(ABORT, 'disk full'); END"
            )
        ours = Actor("ours", ORG, Role.INSPECTOR.value)
        theirs = Actor("theirs", OTHER, Role.INSPECTOR.value)
        answers = service.score_each(
            [
                (ours, declaration("SF-1", declared_at=AFTER)),
                (theirs, declaration("SF-2", declared_at=AFTER)),
                (ours, declaration("SF-1", declared_at=AFTER, quantity=5)),  # a later round
            ]
        )
        assert isinstance(answers[0], ScoreResult) and isinstance(answers[2], ScoreResult)
        assert "disk full" in str(answers[1])
        audited = service.store.audit.query(action="score.one")
        assert sorted((e["actor"], e["target"]) for e in audited) == [
            ("ours", "SF-1"),
            ("ours", "SF-1"),
        ]
        assert service.stored_score(ours, "SF-1").score == answers[2].score
    finally:
        service.close()
