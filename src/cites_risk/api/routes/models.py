"""Model versions: list and promote (analysts and admins)."""

from __future__ import annotations

from fastapi import APIRouter

from cites_risk.api.deps import Analyst, ServiceDep
from cites_risk.api.schemas import ModelVersion, PromoteIn, PromotionResult

router = APIRouter(prefix="/models", tags=["models"])


@router.get("", response_model=list[ModelVersion])
def list_models(actor: Analyst, service: ServiceDep) -> list[ModelVersion]:
    """Registered versions with aliases and holdout metrics."""
    return service.list_models(actor)


@router.post("/{version}/promote", response_model=PromotionResult)
def promote(version: str, body: PromoteIn, actor: Analyst, service: ServiceDep) -> PromotionResult:
    """Make a version the champion; a worse one needs force (audited)."""
    return service.promote(actor, version, force=body.force)
