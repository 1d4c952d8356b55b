"""One error hierarchy (``ServiceError``), mapped to RFC 9457 problem+json here, once.

Every error a client sees has the same shape: ``type``, ``title``, ``status``, ``detail``,
``instance`` and, for 422, ``errors`` naming each bad field.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from cites_risk.api.concurrency import WithdrawnError
from cites_risk.api.disconnect import CLIENT_LEFT
from cites_risk.profiling.service import (
    ConflictError,
    FieldProblem,
    ForbiddenError,
    InvalidInputError,
    NotFoundError,
    NotReadyError,
    ServiceError,
    TooLargeError,
    UnauthenticatedError,
)

PROBLEM = "application/problem+json"
log = logging.getLogger(__name__)

#: The HTTP status of each error class; a subclass not listed takes its parent's.
STATUS: dict[type[ServiceError], int] = {
    ServiceError: 400,
    UnauthenticatedError: 401,
    ForbiddenError: 403,
    NotFoundError: 404,
    ConflictError: 409,
    TooLargeError: 413,
    InvalidInputError: 422,
    NotReadyError: 503,
}
_TITLES = {401: "Unauthenticated", 403: "Forbidden", 404: "Not found", 405: "Method not allowed"}


def status_of(exc: ServiceError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 400


def problem(
    request: Request,
    status: int,
    title: str,
    detail: str,
    *,
    errors: Sequence[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": request.url.path,
    }
    if errors is not None:
        body["errors"] = list(errors)
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


def _field_error(p: FieldProblem) -> dict[str, Any]:
    loc: list[str | int] = ["body"] if p.row is None else ["body", p.row]
    loc += p.field.split(".")
    return {"field": p.field, "row": p.row, "loc": loc, "message": p.reason, "value": p.value}


async def _service_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ServiceError)
    status = status_of(exc)
    errors = [_field_error(p) for p in exc.problems] if isinstance(exc, InvalidInputError) else None
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return problem(request, status, exc.title, exc.detail, errors=errors, headers=headers)


_ABSENT = object()


def _child(node: Any, part: str | int) -> Any:
    """``node[part]`` in a JSON document, or ``_ABSENT``."""
    if isinstance(node, dict):
        return node.get(part, _ABSENT)
    if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
        return node[part]
    return _ABSENT


def _in_request(body: Any, err: Mapping[str, Any]) -> list[str | int]:
    """The error's location as far as the request has it.

    Past the value at fault, pydantic names the types it tried ("str", "float"): a nested
    value in ``extras`` was reported as field "str". A missing field is named all the same.
    """
    loc = [p for p in err.get("loc", ()) if isinstance(p, str | int)]
    if loc[:1] != ["body"]:
        return loc
    node, kept = body, loc[:1]
    for i, part in enumerate(loc[1:], start=1):
        node = _child(node, part)
        if node is _ABSENT and not (err.get("type") == "missing" and i == len(loc) - 1):
            break
        kept.append(part)
    return kept


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors: dict[tuple[str | int, ...], dict[str, Any]] = {}
    for err in exc.errors():
        loc = _in_request(exc.body, err)
        message = err.get("msg", "")
        # Each member of a union ("str", "float") says what it wanted: one error says all.
        same = errors.get(tuple(loc))
        if same is not None:
            same["message"] += f" or {message[0].lower()}{message[1:]}" if message else ""
            continue
        # The field is the last named part of the location ("body.declarations.3.office"),
        # or, for an item of a list ("body.criteria.all.0"), the path to it: "all" alone
        # would not say which condition of which criteria is at fault.
        named = [p for p in loc if isinstance(p, str) and p not in ("body", "query", "path")]
        field = named[-1] if named else None
        if named and isinstance(loc[-1], int):
            field = ".".join(str(p) for p in loc[loc.index(named[0]) :])
        errors[tuple(loc)] = {"field": field, "loc": loc, "message": message}
    found = list(errors.values())
    fields = sorted({str(e["field"]) for e in found if e["field"]})
    detail = "invalid request" + (f": check {', '.join(fields)}" if fields else "")
    return problem(request, 422, "Invalid input", detail, errors=found)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    title = _TITLES.get(exc.status_code, "Request failed")
    return problem(
        request, exc.status_code, title, str(exc.detail), headers=dict(exc.headers or {})
    )


async def _client_left(request: Request, exc: Exception) -> JSONResponse:
    # Nobody reads it; the status is what the access log and the request metrics count.
    log.info("%s %s: withdrawn, the client left before its turn", request.method, request.url.path)
    return problem(request, CLIENT_LEFT, "Client left", "the client left before its turn")


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    # The trace goes to the log, never to the client.
    log.exception("unhandled error on %s", request.url.path, exc_info=exc)
    return problem(request, 500, "Internal error", "an unexpected error occurred; it is logged")


def install(app: FastAPI) -> None:
    app.add_exception_handler(ServiceError, _service_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(WithdrawnError, _client_left)
    app.add_exception_handler(Exception, _unexpected)
