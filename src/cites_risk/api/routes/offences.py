"""Offence records: create, list, read and consent, always consent-filtered."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, status

from cites_risk.api.deps import Analyst, ServiceDep, Targeting
from cites_risk.api.schemas import ConsentIn, OffenceIn, OffenceOut

router = APIRouter(prefix="/offences", tags=["offences"])


@router.post("", response_model=OffenceOut, status_code=status.HTTP_201_CREATED)
def create(body: OffenceIn, actor: Targeting, service: ServiceDep) -> dict[str, Any]:
    """Record an offence provided by your organisation (the id is assigned)."""
    return service.create_offence(actor, body.model_dump())


@router.get("", response_model=list[OffenceOut])
def list_visible(
    actor: Targeting,
    service: ServiceDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=1_000_000_000)] = 0,
) -> list[dict[str, Any]]:
    """Offence records your organisation may see, newest first."""
    return service.list_offences(actor, limit=limit, offset=offset)


@router.get("/{offence_id}", response_model=OffenceOut)
def get(offence_id: str, actor: Targeting, service: ServiceDep) -> dict[str, Any]:
    """One offence record, if your organisation may see it (else 404)."""
    return service.get_offence(actor, offence_id)


@router.patch("/{offence_id}/consent", response_model=OffenceOut)
def consent(
    offence_id: str, body: ConsentIn, actor: Analyst, service: ServiceDep
) -> dict[str, Any]:
    """Change whom a record your organisation provided is shared with."""
    return service.set_consent(actor, offence_id, body.shared_with)
