"""The one shape of every HTTP error the gateway answers: ``{"error": code, "message": why}``."""

from __future__ import annotations

from starlette.responses import JSONResponse

from gateway.metrics import Metrics


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
