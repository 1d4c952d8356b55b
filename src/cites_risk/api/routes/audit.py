"""The audit log of your organisation (admins)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query

from cites_risk.api.deps import Admin, ServiceDep

router = APIRouter(tags=["audit"])


@router.get("/audit")
def query(
    actor: Admin,
    service: ServiceDep,
    action: str | None = None,
    by: Annotated[str | None, Query(description="actor (key) name")] = None,
    since: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[dict[str, Any]]:
    """Audit events of your organisation, newest first."""
    return service.audit(actor, action=action, actor_name=by, since=since, limit=limit)
