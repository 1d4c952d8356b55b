"""Scoring: one declaration, a JSON batch, and the stored result of a declaration."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from cites_risk.api.deps import Coalesced, Inspector, ScoringThreads, ServiceDep, Targeting
from cites_risk.api.disconnect import client_left
from cites_risk.api.schemas import DeclarationIn, ScoreBatchIn, ScoreBatchOut, ScoreResult
from cites_risk.profiling.service import extra_column

router = APIRouter(tags=["scoring"])


def _row(declaration: DeclarationIn) -> dict[str, Any]:
    row = declaration.model_dump(exclude={"extras"})
    extras: dict[str, Any] = getattr(declaration, "extras", None) or {}
    return row | {extra_column(k): v for k, v in extras.items()}


@router.post("/score", response_model=ScoreResult)
async def score_one(
    request: Request, declaration: DeclarationIn, actor: Inspector, coalesced: Coalesced
) -> ScoreResult:
    """Score one declaration: score, lane, reasons and species match."""
    return await coalesced.submit((actor, _row(declaration)), gone=client_left(request))


@router.post("/score/batch", response_model=ScoreBatchOut)
async def score_batch(
    body: ScoreBatchIn, actor: Targeting, service: ServiceDep, threads: ScoringThreads
) -> ScoreBatchOut:
    """Score a list of declarations in one vectorised pass (at most api_max_batch)."""
    rows = [_row(d) for d in body.declarations]
    return ScoreBatchOut(results=await threads.run(service.score, actor, rows))


@router.get("/scores/{declaration_id}", response_model=ScoreResult)
def stored_score(declaration_id: str, actor: Inspector, service: ServiceDep) -> ScoreResult:
    """The last stored result of a declaration scored by your organisation."""
    return service.stored_score(actor, declaration_id)
