"""A request whose client leaves while it waits for a scoring thread is not scored, and the
requests that stay are answered: a real uvicorn on loopback, real sockets closed."""

from __future__ import annotations

import json
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from cites_risk.api.app import create_app
from cites_risk.profiling.roles import Role
from cites_risk.profiling.service import Service
from tests.api.conftest import ORG, Trained, bearer, copy_home, declaration, issue_keys, served

AFTER = "2022-03-01T09:00:00Z"
#: Declarations of the batch that holds the only scoring thread meanwhile (~seconds).
HOLD = 2_000


def _metric(client: httpx.Client, headers: dict[str, str], name: str, **labels: str) -> float:
    text = client.get("/metrics", headers=headers).text
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def _asks_then_waits(port: int, token: str, body: dict[str, object]) -> socket.socket:
    """A client that sends a whole ``POST /v1/score`` and has not yet read the answer."""
    data = json.dumps(body).encode()
    head = (
        f"POST /v1/score HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\n\r\n"
    ).encode()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.sendall(head + data)
    return sock


def test_a_request_whose_client_left_while_it_waited_is_not_scored(
    trained: Trained, tmp_path: Path
) -> None:
    settings = copy_home(
        trained, tmp_path, api_scoring_threads=1, api_max_batch=HOLD, api_max_body_mb=20
    )
    service = Service.start(settings)
    keys = issue_keys(service.store)
    inspector = bearer(keys, Role.INSPECTOR)
    targeting = bearer(keys, Role.TARGETING)
    hold = [declaration(f"HOLD-{i}", declared_at=AFTER) for i in range(HOLD)]
    with (
        served(create_app(settings, service)) as (url, port),
        httpx.Client(base_url=url, timeout=120) as client,
        ThreadPoolExecutor(2) as pool,
    ):
        waited = _metric(client, inspector, "cites_risk_scoring_wait_seconds_count")
        batch = pool.submit(
            client.post, "/v1/score/batch", json={"declarations": hold}, headers=targeting
        )
        # The batch holds the only scoring thread once its wait is reported.
        deadline = time.monotonic() + 60
        while _metric(client, inspector, "cites_risk_scoring_wait_seconds_count") == waited:
            assert time.monotonic() < deadline, "the batch never got a scoring thread"
            time.sleep(0.02)
        leaving = [
            _asks_then_waits(port, keys[(ORG, Role.INSPECTOR)], declaration(f"LEFT-{i}"))
            for i in range(3)
        ]
        time.sleep(0.5)  # read, authenticated and queued behind the batch
        for sock in leaving:
            sock.close()
        stays = pool.submit(
            client.post,
            "/v1/score",
            json=declaration("STAYS", declared_at=AFTER),
            headers=inspector,
        )
        time.sleep(0.3)
        # Otherwise the requests above left after their turn and were scored: no test.
        assert not batch.done(), f"the batch of {HOLD} ended too soon for this test"
        assert batch.result().status_code == 200
        answered = stays.result()
        assert answered.status_code == 200, answered.text
        assert answered.json()["declaration_id"] == "STAYS"
        left = _metric(
            client, inspector, "cites_risk_requests_total", route="/v1/score", status="499"
        )
    scored = {e["target"] for e in service.store.audit.query(action="score.one", limit=1_000)}
    service.close()
    assert "STAYS" in scored
    assert not {f"LEFT-{i}" for i in range(3)} & scored
    assert left == 3
