"""``create_app(settings)``: the FastAPI application over one :class:`Service`."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from cites_risk.api import errors
from cites_risk.api.concurrency import Coalescer, ScoringPool
from cites_risk.api.headers import SecurityHeaders
from cites_risk.api.limits import BodyLimit
from cites_risk.api.metrics import Metrics, RequestMetrics
from cites_risk.api.routes import (
    audit,
    inspections,
    jobs,
    models,
    offences,
    profiles,
    scoring,
    system,
)
from cites_risk.api.schemas import problem_responses
from cites_risk.profiling.batch_jobs import JobRunner
from cites_risk.profiling.config import Settings
from cites_risk.profiling.service import Service

API_PREFIX = "/v1"


def create_app(
    settings: Settings, service: Service | None = None, *, job_chunk_rows: int = 200_000
) -> FastAPI:
    """The API over ``service`` (started from ``settings`` when not given).

    Batch jobs run while the app's lifespan is active; jobs a previous process left
    unfinished resume when it starts.
    """
    owned = service is None
    svc = service if service is not None else Service.start(settings)
    runner = JobRunner(svc, chunk_rows=job_chunk_rows)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        runner.start()
        try:
            yield
        finally:
            runner.stop()
            if owned:
                svc.close()

    app = FastAPI(
        title="cites-risk",
        version="1",
        summary="Consignment risk profiling for CITES-listed wildlife",
        lifespan=lifespan,
        # Every route but health, readiness and the inspector page needs a key: the schema
        # is served at /v1/openapi.json to key holders (system.py), and no keyless page.
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
    )
    app.state.service = svc
    app.state.jobs = runner
    app.state.metrics = Metrics(settings.metrics_dir)
    app.state.scoring_pool = ScoringPool(
        settings.api_scoring_threads, on_wait=app.state.metrics.scoring_wait.observe
    )
    app.state.coalescer = Coalescer(
        app.state.scoring_pool,
        svc.score_each,
        settings.api_coalesce_max,
        on_batch=app.state.metrics.scoring_batch.observe,
        on_wait=app.state.metrics.scoring_queue.observe,
    )
    errors.install(app)

    documented = problem_responses(401, 403, 404, 409, 413, 422, 503)
    for module in (scoring, jobs, inspections, offences, profiles, models, audit):
        app.include_router(module.router, prefix=API_PREFIX, responses=documented)
    app.include_router(system.router, responses=problem_responses(401))
    app.mount("/static", StaticFiles(directory=system.STATIC), name="static")

    app.add_middleware(SecurityHeaders)
    app.add_middleware(RequestMetrics, metrics=app.state.metrics)
    # Outermost: an oversized body is refused before anything reads it.
    app.add_middleware(BodyLimit, max_bytes=settings.api_max_body_mb * (1 << 20))
    return app


def app_from_environment() -> FastAPI:
    """The app of one ``cites-risk serve`` worker, with settings from the environment."""
    return create_app(Settings())
