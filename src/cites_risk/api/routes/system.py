"""Health, readiness, metrics, the API schema and the inspector page."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, JSONResponse

from cites_risk.api.deps import CurrentActor, ServiceDep
from cites_risk.api.metrics import CONTENT_TYPE, Metrics
from cites_risk.api.schemas import Health, Readiness

STATIC = Path(__file__).resolve().parents[1] / "static"
router = APIRouter(tags=["system"])


@router.get("/health", response_model=Health)
def health() -> Health:
    """The process is up (no authentication)."""
    return Health(status="ok")


@router.get("/ready", response_model=Readiness, responses={503: {"model": Readiness}})
def ready(service: ServiceDep) -> JSONResponse:
    """200 once a champion model and the profiles are loaded, else 503 with the reasons."""
    service.refresh()  # a champion promoted or first registered by another process
    body = Readiness(
        ready=service.ready, model_version=service.model_version, problems=service.problems
    )
    return JSONResponse(body.model_dump(), status_code=200 if service.ready else 503)


@router.get("/metrics", response_class=Response)
def metrics(request: Request, actor: CurrentActor, service: ServiceDep) -> Response:
    """Prometheus metrics; any valid API key (give the scraper its own key)."""
    registry: Metrics = request.app.state.metrics
    return Response(registry.render(), media_type=CONTENT_TYPE)


@router.get("/v1/openapi.json", include_in_schema=False)
def openapi(request: Request, actor: CurrentActor) -> JSONResponse:
    """The API's OpenAPI schema; any valid API key."""
    return JSONResponse(request.app.openapi())


@router.get("/", include_in_schema=False)
@router.get("/inspector", include_in_schema=False)
def inspector() -> FileResponse:
    """The inspector page (static; its data calls carry the key typed into it)."""
    return FileResponse(STATIC / "inspector.html", media_type="text/html")
