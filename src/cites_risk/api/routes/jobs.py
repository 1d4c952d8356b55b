"""Batch jobs: upload a CSV or Parquet file, poll, download results and rejects."""

from __future__ import annotations

import shutil
import uuid
from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Response, UploadFile, status
from fastapi.responses import FileResponse

from cites_risk.api.deps import JobsDep, Targeting
from cites_risk.api.schemas import JobOut
from cites_risk.profiling.store import Job

router = APIRouter(prefix="/jobs", tags=["jobs"])
_MEDIA = {"parquet": "application/vnd.apache.parquet", "csv": "text/csv"}


def _out(job: Job) -> JobOut:
    return JobOut(
        job_id=job.job_id,
        status=job.status.value,
        mapping=str(job.params.get("mapping", "")),
        rows_total=job.rows_total,
        rows_done=job.rows_done,
        rows_rejected=job.rows_rejected,
        created_at=job.created_at,
        updated_at=job.updated_at,
        error=job.error,
        results=f"/v1/jobs/{job.job_id}/results",
        rejects=f"/v1/jobs/{job.job_id}/rejects",
    )


@router.post(
    "",
    response_model=JobOut,
    status_code=status.HTTP_202_ACCEPTED,
    responses={200: {"model": JobOut, "description": "the same file was submitted before"}},
)
def submit(
    file: Annotated[UploadFile, File(description="declarations, CSV (optionally .gz) or Parquet")],
    mapping: Annotated[str, Form(description="mapping name, e.g. lemis")],
    actor: Targeting,
    jobs: JobsDep,
    response: Response,
) -> JobOut:
    """Queue a scoring job for an uploaded file; the same file again returns the same job."""
    incoming = jobs.root / "_incoming"
    incoming.mkdir(parents=True, exist_ok=True)
    upload = incoming / uuid.uuid4().hex
    with upload.open("wb") as fh:
        shutil.copyfileobj(file.file, fh, 1 << 20)
    job, created = jobs.submit(actor, upload, file.filename or "upload.csv", mapping)
    if not created:
        response.status_code = status.HTTP_200_OK
    return _out(job)


@router.get("/{job_id}", response_model=JobOut)
def poll(job_id: str, actor: Targeting, jobs: JobsDep) -> JobOut:
    """Status and progress of a job of your organisation."""
    return _out(jobs.poll(actor, job_id))


@router.get("/{job_id}/results", response_class=FileResponse)
def results(
    job_id: str,
    actor: Targeting,
    jobs: JobsDep,
    format: Literal["parquet", "csv"] = "parquet",
) -> FileResponse:
    """Download the scored rows of a finished job as Parquet or CSV."""
    path = jobs.results(actor, job_id, format)
    return FileResponse(path, media_type=_MEDIA[format], filename=f"{job_id}.{format}")


@router.get("/{job_id}/rejects", response_class=FileResponse)
def rejects(job_id: str, actor: Targeting, jobs: JobsDep) -> FileResponse:
    """Download the rejected rows (row, field, value, reason) of a finished job as CSV."""
    path = jobs.rejects(actor, job_id)
    return FileResponse(path, media_type="text/csv", filename=f"{job_id}.rejects.csv")
