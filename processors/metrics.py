"""Prometheus metrics of a processor process (served when MORGAN_METRICS_PORT is set)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram, start_http_server

HANDLED = Counter(
    "morgan_processor_messages_total", "Work messages by outcome", ["kind", "outcome"]
)
DURATION = Histogram(
    "morgan_processor_handle_seconds",
    "Time to handle one work message",
    ["kind"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30),
)


def observe(kind: str, outcome: str, seconds: float) -> None:
    HANDLED.labels(kind, outcome).inc()
    if outcome == "ok":
        DURATION.labels(kind).observe(seconds)


def serve(port: int) -> None:
    """Expose /metrics on ``port`` (a thread of prometheus_client)."""
    start_http_server(port)
