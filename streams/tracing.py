"""OpenTelemetry: one trace per turn, carried across hosts in the ``traceparent`` header.

The VAD (or the gateway, for a typed turn) starts a turn's root span; every
processor continues it from the header of the message it handles and puts its
own span's header on what it publishes. Spans are exported over OTLP/HTTP when
MORGAN_OTEL_ENDPOINT is set; without it they still propagate, at no export cost.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Span
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from streams.settings import Settings

_PROPAGATOR = TraceContextTextMapPropagator()
HEADER = "traceparent"


def setup(settings: Settings, service: str) -> None:
    """Install this process's tracer provider (once, at start)."""
    if isinstance(trace.get_tracer_provider(), TracerProvider):
        return
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if settings.otel_endpoint:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        endpoint = settings.otel_endpoint.rstrip("/") + "/v1/traces"
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    trace.set_tracer_provider(provider)


def _tracer() -> trace.Tracer:
    return trace.get_tracer("morgan")


def headers_of(span: Span) -> dict[str, str]:
    """The ``traceparent`` header that continues ``span`` on another host."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, context=trace.set_span_in_context(span))
    return {k: v for k, v in carrier.items() if k == HEADER}


def parent_of(headers: Mapping[str, str] | None) -> Context | None:
    if not headers or HEADER not in headers:
        return None
    return _PROPAGATOR.extract({HEADER: headers[HEADER]})


@contextmanager
def span(name: str, headers: Mapping[str, str] | None = None, **attrs: str) -> Iterator[Span]:
    """A span continuing the trace in ``headers`` (or a new root when there is none)."""
    ctx = parent_of(headers) or Context()  # an empty context makes a new root
    with _tracer().start_as_current_span(name, context=ctx, attributes=attrs) as s:
        yield s
