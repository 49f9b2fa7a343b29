"""The one shape of every HTTP error the gateway answers: ``{"error": code, "message": why}``.

error_response(404, "unknown_conversation", "...")   the answer, counted in metrics
FastAPI(..., responses=RESPONSES)                    the shape, in the OpenAPI schema
install(app)                                         the errors FastAPI and Starlette
                                                     answer themselves (no route, a
                                                     method the route lacks, a
                                                     malformed parameter), in it too
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.metrics import Metrics

ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "type": "object",
    "required": ["error", "message"],
    "properties": {
        "error": {"type": "string", "description": "the code (docs/protocol.md lists them)"},
        "message": {"type": "string", "description": "why, for people"},
    },
    "additionalProperties": False,
}
RESPONSES: dict[int | str, dict[str, Any]] = {
    code: {"description": what, "content": {"application/json": {"schema": ERROR_SCHEMA}}}
    for code, what in (("4XX", "Refused (docs/protocol.md)"), ("5XX", "Unavailable"))
}
"""Every route's error answers, for ``FastAPI(responses=...)``: FastAPI's own 422 body
(``{"detail": [...]}``) is not what the gateway sends."""
CODES = {404: "not_found", 405: "method_not_allowed"}
"""Error codes of the statuses Starlette answers itself; others are ``http_<status>``."""


def error_response(
    status: int,
    code: str,
    message: str,
    *,
    headers: dict[str, str] | None = None,
    metrics: Metrics | None = None,
) -> JSONResponse:
    """The error body, counted in ``morgan_gateway_rejections_total{reason=code}`` when
    ``metrics`` is given."""
    if metrics is not None:
        metrics.rejections.labels(code).inc()
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    """Answer Starlette's own errors (404 for no route, 405 for a method the route lacks)
    and malformed parameters (422 ``bad_request``) in the gateway's shape."""
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _bad_request)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code < 400:  # not an error (a 304, say): nothing to say
        return Response(status_code=exc.status_code, headers=dict(exc.headers or {}))
    code = CODES.get(exc.status_code, f"http_{exc.status_code}")
    headers = dict(exc.headers) if exc.headers else None  # 405's Allow
    return error_response(exc.status_code, code, str(exc.detail), headers=headers)


async def _bad_request(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    where = "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}" for e in exc.errors()
    )
    return error_response(422, "bad_request", where or "malformed request")
