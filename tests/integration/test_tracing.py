"""One trace per turn: a processor continues the trace of the message it handles."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from nats.js import JetStreamContext
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from processors import stt
from schemas import LlmRequest, Subjects, Utterance
from streams import bus, tracing
from streams.settings import Settings
from testbed.audio import speak
from tests.integration.bus_helpers import work_inbox
from tests.integration.workers import running


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter


async def test_stt_continues_the_turn_trace_and_passes_it_on(
    settings: Settings, js: JetStreamContext, spans: InMemorySpanExporter
) -> None:
    with tracing.span("turn", None) as root:
        headers = tracing.headers_of(root)
    trace_id = root.get_span_context().trace_id
    utt = Utterance("s1", "u1", pcm=speak("open the window"))
    async with work_inbox(js, "llm") as llm, running(stt.SPEC, settings):
        await bus.publish(js, Subjects().work("stt", "cpu"), utt, headers=headers)
        request = await llm.next(LlmRequest)
        raw_trace = llm.headers[-1].get(tracing.HEADER, "")
    handled = [s for s in spans.get_finished_spans() if s.name == "stt.handle"]
    assert request.text
    assert handled and handled[-1].context.trace_id == trace_id
    assert (
        handled[-1].parent is not None
        and handled[-1].parent.span_id == root.get_span_context().span_id
    )
    assert raw_trace.split("-")[1] == format(trace_id, "032x")  # the LLM continues it
