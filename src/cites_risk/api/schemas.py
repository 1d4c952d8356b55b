"""Request and response models, derived from the data contract (one source of truth).

``DeclarationIn``, ``OffenceIn`` and ``InspectionIn`` are generated from the contract's
records: a field added to ``features/contract.py`` appears in the API with its type,
required flag, bounds, allowed values and description.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import polars as pl
from pydantic import BaseModel, ConfigDict, Field, create_model

from cites_risk.profiling.profiles.model import EntityKind
from cites_risk.profiling.service import (
    DECLARATION,
    INSPECTION,
    OFFENCE,
    STR_LIST,
    TIMESTAMP,
    ContractField,
    I,
    ModelVersion,
    O,
    PromotionResult,
    Record,
    ScoreResult,
)

Extra = str | float | None


def _annotation(f: ContractField) -> Any:
    if f.dtype == TIMESTAMP:
        return datetime
    if f.dtype == pl.Float64:
        return float
    if f.dtype == STR_LIST:
        return list[str]
    if f.choices:
        return Literal[f.choices]
    return str


def _field(f: ContractField) -> tuple[Any, Any]:
    kind = _annotation(f)
    bounds: dict[str, Any] = {"ge": 0.0} if f.non_negative else {}
    if f.dtype == pl.String and not f.choices:
        bounds["min_length"] = 1 if f.required else 0
    if f.required:
        return kind, Field(..., description=f.description, **bounds)
    return kind | None, Field(default=None, description=f.description, **bounds)


#: A plausible declaration (axolotls from Mexico, as in the LEMIS data): the example of the
#: API documentation, and the request the tests and the latency benchmark send.
EXAMPLE_DECLARATION: dict[str, Any] = {
    "declaration_id": "EX-1",
    "declared_at": "2021-06-01T10:00:00Z",
    "office": "LA",
    "importer": "Blue Lagoon Pets",
    "exporter": "Axolotl Farms",
    "declared_taxon": "Ambystoma mexicanum",
    "goods_description": "live axolotls",
    "hs_code": "010690",
    "country_origin": "MX",
    "country_export": "MX",
    "quantity": 120,
    "unit": "NO",
    "cites_purpose": "T",
    "cites_source": "C",
}


def from_record(
    name: str,
    record: Record,
    *,
    exclude: Iterable[str] = (),
    example: dict[str, Any] | None = None,
    **more: tuple[Any, Any],
) -> type[BaseModel]:
    """A strict pydantic model of a contract record (unknown fields are refused)."""
    skip = set(exclude)
    fields = {f.name: _field(f) for f in record.fields if f.name not in skip}
    config = ConfigDict(extra="forbid")
    if example:
        config["json_schema_extra"] = {"examples": [example]}
    model: type[BaseModel] = create_model(  # type: ignore[call-overload]
        name,
        __config__=config,
        __doc__=f"A {record.name} record of the data contract.",
        **fields,
        **more,
    )
    return model


if TYPE_CHECKING:  # generated at run time; to the type checker they are plain models
    DeclarationIn = BaseModel
    OffenceIn = BaseModel
    InspectionIn = BaseModel
    OffenceOut = BaseModel
else:
    DeclarationIn = from_record(
        "DeclarationIn",
        DECLARATION,
        example=EXAMPLE_DECLARATION,
        extras=(
            dict[str, Extra] | None,
            Field(default=None, description="an administration's own fields (x_*), by name"),
        ),
    )
    # The server assigns the id and the provider: see Service.create_offence.
    OffenceIn = from_record("OffenceIn", OFFENCE, exclude=(O.ID, O.PROVIDER))
    InspectionIn = from_record("InspectionIn", INSPECTION, exclude=(I.ORG,))
    OffenceOut = create_model(
        "OffenceOut",
        __base__=from_record("OffenceRecord", OFFENCE),
        recorded_at=(datetime | None, None),
    )


class ScoreBatchIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    declarations: list[DeclarationIn] = Field(min_length=1)


class ScoreBatchOut(BaseModel):
    results: list[ScoreResult]


class InspectionsIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    results: list[InspectionIn] = Field(min_length=1)


class Recorded(BaseModel):
    recorded: int


class ConsentIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    shared_with: list[str] = Field(
        description="organisations that may see the record; '*' for everyone"
    )


class WatchlistIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: EntityKind
    name: str = Field(min_length=1)
    reason: str = Field(min_length=1)
    expires_at: datetime | None = None


class PromoteIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    force: bool = Field(default=False, description="promote even if worse on the holdout")


class JobOut(BaseModel):
    job_id: str
    status: str
    mapping: str
    rows_total: int | None
    rows_done: int
    rows_rejected: int
    created_at: datetime
    updated_at: datetime
    error: str | None
    results: str = Field(description="where to download the scored rows once done")
    rejects: str


class ProblemField(BaseModel):
    field: str | None = Field(description="the offending field")
    loc: list[str | int] = Field(description="where: body, row index, field")
    message: str
    row: int | None = None
    value: str | None = None


class Problem(BaseModel):
    """RFC 9457 problem details: the body of every error response."""

    type: str
    title: str
    status: int
    detail: str
    instance: str
    errors: list[ProblemField] | None = None


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for error statuses: problem+json bodies."""
    ref = {"schema": {"$ref": "#/components/schemas/Problem"}}
    return {
        status: {"model": Problem, "content": {"application/problem+json": ref}}
        for status in statuses
    }


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    ready: bool
    model_version: str | None
    problems: list[str]


__all__ = [
    "ConsentIn",
    "DeclarationIn",
    "Health",
    "InspectionIn",
    "InspectionsIn",
    "JobOut",
    "ModelVersion",
    "OffenceIn",
    "OffenceOut",
    "Problem",
    "PromoteIn",
    "PromotionResult",
    "Readiness",
    "Recorded",
    "ScoreBatchIn",
    "ScoreBatchOut",
    "ScoreResult",
    "WatchlistIn",
]
