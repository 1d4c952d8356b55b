"""Several server processes over one store (``cites-risk serve --workers N``).

Each worker keeps the champion and each organisation's history in memory. A consent change,
an offence record or a promotion made through one worker must reach every other one at its
next request, and a batch job must run exactly once, in whichever worker claims it; a job
whose worker died is taken over once its claim runs out.

Two services over one home stand for two workers (the store is the only thing they share,
as between processes); the last test runs the real command with two worker processes.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import polars as pl
from fastapi.testclient import TestClient

from cites_risk.api.app import create_app
from cites_risk.profiling.batch_jobs import JobRunner, _Heartbeat
from cites_risk.profiling.roles import Role
from cites_risk.profiling.service import Service
from cites_risk.profiling.store import Actor, JobStatus
from cites_risk.profiling.workflows import tracking_for
from tests.api.conftest import (
    ORG,
    OTHER,
    Trained,
    bearer,
    copy_home,
    declaration,
    free_port,
    issue_keys,
)
from tests.api.test_consent import IMPORTER, PROFILE
from tests.api.test_jobs import ROWS, _lemis_subset, _submit, _wait


def _score(client: TestClient | httpx.Client, key: str, ident: str) -> dict[str, Any]:
    body = declaration(ident, importer=IMPORTER)
    response = client.post("/v1/score", json=body, headers={"Authorization": f"Bearer {key}"})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def _consent(client: TestClient | httpx.Client, key: str, offence: str, to: list[str]) -> None:
    response = client.patch(
        f"/v1/offences/{offence}/consent",
        json={"shared_with": to},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert response.status_code == 200, response.text


def _offence(client: TestClient | httpx.Client, keys: dict[tuple[str, Role], str]) -> str:
    """The consent tests' profile, and an unshared offence record of its importer."""
    analyst = bearer(keys, Role.ANALYST)
    saved = client.put(f"/v1/profiles/{PROFILE['id']}", json=PROFILE, headers=analyst)
    assert saved.status_code == 200, saved.text
    created = client.post(
        "/v1/offences",
        json={
            "detected_at": "2021-01-15T00:00:00Z",
            "importer": IMPORTER,
            "taxon": "Python regius",
        },
        headers=analyst,
    )
    assert created.status_code == 201, created.text
    return str(created.json()["offence_id"])


def test_profiles_consent_records_and_promotions_made_in_one_worker_reach_the_other(
    trained: Trained, tmp_path: Path
) -> None:
    settings = copy_home(trained, tmp_path)
    first, second = Service.start(settings), Service.start(settings)
    keys = issue_keys(first.store)
    other = keys[(OTHER, Role.ADMIN)]
    with (
        TestClient(create_app(settings, first)) as a,
        TestClient(create_app(settings, second)) as b,
    ):
        # b reads the other organisation's history before the record exists, and keeps it;
        # it reads the profiles before a saves this one, and keeps them too.
        assert PROFILE["id"] not in _score(b, other, "W-0")["profile_hits"]
        offence = _offence(a, keys)
        assert PROFILE["id"] in _score(b, keys[(ORG, Role.ADMIN)], "W-1")["profile_hits"]
        assert PROFILE["id"] not in _score(b, other, "W-2")["profile_hits"]
        _consent(a, keys[(ORG, Role.ANALYST)], offence, [OTHER])
        assert PROFILE["id"] in _score(b, other, "W-3")["profile_hits"]
        # A withdrawn consent replaces no row; b must still drop what it holds.
        _consent(a, keys[(ORG, Role.ANALYST)], offence, [])
        assert PROFILE["id"] not in _score(b, other, "W-4")["profile_hits"]

        assert _score(b, other, "W-5")["model_version"] == "1"
        promoted = a.post(
            "/v1/models/2/promote",
            json={"force": True},
            headers=bearer(keys, Role.ANALYST),
        )
        assert promoted.status_code == 200, promoted.text
        assert _score(b, other, "W-6")["model_version"] == "2"
        assert b.get("/ready").json()["model_version"] == "2"
    first.close()
    second.close()


def test_a_request_during_another_threads_reload_gets_the_new_champion(
    trained: Trained, tmp_path: Path
) -> None:
    """The job thread may notice a promotion first and be loading the new champion when a
    request asks: the request waits for that load rather than answer with the old state."""
    settings = copy_home(trained, tmp_path)
    service, other = Service.start(settings), Service.start(settings)
    assert service.model_version == "1"
    other.promote(Actor("a", ORG, Role.ANALYST.value), "2", force=True)
    loading = threading.Thread(target=service.refresh)
    loading.start()
    while not service._lock.locked() and loading.is_alive():
        time.sleep(0.001)
    service.refresh()  # while the other thread holds the lock, loading version 2
    assert service.model_version == "2"
    loading.join()
    service.close()
    other.close()


def test_a_worker_without_a_champion_loads_one_promoted_elsewhere_and_jobs_wait_for_it(
    trained: Trained, tmp_path: Path
) -> None:
    settings = copy_home(trained, tmp_path).model_copy(update={"job_poll_seconds": 0.2})
    tracking = tracking_for(settings)
    # Training registered the first model as champion, and said so through the store.
    first = Service.start(settings)
    assert ("champion", 1) in first.store.stamps()
    first.close()
    tracking.client().delete_registered_model_alias(tracking.model_name, "champion")
    unready, other = Service.start(settings), Service.start(settings)
    keys = issue_keys(unready.store)
    analyst = bearer(keys, Role.ANALYST)
    with (
        TestClient(create_app(settings, unready, job_chunk_rows=200)) as a,
        TestClient(create_app(settings, other)) as b,
    ):
        assert a.get("/ready").status_code == 503
        submitted = _submit(a, "night.csv", _lemis_subset(ROWS, 6000), analyst)
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["job_id"]
        time.sleep(1.0)  # five polls in each worker: neither may take a job it would fail
        waiting = unready.store.jobs.get(job_id)
        assert waiting is not None and waiting.status == JobStatus.QUEUED, waiting
        promoted = b.post("/v1/models/2/promote", json={"force": True}, headers=analyst)
        assert promoted.status_code == 200, promoted.text
        assert a.get("/ready").json()["model_version"] == "2"
        assert _wait(a, job_id, analyst, {"done", "failed"})["status"] == "done"
    unready.close()
    other.close()


def test_claims_let_one_process_hold_a_job_until_its_lease_runs_out(
    trained: Trained, tmp_path: Path
) -> None:
    settings = copy_home(trained, tmp_path)
    service = Service.start(settings)
    jobs = service.store.jobs
    job = jobs.create("score", "fp", organisation=ORG, created_by="analyst")
    owners = [f"worker-{i}" for i in range(8)]
    with ThreadPoolExecutor(len(owners)) as pool:
        won = list(pool.map(lambda o: jobs.claim(job.job_id, o, timedelta(minutes=1)), owners))
    assert sum(won) == 1  # one conditional UPDATE: never two holders
    holder = owners[won.index(True)]
    assert jobs.claim(job.job_id, holder, timedelta(minutes=1))  # renewing is claiming again
    assert jobs.unfinished("score", claimable_by="someone-else") == []
    jobs.release(job.job_id, "someone-else")  # only the holder can give it up
    assert not jobs.claim(job.job_id, "someone-else", timedelta(minutes=1))
    jobs.release(job.job_id, holder)
    assert jobs.claim(job.job_id, "someone-else", timedelta(milliseconds=50))
    time.sleep(0.1)
    assert jobs.claim(job.job_id, holder, timedelta(minutes=1))  # the lease ran out
    # The process that stalled past its lease cannot record an outcome over the holder's.
    assert not jobs.finish(job.job_id, "someone-else", status=JobStatus.FAILED, error="late")
    assert jobs.finish(job.job_id, holder, status=JobStatus.DONE)
    done = jobs.get(job.job_id)
    assert done is not None and done.status == JobStatus.DONE and done.error is None
    assert done.claimed_by is None
    assert not jobs.claim(job.job_id, holder, timedelta(minutes=1))  # finished: nothing to hold
    service.close()


def test_a_claim_counts_as_lost_once_a_lease_passes_without_a_renewal(
    trained: Trained, tmp_path: Path
) -> None:
    """While the store refuses renewals (here: locked), the worker must stop at its next
    part: after a lease, another process may hold the job."""
    settings = copy_home(trained, tmp_path).model_copy(update={"job_lease_seconds": 0.6})
    service = Service.start(settings)
    runner = JobRunner(service)
    job = service.store.jobs.create("score", "fp", organisation=ORG, created_by="analyst")
    assert service.store.jobs.claim(job.job_id, runner.owner, runner.lease)
    with _Heartbeat(runner, job.job_id) as heartbeat:
        time.sleep(1.0)
        assert not heartbeat.lost  # renewed every 0.2 s
        locker = sqlite3.connect(settings.home / "store.db", timeout=30)
        locker.execute("BEGIN EXCLUSIVE")
        time.sleep(1.0)
        assert heartbeat.lost
        locker.rollback()
        locker.close()
    service.close()


def test_a_job_left_by_a_dead_worker_is_finished_by_another_without_duplicates(
    trained: Trained, tmp_path: Path
) -> None:
    settings = copy_home(trained, tmp_path).model_copy(
        update={"job_lease_seconds": 3.0, "job_poll_seconds": 0.2}
    )
    dead, alive = Service.start(settings), Service.start(settings)
    keys = issue_keys(dead.store)
    headers = bearer(keys, Role.ANALYST)
    # Its lifespan never starts: the job is accepted, then the worker "dies" holding it.
    app = create_app(settings, dead, job_chunk_rows=60)
    submitted = _submit(TestClient(app), "night.csv", _lemis_subset(ROWS, 4000), headers)
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["job_id"]
    assert dead.store.jobs.claim(job_id, app.state.jobs.owner, timedelta(seconds=3))
    claimed_at = time.monotonic()
    with TestClient(create_app(settings, alive)) as client:
        time.sleep(1.0)
        waiting = dead.store.jobs.get(job_id)
        assert waiting is not None and waiting.status == JobStatus.QUEUED  # the lease holds
        finished = _wait(client, job_id, headers, {"done", "failed"})
        assert finished["status"] == "done", finished
        assert time.monotonic() - claimed_at >= 3.0
        scored = client.get(f"/v1/jobs/{job_id}/results", headers=headers)
        frame = pl.read_parquet(scored.content)
    assert frame.height == ROWS - 1 and frame["declaration_id"].is_unique().all()
    done = [
        e for e in alive.store.audit.query(action="job.done", limit=10) if e["target"] == job_id
    ]
    assert len(done) == 1
    job = alive.store.jobs.get(job_id)
    assert job is not None and job.claimed_by is None  # a finished job holds no claim
    dead.close()
    alive.close()


def _metric(text: str, route: str) -> float:
    pattern = rf'cites_risk_requests_total\{{[^}}]*route="{re.escape(route)}"[^}}]*\}} (\S+)'
    return sum(float(v) for v in re.findall(pattern, text))


def test_the_serve_command_with_two_workers_shares_consent_and_metrics(
    trained: Trained, tmp_path: Path
) -> None:
    settings = copy_home(trained, tmp_path)
    service = Service.start(settings)
    keys = issue_keys(service.store)
    service.close()
    port = free_port()
    env = os.environ | {
        "CITES_RISK_HOME": str(settings.home),
        "CITES_RISK_ORGANISATION": ORG,
        "CITES_RISK_OUTPUT_DIR": str(settings.output_dir),
    }
    command = [str(Path(sys.executable).with_name("cites-risk")), "serve", "--port", str(port)]
    log = tmp_path / "server.log"
    with log.open("wb") as sink:
        server = subprocess.Popen(
            [*command, "--workers", "2"], env=env, stdout=sink, stderr=subprocess.STDOUT
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            alive = server.poll() is None and time.monotonic() < deadline
            assert alive, log.read_text()[-4000:]
            try:
                if httpx.get(f"{base}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.5)

        # A fresh connection per request, several at once: the kernel hands them to both
        # workers, so every assertion below is made against both of them.
        def many(ident: str, key: str, n: int = 12) -> list[dict[str, Any]]:
            def one(i: int) -> dict[str, Any]:
                with httpx.Client(base_url=base, timeout=60) as c:
                    return _score(c, key, f"{ident}-{i}")

            with ThreadPoolExecutor(4) as pool:
                return list(pool.map(one, range(n)))

        other = keys[(OTHER, Role.ADMIN)]
        with httpx.Client(base_url=base, timeout=60) as c:
            offence = _offence(c, keys)
        assert all(PROFILE["id"] not in r["profile_hits"] for r in many("S-0", other))
        with httpx.Client(base_url=base, timeout=60) as c:
            _consent(c, keys[(ORG, Role.ANALYST)], offence, [OTHER])
        assert all(PROFILE["id"] in r["profile_hits"] for r in many("S-1", other))
        with httpx.Client(base_url=base, timeout=60) as c:
            _consent(c, keys[(ORG, Role.ANALYST)], offence, [])
        assert all(PROFILE["id"] not in r["profile_hits"] for r in many("S-2", other))

        # /metrics counts every worker's requests, whichever worker answers it.
        auth = {"Authorization": f"Bearer {other}"}
        reads = [httpx.get(f"{base}/metrics", headers=auth, timeout=10).text for _ in range(4)]
        assert {_metric(text, "/v1/score") for text in reads} == {36.0}
        assert all("cites_risk_ready 1.0" in text for text in reads)
    finally:
        server.terminate()
        server.wait(timeout=60)
    assert server.returncode == 0, log.read_text()[-4000:]
    # Every worker came up once and stayed up: none died and was replaced.
    assert log.read_text().count("Application startup complete") == 2, log.read_text()[-4000:]
