"""OpenTelemetry: one trace per turn, across every process, in the ``traceparent`` header.

What is traced, by span name (the process that records it is the span's
``service.name``: ``morgan-<kind>`` or ``morgan-gateway``)::

    turn            the turn's root. The VAD opens it when it sends a spoken turn's
                    utterance (processors/vad.py); the gateway opens it when it publishes
                    a typed turn's transcript and LLM request (``Gateway.typed_turn``:
                    WebSocket ``text`` and POST /api/text). Attributes ``morgan.session``
                    and ``morgan.turn``; the gateway's also ``morgan.input`` = ``text``.
    <kind>.handle   a processor handling one message (processors/runtime.py), a child of
                    the trace on that message's header; everything the handler publishes
                    (events, onward work, reply audio) carries this span's header.
    gateway.reply   the gateway sending a turn's first reply audio to its WebSocket client
                    (a child of the tts.handle that made it), or, for a reply without
                    audio, its ``reply.done`` (a child of the llm.handle). Attributes
                    ``morgan.session``, ``morgan.turn``.

So a spoken turn is ``turn`` (vad) -> stt.handle -> llm.handle -> tts.handle (one per
sentence) -> gateway.reply, and a typed one ``turn`` (gateway) -> llm.handle ->
tts.handle -> gateway.reply (tests/system/test_traces.py asserts both trees).

Not per turn: a session claim carries no trace, so a VAD worker's ``vad.handle`` for
a session lasts the whole session, as a trace of its own (its speech events carry
it). A REST turn's trace ends at its tts.handle spans (the reply goes back as one
response). A processor handling a message without ``traceparent`` starts a new trace;
the gateway records nothing for one.

Export: OTLP/HTTP (protobuf) to ``MORGAN_OTEL_ENDPOINT`` + ``/v1/traces``, in batches
(the SDK's ``OTEL_BSP_*`` variables tune them, e.g. ``OTEL_BSP_SCHEDULE_DELAY`` in ms);
what is still batched is sent at a normal exit. Without an endpoint spans still
propagate, at no export cost.
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
    """Install this process's tracer provider (once, at start): spans are recorded as
    ``service`` and exported when ``settings.otel_endpoint`` is set."""
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
    """The trace a message's headers carry; None when they carry none (or a bad one)."""
    if not headers or HEADER not in headers:
        return None
    ctx = _PROPAGATOR.extract({HEADER: headers[HEADER]})
    if not trace.get_current_span(ctx).get_span_context().is_valid:
        return None
    return ctx


@contextmanager
def span(name: str, headers: Mapping[str, str] | None = None, **attrs: str) -> Iterator[Span]:
    """A span continuing the trace in ``headers`` (or a new root when there is none)."""
    ctx = parent_of(headers) or Context()  # an empty context makes a new root
    with _tracer().start_as_current_span(name, context=ctx, attributes=attrs) as s:
        yield s


@contextmanager
def continued(name: str, headers: Mapping[str, str] | None, **attrs: str) -> Iterator[Span]:
    """A span continuing the trace in ``headers``; when they carry none, nothing is
    recorded (a non-recording span): the gateway does not start traces of its own for
    what comes back from the bus."""
    ctx = parent_of(headers)
    if ctx is None:
        yield trace.INVALID_SPAN
        return
    with _tracer().start_as_current_span(name, context=ctx, attributes=attrs) as s:
        yield s


def trace_id(span: Span) -> str | None:
    """The span's trace id as 32 hex digits (what log lines carry); None when invalid."""
    context = span.get_span_context()
    return f"{context.trace_id:032x}" if context.is_valid else None
