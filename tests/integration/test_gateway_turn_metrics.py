"""The gateway's turn metrics on /metrics, over a real socket and a real nats-server.

The test plays the VAD, STT, LLM and TTS by publishing their real messages on the bus,
then reads what the gateway exports: time to first reply audio, turns by outcome,
turns per session.
"""

from __future__ import annotations

import asyncio
import time

import httpx
from nats.js import JetStreamContext
from prometheus_client.parser import text_string_to_metric_families

from gateway.server import RunningGateway
from schemas import (
    LlmRequest,
    ReplyDone,
    SpeechStopped,
    Subjects,
    Transcript,
    decode,
)
from streams import bus
from tests.integration.gateway_helpers import FRAME, TIMEOUT, chunk, emit, open_client, speak

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


async def scrape(gw: RunningGateway) -> Samples:
    async with httpx.AsyncClient(base_url=gw.url) as http:
        text = (await http.get("/metrics")).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def get(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def until(gw: RunningGateway, name: str, value: float, **labels: str) -> None:
    """Wait until the gateway exports ``name{labels} == value``."""
    deadline = time.monotonic() + TIMEOUT
    while get(await scrape(gw), name, **labels) != value:
        assert time.monotonic() < deadline, f"{name}{labels} never reached {value}"
        await asyncio.sleep(0.05)


async def test_a_spoken_turn_waits_from_the_audio_where_speech_ended_to_its_first_reply_audio(
    gateway: RunningGateway, js: JetStreamContext
) -> None:
    client = await open_client(gateway)
    sid = (await client.start())["session_id"]
    spoken = time.monotonic()
    for _ in range(10):  # 320 ms of microphone audio (32 ms frames)
        await client.conn.send(FRAME)
    await until(gateway, "morgan_gateway_frames_in_total", 10)
    await asyncio.sleep(0.5)  # the VAD's trailing silence, STT, LLM, TTS...
    await emit(js, SpeechStopped(sid, "u1", at_ms=160))  # speech ended in the 5th frame
    await emit(js, Transcript(sid, "u1", "hello"))
    await emit(js, ReplyDone(sid, "u1", "Hi there.", 1))
    assert [(await client.recv())["type"] for _ in range(3)] == [
        "vad.speech_stopped",
        "transcript",
        "reply.done",
    ]
    await speak(js, chunk(sid, "u1", 0, 0, True))
    assert (await client.recv())["type"] == "audio"
    waited = time.monotonic() - spoken
    await until(gateway, "morgan_gateway_turns_total", 1, outcome="done")
    samples = await scrape(gateway)
    name = "morgan_gateway_first_audio_seconds"
    assert get(samples, f"{name}_count", input="speech") == 1
    assert 0.5 <= get(samples, f"{name}_sum", input="speech") <= waited
    assert get(samples, f"{name}_bucket", input="speech", le="0.5") == 0
    assert get(samples, f"{name}_count", input="text") == 0
    await client.conn.close()
    await until(gateway, "morgan_gateway_turns_per_session_count", 1)
    samples = await scrape(gateway)
    assert get(samples, "morgan_gateway_turns_per_session_sum") == 1
    assert get(samples, "morgan_gateway_turns_total", outcome="abandoned") == 0


async def test_a_typed_turn_waits_from_its_text_and_a_cancelled_or_unfinished_one_is_counted(
    gateway: RunningGateway, js: JetStreamContext
) -> None:
    client = await open_client(gateway)
    sid = (await client.start())["session_id"]
    await client.send({"type": "text", "text": "What time is it?"})
    typed = time.monotonic()
    turn = (await client.recv())["turn"]
    await asyncio.sleep(0.6)
    await speak(js, chunk(sid, turn, 0, 0, True))
    assert (await client.recv())["type"] == "audio"
    waited = time.monotonic() - typed
    await emit(js, ReplyDone(sid, turn, "Noon.", 1))
    assert (await client.recv())["type"] == "reply.done"

    await client.send({"type": "text", "text": "And tomorrow?"})  # cancelled while it plays
    second = (await client.recv())["turn"]
    await speak(js, chunk(sid, second, 0, 0, False))
    assert (await client.recv())["type"] == "audio"
    await client.send({"type": "cancel"})
    assert (await client.recv())["type"] == "reply.cancelled"

    await client.send({"type": "text", "text": "Still there?"})  # the client leaves first
    assert (await client.recv())["type"] == "transcript"
    await client.conn.close()

    await until(gateway, "morgan_gateway_turns_per_session_count", 1)
    samples = await scrape(gateway)
    name = "morgan_gateway_first_audio_seconds"
    assert get(samples, f"{name}_count", input="text") == 2
    assert get(samples, f"{name}_bucket", input="text", le="0.5") == 1  # the second turn
    assert 0.6 <= get(samples, f"{name}_sum", input="text") <= waited + 0.5
    for outcome in ("done", "cancelled", "abandoned"):
        assert get(samples, "morgan_gateway_turns_total", outcome=outcome) == 1, outcome
    assert get(samples, "morgan_gateway_turns_per_session_sum") == 3


async def test_a_rest_turn_counts_its_outcome_and_its_wait_for_the_first_audio(
    gateway: RunningGateway, js: JetStreamContext
) -> None:
    async def llm_and_tts() -> None:
        sub = await js.pull_subscribe_bind("llm", stream="WORK")
        [raw] = await sub.fetch(1, timeout=TIMEOUT)
        request = decode(raw.headers, raw.data)
        assert isinstance(request, LlmRequest)
        await asyncio.sleep(0.3)
        s = Subjects()
        reply = chunk(request.sid, request.turn, 0, 0, True)
        await bus.publish(js, s.audio_out(request.sid), reply)
        done = ReplyDone(request.sid, request.turn, "Hi.", 1)
        await bus.publish(js, s.events(request.sid, done.TYPE), done)
        await raw.ack()

    worker = asyncio.create_task(llm_and_tts())
    async with httpx.AsyncClient(base_url=gateway.url, timeout=TIMEOUT) as http:
        response = await http.post("/api/text", json={"text": "Hello"})
    await worker
    assert response.status_code == 200, response.text
    samples = await scrape(gateway)
    name = "morgan_gateway_first_audio_seconds"
    assert get(samples, f"{name}_count", input="rest") == 1
    assert 0.3 <= get(samples, f"{name}_sum", input="rest") < TIMEOUT
    assert get(samples, "morgan_gateway_turns_total", outcome="done") == 1
    assert get(samples, "morgan_gateway_turns_per_session_count") == 0  # WebSocket only
