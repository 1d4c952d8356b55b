"""Rule profiles and watch-lists (analysts)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Response, status

from cites_risk.api.deps import Analyst, ServiceDep
from cites_risk.api.schemas import WatchlistIn
from cites_risk.profiling.profiles.model import Profile
from cites_risk.profiling.service import FieldProblem, InvalidInputError

router = APIRouter(tags=["profiles"])


@router.get("/profiles")
def list_profiles(actor: Analyst, service: ServiceDep) -> list[dict[str, Any]]:
    """Every stored profile with its version."""
    return service.list_profiles(actor)


@router.put("/profiles/{profile_id}")
def save_profile(
    profile_id: str,
    body: Profile,
    actor: Analyst,
    service: ServiceDep,
    expected_version: Annotated[int | None, Query(ge=0)] = None,
) -> dict[str, Any]:
    """Create or update a profile (expected_version guards concurrent edits)."""
    if body.id != profile_id:
        problem = FieldProblem(None, "id", f"must equal the path's profile id {profile_id!r}")
        raise InvalidInputError("profile id mismatch", [problem])
    return service.save_profile(actor, body.body(), expected_version)


@router.get("/watchlist")
def list_watchlist(actor: Analyst, service: ServiceDep) -> list[dict[str, Any]]:
    """Watch-list entries, expired ones included."""
    return service.list_watchlist(actor)


@router.post("/watchlist", status_code=status.HTTP_201_CREATED)
def add_watchlist(body: WatchlistIn, actor: Analyst, service: ServiceDep) -> dict[str, Any]:
    """Add an importer, exporter or declarant to the watch-list."""
    return service.add_watchlist(actor, body.kind, body.name, body.reason, body.expires_at)


@router.delete("/watchlist/{entry_id}", status_code=status.HTTP_204_NO_CONTENT)
def remove_watchlist(entry_id: str, actor: Analyst, service: ServiceDep) -> Response:
    """Remove a watch-list entry (the audit log keeps what it was)."""
    service.remove_watchlist(actor, entry_id)
    return Response(status_code=status.HTTP_204_NO_CONTENT)
