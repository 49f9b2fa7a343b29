"""streams.tracing: a span continues the trace its message carries, or starts one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from streams import tracing


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()


@pytest.fixture
def spans(exporter: InMemorySpanExporter) -> InMemorySpanExporter:
    exporter.clear()
    return exporter


def test_a_span_without_a_trace_header_is_a_new_root(spans: InMemorySpanExporter) -> None:
    with tracing.span("turn", None, **{"morgan.turn": "t1"}) as root:
        headers = tracing.headers_of(root)
    (recorded,) = spans.get_finished_spans()
    assert recorded.parent is None and recorded.attributes == {"morgan.turn": "t1"}
    assert headers[tracing.HEADER].split("-")[1] == format(recorded.context.trace_id, "032x")


def test_continued_records_a_child_of_the_trace_on_the_message(
    spans: InMemorySpanExporter,
) -> None:
    with tracing.span("tts.handle") as tts:
        headers = tracing.headers_of(tts)
    with tracing.continued("gateway.reply", headers, **{"morgan.turn": "t1"}):
        pass
    reply = next(s for s in spans.get_finished_spans() if s.name == "gateway.reply")
    assert reply.context.trace_id == tts.get_span_context().trace_id
    assert reply.parent is not None and reply.parent.span_id == tts.get_span_context().span_id


@pytest.mark.parametrize("headers", [None, {}, {"traceparent": "00-not-a-trace-01"}])
def test_continued_records_nothing_for_a_message_without_a_trace(
    spans: InMemorySpanExporter, headers: dict[str, str] | None
) -> None:
    with tracing.continued("gateway.reply", headers) as span:
        assert not span.is_recording()
    assert spans.get_finished_spans() == ()
