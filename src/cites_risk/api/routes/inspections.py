"""Feedback: inspection results, the labels of the next training run."""

from __future__ import annotations

from fastapi import APIRouter, status

from cites_risk.api.deps import Inspector, ServiceDep
from cites_risk.api.schemas import InspectionsIn, Recorded

router = APIRouter(tags=["inspections"])


@router.post("/inspections", response_model=Recorded, status_code=status.HTTP_201_CREATED)
def record(body: InspectionsIn, actor: Inspector, service: ServiceDep) -> Recorded:
    """Record inspection results (hit or clear) of your organisation."""
    rows = [r.model_dump() for r in body.results]
    return Recorded(recorded=service.record_inspections(actor, rows))
