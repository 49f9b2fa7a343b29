"""One trace per turn across real processes: ``morgan up`` exports OTLP to a collector here.

Every child of ``morgan up`` (vad, stt, llm, tts, gateway: separate processes) sends
its spans over OTLP/HTTP to a small collector in this test, which decodes each
``ExportTraceServiceRequest``. A spoken turn must be one trace
``turn`` (vad) -> stt.handle -> llm.handle -> tts.handle -> gateway.reply and a typed
one ``turn`` (gateway) -> llm.handle -> tts.handle -> gateway.reply, linked by span
ids (streams/tracing.py says what is traced).
"""

from __future__ import annotations

import asyncio
import gzip
import json
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from testbed.audio import silence, speak
from testbed.morgan_process import MorganUp, VoiceClient

pytestmark = pytest.mark.system

TURN_S = 90.0
"""Longest a turn may take here, from the last word (or the typed text) to its last audio."""
EXPORT_S = 20.0
"""Longest the spans of a finished turn may take to reach the collector (batches leave
every 200 ms here: OTEL_BSP_SCHEDULE_DELAY)."""


@dataclass(frozen=True)
class Span:
    service: str
    name: str
    trace_id: str
    span_id: str
    parent_id: str
    """Empty for a root."""
    attrs: dict[str, str]


class Collector:
    """An OTLP/HTTP trace receiver (POST /v1/traces, protobuf) on a free local port."""

    def __init__(self) -> None:
        self.spans: list[Span] = []
        self.changed = threading.Condition()
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding") == "gzip":
                    body = gzip.decompress(body)
                if self.path != "/v1/traces":
                    self.send_error(404)
                    return
                request = ExportTraceServiceRequest()
                request.ParseFromString(body)
                collector.add(request)
                reply = ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # quiet: pytest shows failures, not every export

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def add(self, request: ExportTraceServiceRequest) -> None:
        got = []
        for resource_spans in request.resource_spans:
            resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for s in scope_spans.spans:
                    got.append(
                        Span(
                            service=resource.get("service.name", ""),
                            name=s.name,
                            trace_id=s.trace_id.hex(),
                            span_id=s.span_id.hex(),
                            parent_id=s.parent_span_id.hex(),
                            attrs={a.key: a.value.string_value for a in s.attributes},
                        )
                    )
        with self.changed:
            self.spans += got
            self.changed.notify_all()

    def wait_for(self, ready: Callable[[list[Span]], bool], timeout: float) -> list[Span]:
        """Every span so far, once ``ready`` says they are enough (TimeoutError if never)."""
        with self.changed:
            if not self.changed.wait_for(lambda: ready(self.spans), timeout):
                raise TimeoutError(f"spans so far: {[(s.service, s.name) for s in self.spans]}")
            return list(self.spans)

    def __enter__(self) -> Collector:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def collector() -> Iterator[Collector]:
    with Collector() as c:
        yield c


@pytest.fixture(scope="module")
def morgan(tmp_path_factory: pytest.TempPathFactory, collector: Collector) -> Iterator[MorganUp]:
    up = MorganUp(
        tmp_path_factory.mktemp("morgan"),
        MORGAN_VAD_SILENCE_MS="500",
        MORGAN_OTEL_ENDPOINT=collector.url,
        OTEL_BSP_SCHEDULE_DELAY="200",
    )
    try:
        up.wait_ready()
        yield up
    finally:
        code = up.stop()
        assert code == 0, up.log()


def turn_trace(spans: list[Span], turn: str) -> list[Span]:
    """The spans of the trace whose root is ``turn``'s (AssertionError unless exactly one
    root names it)."""
    roots = [s for s in spans if s.name == "turn" and s.attrs.get("morgan.turn") == turn]
    assert len(roots) == 1, roots
    trace_id = roots[0].trace_id
    stray = [s for s in spans if s.attrs.get("morgan.turn") == turn and s.trace_id != trace_id]
    assert not stray, stray
    return [s for s in spans if s.trace_id == trace_id]


TAPS = {"morgan-history": 2, "morgan-memory": 1}
"""The event taps in a turn's trace, and their spans per turn: history writes the
transcript and the reply; memory embeds the reply."""


def pipeline(spans: list[Span]) -> list[Span]:
    return [s for s in spans if s.service not in TAPS]


def reply_sent(turn: str, expected_spans: int) -> Callable[[list[Span]], bool]:
    """True once ``turn``'s trace has its gateway.reply, ``expected_spans`` pipeline spans
    and every tap's spans."""

    def ready(spans: list[Span]) -> bool:
        roots = {s.trace_id for s in spans if s.attrs.get("morgan.turn") == turn}
        mine = [s for s in spans if s.trace_id in roots]
        taps = all(sum(s.service == tap for s in mine) >= n for tap, n in TAPS.items())
        replied = any(s.name == "gateway.reply" for s in mine)
        return replied and taps and len(pipeline(mine)) >= expected_spans

    return ready


def assert_taps_join(trace: list[Span]) -> None:
    """Each tap's spans hang off the span that published the event it took."""
    ids = {s.span_id for s in trace}
    for tap, n in TAPS.items():
        spans = [s for s in trace if s.service == tap]
        assert len(spans) == n, (tap, spans)
        assert all(s.parent_id in ids for s in spans), spans


def one(spans: list[Span], name: str) -> Span:
    named = [s for s in spans if s.name == name]
    assert len(named) == 1, (name, spans)
    return named[0]


def assert_reply_tree(trace: list[Span], parent: Span, sentences: int, sid: str) -> None:
    """``parent`` -> llm.handle -> one tts.handle per sentence -> gateway.reply, and
    nothing else in the trace but the taps' spans."""
    llm = one(trace, "llm.handle")
    assert (llm.service, llm.parent_id) == ("morgan-llm", parent.span_id)
    trace = pipeline(trace)
    tts = [s for s in trace if s.name == "tts.handle"]
    assert len(tts) == sentences >= 1, trace
    assert all((s.service, s.parent_id) == ("morgan-tts", llm.span_id) for s in tts), tts
    reply = one(trace, "gateway.reply")
    assert reply.service == "morgan-gateway"
    assert reply.parent_id in {s.span_id for s in tts}
    assert reply.attrs["morgan.session"] == sid
    assert len({s.span_id for s in trace}) == len(trace)


async def test_a_spoken_turn_is_one_trace_from_the_vad_to_the_gateway_reply(
    morgan: MorganUp, collector: Collector
) -> None:
    client = await VoiceClient.open(morgan.url)
    await client.send_audio(silence(400) + speak("what is the capital of france") + silence(1500))
    await client.wait_for(lambda: any(t.complete for t in client.turns.values()), TURN_S)
    turn_id, turn = next((k, t) for k, t in client.turns.items() if t.complete)
    await client.close()
    assert turn.done is not None
    sentences = int(turn.done["sentences"])

    spans = await asyncio.to_thread(
        collector.wait_for, reply_sent(turn_id, 4 + sentences), EXPORT_S
    )
    trace = turn_trace(spans, turn_id)
    root = one(trace, "turn")
    assert (root.service, root.parent_id) == ("morgan-vad", "")
    assert root.attrs["morgan.session"] == client.sid
    stt = one(trace, "stt.handle")
    assert (stt.service, stt.parent_id) == ("morgan-stt", root.span_id)
    assert_reply_tree(trace, stt, sentences, client.sid)
    # turn, stt, llm, tts per sentence, reply; then the taps
    assert len(pipeline(trace)) == 4 + sentences, trace
    assert_taps_join(trace)


async def test_a_typed_turn_is_one_trace_rooted_in_the_gateway(
    morgan: MorganUp, collector: Collector
) -> None:
    client = await VoiceClient.open(morgan.url)
    await client.ws.send(json.dumps({"type": "text", "text": "Say hello to my friend Sam."}))
    await client.wait_for(lambda: any(t.complete for t in client.turns.values()), TURN_S)
    turn_id, turn = next((k, t) for k, t in client.turns.items() if t.complete)
    await client.close()
    assert turn.done is not None
    sentences = int(turn.done["sentences"])

    spans = await asyncio.to_thread(
        collector.wait_for, reply_sent(turn_id, 3 + sentences), EXPORT_S
    )
    trace = turn_trace(spans, turn_id)
    root = one(trace, "turn")
    assert (root.service, root.parent_id) == ("morgan-gateway", "")
    assert root.attrs == {
        "morgan.session": client.sid,
        "morgan.turn": turn_id,
        "morgan.input": "text",
    }
    assert_reply_tree(trace, root, sentences, client.sid)
    assert len(pipeline(trace)) == 3 + sentences, trace  # turn, llm, tts per sentence, reply
    assert_taps_join(trace)
