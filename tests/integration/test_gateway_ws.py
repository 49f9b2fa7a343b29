"""The WebSocket gateway over a real socket (uvicorn) and a real nats-server.

The test plays the processors' part by publishing the real schema messages on
the bus: events on EVENTS, reply audio on AUDIO, cancels on the control subject.
"""

from __future__ import annotations

import asyncio
import json
import logging

import httpx
import pytest
from nats.aio.client import Client as Nats
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Subprotocol

from gateway.server import RunningGateway, start
from schemas import (
    AudioFrame,
    Cancel,
    LlmRequest,
    Message,
    ReplyCancelled,
    ReplyDelta,
    ReplyDone,
    SessionClaim,
    SessionEnd,
    Subjects,
    Transcript,
    decode,
)
from streams import bus, embedded
from streams.settings import Settings
from tests.integration.gateway_helpers import (
    FRAME,
    TIMEOUT,
    chunk,
    emit,
    open_client,
    speak,
)


async def listen(nc: Nats, subject: str) -> Subscription:
    """A core subscription the server surely has: a probe sent after it came back.

    (nats-py 2.16's ``flush()`` writes its PING ahead of commands still buffered,
    so it can return before the server has seen the SUB.)
    """
    sub = await nc.subscribe(subject)
    await nc.publish(subject, b"probe")
    assert (await sub.next_msg(timeout=TIMEOUT)).data == b"probe"
    return sub


async def read_audio(js: JetStreamContext, sid: str, nbytes: int) -> list[AudioFrame]:
    """The session's microphone frames on AUDIO until they hold ``nbytes`` of PCM
    (the gateway may publish several client frames as one), checked contiguous."""
    sub = await js.subscribe(Subjects().audio_in(sid), ordered_consumer=True)
    out: list[AudioFrame] = []
    while sum(len(f.pcm) for f in out) < nbytes:
        raw = await sub.next_msg(timeout=TIMEOUT)
        frame = decode(raw.headers, raw.data)
        assert isinstance(frame, AudioFrame)
        out.append(frame)
    await sub.unsubscribe()
    assert [f.seq for f in out] == list(range(1, len(out) + 1))
    offsets = [sum(len(f.pcm) for f in out[:i]) // 2 for i in range(len(out))]
    assert [f.offset for f in out] == offsets
    return out


async def pull_one(js: JetStreamContext, durable: str) -> tuple[Message, dict[str, str]]:
    sub = await js.pull_subscribe_bind(durable, stream="WORK")
    [raw] = await sub.fetch(1, timeout=TIMEOUT)
    await raw.ack()
    return decode(raw.headers, raw.data), dict(raw.headers or {})


async def test_session_start_replies_ready_and_claims_the_session_for_a_vad_worker(
    gateway: RunningGateway, js: JetStreamContext
) -> None:
    client = await open_client(gateway)
    ready = await client.start()
    sid = ready["session_id"]
    assert len(sid) == 32 and ready["resumed"] is False
    assert ready["input"] == {"rate": 16000, "format": "s16le", "channels": 1}
    assert ready["output"]["rate"] == 22050
    claim, headers = await pull_one(js, "vad")
    assert isinstance(claim, SessionClaim)
    assert (claim.sid, claim.rate, claim.fmt) == (sid, 16000, "s16le")
    assert headers["Nats-Msg-Id"] == f"claim.{sid}"


async def test_binary_frames_land_on_the_audio_stream_in_order_with_seqs(
    gateway: RunningGateway, js: JetStreamContext
) -> None:
    client = await open_client(gateway)
    sid = (await client.start())["session_id"]
    frames = [bytes([i]) * 640 for i in range(1, 6)]
    for frame in frames:
        await client.conn.send(frame)
    got = await read_audio(js, sid, sum(map(len, frames)))
    assert b"".join(f.pcm for f in got) == b"".join(frames)


async def test_audio_sent_while_nats_is_down_reaches_the_stream_in_order_once_it_is_back(
    gateway: RunningGateway, js: JetStreamContext, nats_server: embedded.EmbeddedNats
) -> None:
    client = await open_client(gateway)
    sid = (await client.start())["session_id"]
    frames = [i.to_bytes(2, "little") * 256 for i in range(1, 61)]  # 60 frames of 16 ms
    for frame in frames[:20]:
        await client.conn.send(frame)
    await read_audio(js, sid, 20 * 512)
    await nats_server.kill()  # the gateway's only server: every publish now fails
    for frame in frames[20:40]:
        await client.conn.send(frame)
        await asyncio.sleep(0.016)
    await nats_server.restart()
    for frame in frames[40:]:
        await client.conn.send(frame)
    got = await read_audio(js, sid, len(frames) * 512)
    assert b"".join(f.pcm for f in got) == b"".join(frames)
    # Events flow again too (the session's consumers come back after two missed
    # heartbeats), and no error was sent for any frame.
    await client.send({"type": "text", "text": "are you there?"})
    reply = await client.recv()
    assert reply["type"] == "transcript", reply


async def test_audio_past_the_backlog_limit_is_refused_and_what_was_accepted_still_arrives(
    settings: Settings, js: JetStreamContext, nats_server: embedded.EmbeddedNats
) -> None:
    small = settings.model_copy(update={"audio_backlog_s": 0.1})  # 3200 bytes
    gw = await start(small)
    try:
        client = await open_client(gw)
        sid = (await client.start())["session_id"]
        await nats_server.kill()
        for i in range(1, 4):  # 3 x 1024 bytes: queued
            await client.conn.send(bytes([i]) * 1024)
        await client.conn.send(bytes([9]) * 1024)  # would make 4096: refused
        error = await client.recv()
        assert (error["type"], error["code"]) == ("error", "audio_backlog"), error
        await nats_server.restart()
        got = await read_audio(js, sid, 3 * 1024)
        assert b"".join(f.pcm for f in got) == b"".join(bytes([i]) * 1024 for i in range(1, 4))
        await client.conn.send(bytes([4]) * 1024)  # the session goes on
        got = await read_audio(js, sid, 4 * 1024)
        assert got[-1].pcm[-1:] == b"\x04"
    finally:
        await gw.stop()


async def test_events_reach_the_client_with_stream_ids_in_order(
    gateway: RunningGateway, js: JetStreamContext
) -> None:
    client = await open_client(gateway)
    sid = (await client.start())["session_id"]
    sent: list[Message] = [
        Transcript(sid, "u1", "hello there"),
        ReplyDelta(sid, "u1", 0, "Hi"),
        ReplyDelta(sid, "u1", 1, " you."),
        ReplyDone(sid, "u1", "Hi you.", 0),
    ]
    for event in sent:
        await emit(js, event)
    got = [await client.recv() for _ in sent]
    assert [{k: v for k, v in g.items() if k != "id"} for g in got] == [e.to_client() for e in sent]
    ids = [g["id"] for g in got]
    assert ids == sorted(ids) and len(set(ids)) == 4
    last = await js.get_last_msg("EVENTS", Subjects().events(sid, "reply.done"))
    assert ids[-1] == last.seq


async def test_an_event_of_a_type_only_its_publisher_knows_reaches_the_client_as_json(
    gateway: RunningGateway, js: JetStreamContext
) -> None:
    """A kind from another package publishes its own event type; the gateway passes its
    JSON fields on (and still drops what is not a JSON event)."""
    client = await open_client(gateway)
    sid = (await client.start())["session_id"]
    subject = Subjects().events(sid, "keyword")
    await js.publish(subject, b"not json", headers={"Morgan-Type": "keyword"})
    body = json.dumps({"sid": sid, "turn": "u1", "word": "weather"}).encode()
    await js.publish(subject, body, headers={"Morgan-Type": "keyword"})
    got = await client.recv()
    assert {k: v for k, v in got.items() if k != "id"} == {
        "type": "keyword",
        "turn": "u1",
        "word": "weather",
    }


async def test_out_of_order_audio_chunks_reach_the_client_in_seq_chunk_order(
    gateway: RunningGateway, js: JetStreamContext
) -> None:
    client = await open_client(gateway)
    sid = (await client.start())["session_id"]
    arrival = [(2, 0, True), (1, 1, True), (1, 0, False), (0, 0, False), (0, 1, True)]
    for seq, n, last in arrival:
        await speak(js, chunk(sid, "u1", seq, n, last))
    got = [await client.recv() for _ in arrival]
    assert [(g["seq"], g["chunk"], g["last"]) for g in got] == sorted(arrival)
    assert [g["pcm"] for g in got] == [chunk(sid, "u1", s, n, x).pcm for s, n, x in sorted(arrival)]
    assert all(g["turn"] == "u1" and g["rate"] == 22050 for g in got)
    ids = {g["id"] for g in got}
    assert len(ids) == 5


async def test_client_cancel_drops_the_turns_audio_and_sends_one_reply_cancelled(
    gateway: RunningGateway, js: JetStreamContext, nc: Nats
) -> None:
    client = await open_client(gateway)
    sid = (await client.start())["session_id"]
    control = await listen(nc, Subjects().control(sid))
    await emit(js, ReplyDelta(sid, "u1", 0, "Once upon a time"))
    await speak(js, chunk(sid, "u1", 0, 0, True))
    assert sorted([(await client.recv())["type"] for _ in range(2)]) == ["audio", "reply.delta"]
    await speak(js, chunk(sid, "u1", 2, 0, True))  # waits for seq 1
    await client.send({"type": "cancel"})
    cancelled = await client.recv()
    assert cancelled == {"type": "reply.cancelled", "turn": "u1", "reason": "client", "flush": True}
    sent = decode((raw := await control.next_msg(timeout=TIMEOUT)).headers, raw.data)
    assert sent == Cancel(sid, "u1", "client")
    # Later audio of the turn and the LLM's own reply.cancelled are swallowed:
    await speak(js, chunk(sid, "u1", 1, 0, True))
    await emit(js, ReplyCancelled(sid, "u1", "client"))
    await speak(js, chunk(sid, "u2", 0, 0, True))
    await emit(js, Transcript(sid, "u2", "next"))
    got = [await client.recv() for _ in range(2)]
    assert sorted(g["type"] for g in got) == ["audio", "transcript"]
    assert all(g["turn"] == "u2" for g in got)


async def test_barge_in_on_the_control_subject_flushes_the_client_once(
    gateway: RunningGateway, js: JetStreamContext, nc: Nats
) -> None:
    client = await open_client(gateway)
    sid = (await client.start())["session_id"]
    await speak(js, chunk(sid, "u1", 0, 0, False))
    assert (await client.recv())["type"] == "audio"
    await bus.publish_core(nc, Subjects().control(sid), Cancel(sid, "u1", "barge-in"))
    got = await client.recv()
    assert got == {"type": "reply.cancelled", "turn": "u1", "reason": "barge-in", "flush": True}
    await bus.publish_core(nc, Subjects().control(sid), Cancel(sid, "u1", "barge-in"))
    await emit(js, ReplyCancelled(sid, "u1", "barge-in"))
    await speak(js, chunk(sid, "u1", 0, 1, True))
    await emit(js, Transcript(sid, "u2", "marker"))
    marker = await client.recv()
    assert (marker["type"], marker["turn"]) == ("transcript", "u2")


async def test_every_bad_input_gets_its_error_and_the_session_still_works(
    gateway: RunningGateway, js: JetStreamContext, settings: Settings
) -> None:
    client = await open_client(gateway)

    async def expect_error(code: str) -> None:
        got = await client.recv()
        assert (got["type"], got["code"]) == ("error", code), got
        assert got["message"]

    await client.conn.send(FRAME)
    await expect_error("no_session")
    await client.send({"type": "text", "text": "hi"})
    await expect_error("no_session")
    await client.send({"type": "session.start", "rate": 44100})
    await expect_error("bad_audio_format")
    sid = (await client.start())["session_id"]
    await client.conn.send(bytes([1]) * 640)  # accepted: seq 1
    await client.conn.send("{not json")
    await expect_error("bad_json")
    await client.send({"type": "sing"})
    await expect_error("unknown_type")
    await client.send({"type": "session.start"})
    await expect_error("already_started")
    await client.conn.send(b"\x00" * 641)
    await expect_error("bad_frame")
    await client.conn.send(b"\x00" * (settings.max_frame_bytes + 2))
    await expect_error("bad_frame")
    await client.send({"type": "text", "text": "   "})
    await expect_error("bad_text")
    await client.conn.send(bytes([2]) * 640)  # accepted: seq 2
    frames = await read_audio(js, sid, 1280)
    assert b"".join(f.pcm for f in frames) == bytes([1]) * 640 + bytes([2]) * 640
    await client.send({"type": "text", "text": "still here?"})
    assert (await client.recv())["text"] == "still here?"


async def test_typed_text_becomes_a_transcript_event_and_an_llm_request(
    gateway: RunningGateway, js: JetStreamContext
) -> None:
    client = await open_client(gateway)
    sid = (await client.start())["session_id"]
    await client.send({"type": "text", "text": " What time is it? "})
    transcript = await client.recv()
    assert transcript["type"] == "transcript" and transcript["text"] == "What time is it?"
    assert transcript["turn"].startswith("t") and isinstance(transcript["id"], int)
    request, _ = await pull_one(js, "llm")
    assert request == LlmRequest(sid, transcript["turn"], "What time is it?")


async def test_resume_after_a_disconnect_replays_missed_events_and_audio(
    gateway: RunningGateway, js: JetStreamContext
) -> None:
    client = await open_client(gateway)
    first = await client.start()
    sid, token = first["session_id"], first["resume_token"]
    await client.conn.send(FRAME)
    await client.conn.send(FRAME)
    await emit(js, Transcript(sid, "u1", "tell me a story"))
    await speak(js, chunk(sid, "u1", 0, 0, False))
    seen = [await client.recv() for _ in range(2)]
    last_event = next(m["id"] for m in seen if m["type"] == "transcript")
    last_audio = next(m["id"] for m in seen if m["type"] == "audio")
    before = await read_audio(js, sid, 2 * len(FRAME))
    await client.conn.close()

    # While the client is away the reply goes on (sentence 1 finishes first).
    await emit(js, ReplyDelta(sid, "u1", 0, "Once upon a time."))
    await speak(js, chunk(sid, "u1", 1, 0, True))
    await speak(js, chunk(sid, "u1", 0, 1, True))
    await emit(js, ReplyDone(sid, "u1", "Once upon a time.", 2))

    client = await open_client(gateway)
    ready = await client.start(
        session_id=sid, resume_token=token, last_event=last_event, last_audio=last_audio
    )
    assert ready["resumed"] is True and ready["session_id"] == sid
    assert "resume_token" not in ready  # only its hash is kept
    got = [await client.recv() for _ in range(4)]
    events = [g["type"] for g in got if g["type"] != "audio"]
    audio = [(g["seq"], g["chunk"]) for g in got if g["type"] == "audio"]
    assert events == ["reply.delta", "reply.done"]
    assert audio == [(0, 1), (1, 0)]
    await client.conn.send(FRAME)
    [*_, third] = await read_audio(js, sid, 3 * len(FRAME))
    assert (third.seq, third.offset) == (len(before) + 1, 1024)


async def test_session_end_publishes_session_end_and_closes_the_socket(
    gateway: RunningGateway, nc: Nats
) -> None:
    client = await open_client(gateway)
    sid = (await client.start())["session_id"]
    control = await listen(nc, Subjects().control(sid))
    await client.send({"type": "session.end"})
    raw = await control.next_msg(timeout=TIMEOUT)
    assert decode(raw.headers, raw.data) == SessionEnd(sid)
    await asyncio.wait_for(client.conn.wait_closed(), TIMEOUT)
    assert client.conn.close_code == 1000


@pytest.fixture
def keyed(settings: Settings) -> Settings:
    return settings.model_copy(update={"api_keys": "k1, s3cret"})


async def test_websocket_without_a_valid_api_key_is_refused_with_401(
    keyed: Settings, js: JetStreamContext, caplog: pytest.LogCaptureFixture
) -> None:
    srv = await start(keyed)
    caplog.set_level(logging.INFO, logger="uvicorn.error")
    try:
        wrong = [Subprotocol("morgan.v1"), Subprotocol("morgan.key.wrong")]
        for headers, offered in [({}, None), ({}, wrong), ({"Authorization": "Bearer nope"}, None)]:
            with pytest.raises(InvalidStatus) as info:
                await connect(srv.ws_url, additional_headers=headers, subprotocols=offered)
            assert info.value.response.status_code == 401
        # a refusal is an answer, not a failure: nothing at ERROR for careless clients
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        offered = [Subprotocol("morgan.v1"), Subprotocol("morgan.key.s3cret")]
        by_subprotocol = await open_client(srv, subprotocols=offered)
        await by_subprotocol.start()
        by_header = await open_client(srv, additional_headers={"Authorization": "Bearer k1"})
        await by_header.start()
        async with httpx.AsyncClient(base_url=srv.url) as http:
            assert (await http.get("/health")).status_code == 200
            assert (await http.get("/metrics")).status_code == 200
            assert (await http.get("/")).status_code == 200
    finally:
        await srv.stop()


async def test_new_sessions_get_503_with_retry_after_when_the_work_queue_is_deep(
    gateway: RunningGateway, js: JetStreamContext, settings: Settings
) -> None:
    survivor = await open_client(gateway)
    await survivor.start()
    for i in range(settings.max_queue_depth + 1):
        await bus.publish(js, Subjects().work("llm"), LlmRequest("s", f"t{i}", "hi"))
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        deadline = asyncio.get_running_loop().time() + TIMEOUT
        while (await http.get("/health")).json()["queue_depth"] <= settings.max_queue_depth:
            assert asyncio.get_running_loop().time() < deadline, "queue depth never seen"
            await asyncio.sleep(0.05)
        with pytest.raises(InvalidStatus) as info:
            await connect(gateway.ws_url)
        assert info.value.response.status_code == 503
        assert info.value.response.headers["Retry-After"] == str(settings.retry_after_s)
        rest = await http.post("/api/text", json={"text": "hi"})
        assert rest.status_code == 503 and rest.headers["retry-after"] == "5"
        assert rest.json()["error"] == "overloaded"
        metrics = (await http.get("/metrics")).text
        assert 'morgan_gateway_rejections_total{reason="overloaded"} 2.0' in metrics
    # A session that was already open keeps working.
    await survivor.send({"type": "text", "text": "still on"})
    assert (await survivor.recv())["type"] == "transcript"


async def test_resume_does_not_resend_audio_of_a_turn_cancelled_before_the_drop(
    gateway: RunningGateway, js: JetStreamContext, nc: Nats
) -> None:
    client = await open_client(gateway)
    first = await client.start()
    sid, token = first["session_id"], first["resume_token"]
    await speak(js, chunk(sid, "u1", 0, 0, False))
    last_audio = (await client.recv())["id"]
    await bus.publish_core(nc, Subjects().control(sid), Cancel(sid, "u1", "barge-in"))
    assert (await client.recv())["type"] == "reply.cancelled"
    recorded = await js.subscribe(Subjects().events(sid, "reply.cancelled"), ordered_consumer=True)
    assert decode((raw := await recorded.next_msg(timeout=TIMEOUT)).headers, raw.data) == (
        ReplyCancelled(sid, "u1", "barge-in")
    )
    await client.conn.close()
    await speak(js, chunk(sid, "u1", 0, 1, True))  # the TTS had not heard of the cancel

    client = await open_client(gateway)
    await client.start(session_id=sid, resume_token=token, last_event=0, last_audio=last_audio)
    replayed = await client.recv()  # the recorded cancel, now with its event id
    assert (replayed["type"], replayed["turn"], replayed["id"]) == ("reply.cancelled", "u1", 1)
    await speak(js, chunk(sid, "u2", 0, 0, True))
    marker = await client.recv()
    assert (marker["type"], marker["turn"]) == ("audio", "u2")
