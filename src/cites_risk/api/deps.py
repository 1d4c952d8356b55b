"""Typed dependencies: the service, the authenticated actor and role guards."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from cites_risk.api.concurrency import Coalescer, ScoringPool
from cites_risk.profiling.batch_jobs import JobRunner
from cites_risk.profiling.roles import Role, at_least
from cites_risk.profiling.service import ForbiddenError, ScoreResult, Service
from cites_risk.profiling.store import Actor

#: One declaration per request, with who asks (``Service.score_each``).
DeclarationCoalescer = Coalescer[tuple[Actor, Mapping[str, Any]], ScoreResult]

# auto_error=False: a missing key is our 401 problem, not FastAPI's 403 text.
_bearer = HTTPBearer(auto_error=False, description="Authorization: Bearer <key>")
_api_key = APIKeyHeader(name="X-API-Key", auto_error=False, description="X-API-Key: <key>")


# Dependencies that neither block nor compute are ``async``: FastAPI runs a plain ``def``
# dependency on a worker thread, a hop per dependency and request.
async def get_service(request: Request) -> Service:
    service: Service = request.app.state.service
    return service


ServiceDep = Annotated[Service, Depends(get_service)]


async def get_scoring_pool(request: Request) -> ScoringPool:
    pool: ScoringPool = request.app.state.scoring_pool
    return pool


ScoringThreads = Annotated[ScoringPool, Depends(get_scoring_pool)]


async def get_coalescer(request: Request) -> DeclarationCoalescer:
    coalescer: DeclarationCoalescer = request.app.state.coalescer
    return coalescer


Coalesced = Annotated[DeclarationCoalescer, Depends(get_coalescer)]


def current_actor(
    request: Request,
    service: ServiceDep,
    bearer: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    api_key: Annotated[str | None, Depends(_api_key)],
) -> Actor:
    token = bearer.credentials if bearer is not None else api_key
    actor = service.authenticate(token)
    request.state.actor = actor  # for the access log and metrics
    return actor


CurrentActor = Annotated[Actor, Depends(current_actor)]


def require(minimum: Role) -> Callable[[Actor], Awaitable[Actor]]:
    """A dependency admitting actors whose role is at least ``minimum``."""

    async def guard(actor: CurrentActor) -> Actor:
        if not at_least(Role(actor.role), minimum):
            raise ForbiddenError(f"this needs the {minimum.value} role or above")
        return actor

    guard.__name__ = f"require_{minimum.value}"
    return guard


Inspector = Annotated[Actor, Depends(require(Role.INSPECTOR))]
Targeting = Annotated[Actor, Depends(require(Role.TARGETING))]
Analyst = Annotated[Actor, Depends(require(Role.ANALYST))]
Admin = Annotated[Actor, Depends(require(Role.ADMIN))]


def get_jobs(request: Request) -> JobRunner:
    jobs: JobRunner = request.app.state.jobs
    return jobs


JobsDep = Annotated[JobRunner, Depends(get_jobs)]
