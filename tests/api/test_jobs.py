"""Batch jobs: same file twice is one job; results and rejects download; a job interrupted
by a crash resumes in a new process and finishes without duplicate rows."""

from __future__ import annotations

import gzip
import io
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import polars as pl
import pytest
from fastapi.testclient import TestClient

from cites_risk.api.app import create_app
from cites_risk.profiling.roles import Role
from cites_risk.profiling.service import Service
from cites_risk.profiling.sources import LEMIS_SAMPLE
from cites_risk.profiling.store import JobStatus
from tests.api.conftest import OTHER, Trained, bearer, copy_home, issue_keys

ROWS = 600


def _lemis_subset(rows: int, offset: int) -> bytes:
    """Rows of the real LEMIS sample, one of them with an unknown export country."""
    text = gzip.decompress(LEMIS_SAMPLE.read_bytes()).decode()
    frame = pl.read_csv(io.StringIO(text), infer_schema=False).slice(offset, rows)
    frame = frame.with_columns(
        pl.when(pl.int_range(pl.len()) == 3)
        .then(pl.lit("QQ"))
        .otherwise(pl.col("country_imp_exp"))
        .alias("country_imp_exp")
    )
    return frame.write_csv().encode()


def _submit(client: TestClient, name: str, data: bytes, headers: dict[str, str]) -> httpx.Response:
    """Upload ``data`` as a LEMIS file to score as a batch job."""
    return client.post(
        "/v1/jobs",
        files={"file": (name, data, "text/csv")},
        data={"mapping": "lemis"},
        headers=headers,
    )


@pytest.fixture(scope="module")
def home(trained: Trained) -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="cites-jobs-"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _wait(client: TestClient, job_id: str, headers: dict[str, str], until: set[str]) -> dict:  # type: ignore[type-arg]
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        job = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
        if job["status"] in until:
            return job  # type: ignore[no-any-return]
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} still {job['status']}")


def test_same_file_twice_is_one_job_with_results_and_rejects(trained: Trained, home: Path) -> None:
    settings = copy_home(trained, home / "a")
    service = Service.start(settings)
    keys = issue_keys(service.store)
    headers = bearer(keys, Role.TARGETING)
    data = _lemis_subset(ROWS, 0)
    with TestClient(create_app(settings, service, job_chunk_rows=250)) as client:
        first = _submit(client, "day.csv", data, headers)
        assert first.status_code == 202, first.text
        again = _submit(client, "same-bytes-other-name.csv", data, headers)
        assert again.status_code == 200 and again.json()["job_id"] == first.json()["job_id"]
        job_id = first.json()["job_id"]
        other = bearer(keys, Role.ADMIN, OTHER)
        assert client.get(f"/v1/jobs/{job_id}", headers=other).status_code == 404
        job = _wait(client, job_id, headers, {"done", "failed"})
        assert job["status"] == "done", job
        assert job["rows_total"] == ROWS and job["rows_rejected"] == 1

        parquet = client.get(f"/v1/jobs/{job_id}/results", headers=headers)
        assert parquet.status_code == 200
        scored = pl.read_parquet(io.BytesIO(parquet.content))
        assert scored.height == ROWS - 1 and scored["declaration_id"].is_unique().all()
        assert scored["score"].is_between(0, 1).all()
        # Selected within capacity over the whole job, with lanes and reasons.
        assert set(scored["lane"]) <= {"red", "yellow", "green"} and scored["selected"].any()
        assert scored["final_risk"].is_sorted(descending=True)
        assert scored.filter("selected")["reasons"].list.len().min() >= 1
        csv = client.get(f"/v1/jobs/{job_id}/results", params={"format": "csv"}, headers=headers)
        assert csv.headers["content-type"].startswith("text/csv")
        assert pl.read_csv(io.BytesIO(csv.content)).height == ROWS - 1
        rejects = client.get(f"/v1/jobs/{job_id}/rejects", headers=headers)
        assert "country_export" in rejects.text and "QQ" in rejects.text
    service.close()


def test_a_crashed_job_resumes_in_a_new_app_without_duplicates(
    trained: Trained, home: Path
) -> None:
    settings = copy_home(trained, home / "b")
    service = Service.start(settings)
    keys = issue_keys(service.store)
    headers = bearer(keys, Role.ANALYST)
    data = _lemis_subset(ROWS, 2000)
    with TestClient(create_app(settings, service, job_chunk_rows=60)) as client:
        job_id = _submit(client, "night.csv", data, headers).json()["job_id"]
        out = Path(str(service.store.jobs.get(job_id).output_path))  # type: ignore[union-attr]
        deadline = time.monotonic() + 60
        while len(list(out.glob("part-*.parquet"))) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        # Leaving the block stops the runner after the current part: the "crash".
    job = service.store.jobs.get(job_id)
    assert job is not None and job.status == JobStatus.RUNNING
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    assert 2 <= len(before) < 10
    service.close()

    # A new process: a new service and app over the same store and folders.
    restarted = Service.start(settings)
    with TestClient(create_app(settings, restarted, job_chunk_rows=999)) as client:
        job_after = _wait(client, job_id, headers, {"done", "failed"})
        assert job_after["status"] == "done", job_after
        scored = pl.read_parquet(
            io.BytesIO(client.get(f"/v1/jobs/{job_id}/results", headers=headers).content)
        )
    restarted.close()
    assert scored.height == ROWS - 1
    assert scored["declaration_id"].is_unique().all()
    # Parts written before the crash were kept, not written again.
    for name, mtime in before.items():
        assert (out / name).stat().st_mtime_ns == mtime
    assert len(list(out.glob("part-*.parquet"))) == 10


@pytest.mark.parametrize(
    "mapping",
    [str(Path(__file__).resolve().parents[2] / "README.md"), "../../pyproject", "/etc/hostname"],
)
def test_a_job_mapping_is_a_shipped_name_never_a_server_path(
    trained: Trained, home: Path, mapping: str
) -> None:
    settings = copy_home(trained, home / f"path-{abs(hash(mapping))}")
    service = Service.start(settings)
    keys = issue_keys(service.store)
    headers = bearer(keys, Role.TARGETING)
    with TestClient(create_app(settings, service)) as client:
        response = client.post(
            "/v1/jobs",
            files={"file": ("day.csv", _lemis_subset(5, 0), "text/csv")},
            data={"mapping": mapping},
            headers=headers,
        )
        assert response.status_code == 422, response.text
        body = response.json()
        assert [e["field"] for e in body["errors"]] == ["mapping"]
        # The answer lists the choices; it never opened, let alone quoted, the file named.
        assert body["detail"].startswith(f"no mapping {mapping!r}: choose one of ")
        assert "lemis" in body["detail"]
        incoming = Path(settings.home) / "jobs" / "_incoming"
        assert not any(incoming.glob("*")), "the refused upload was left behind"
    service.close()


def test_a_job_an_admin_submits_shows_no_secret_rationale_to_a_targeting_reader(
    trained: Trained, home: Path
) -> None:
    settings = copy_home(trained, home / "secret")
    service = Service.start(settings)
    keys = issue_keys(service.store)
    admin = bearer(keys, Role.ADMIN)
    reader = bearer(keys, Role.TARGETING)
    secret = {
        "id": "every-line",
        "title": "Every line",
        "owner": "jobs-test",
        "rationale": "Informant tip-off, case 42.",
        "source": "test",
        "criteria": {"all": [{"field": "consignment_lines", "range": {"min": 1}}]},
        "weight": 0.5,
        "lane": "red",
        "confidentiality": "secret",
    }
    with TestClient(create_app(settings, service, job_chunk_rows=250)) as client:
        saved = client.put(f"/v1/profiles/{secret['id']}", json=secret, headers=admin)
        assert saved.status_code == 200, saved.text
        job_id = _submit(client, "admin.csv", _lemis_subset(40, 100), admin).json()["job_id"]
        assert _wait(client, job_id, admin, {"done", "failed"})["status"] == "done"
        results = client.get(f"/v1/jobs/{job_id}/results", headers=reader)
        assert results.status_code == 200
        reasons = pl.read_parquet(io.BytesIO(results.content))["reasons"].explode()
        assert not reasons.str.contains("case 42").any()
        assert (reasons == "Selected by a restricted profile").any()
    service.close()
