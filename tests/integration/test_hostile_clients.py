"""Clients that vanish, lie or attack (issue 8), each against the real gateway and
nats-server: a clear error, the session alive, other clients unaffected, and no
traceback in the log.

Cases of the HTTP edge (body size, slow connections, Origin, Host, Content-Type,
secrets in the access log) are in test_gateway_http_guard.py; the VAD's side of
abandoned sessions is in test_vad.py; random input is in test_gateway_fuzz.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from nats.js import JetStreamContext
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from gateway import session
from gateway.server import RunningGateway
from schemas import AudioChunk, ReplyDone, SessionClaim, Subjects, Transcript, decode
from streams.settings import Settings
from tests.integration.bus_helpers import until
from tests.integration.gateway_helpers import (
    FRAME,
    TIMEOUT,
    Client,
    chunk,
    emit,
    open_client,
    serving,
    speak,
)


@pytest.fixture(autouse=True)
def no_tracebacks(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Whatever a client sends, the gateway logs no traceback and no error."""
    caplog.set_level(logging.DEBUG)
    yield
    bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not bad, [r.getMessage() for r in bad]
    assert "Traceback" not in caplog.text and "never retrieved" not in caplog.text


async def expect_error(client: Client, code: str) -> dict[str, Any]:
    got = await client.recv()
    assert (got["type"], got.get("code")) == ("error", code), got
    assert got["message"]
    return got


async def still_works(client: Client) -> None:
    """The session answers a typed turn with its transcript."""
    await client.send({"type": "text", "text": "still here?"})
    got = await client.recv()
    assert (got["type"], got["text"]) == ("transcript", "still here?"), got


async def handshake_is(url: str, status: int) -> bool:
    """Whether a WebSocket handshake gets ``status`` (101: accepted, then closed again)."""
    try:
        await (await connect(url)).close()
    except InvalidStatus as exc:
        return exc.response.status_code == status
    return status == 101


async def finish(js: JetStreamContext, sid: str, turn: str) -> None:
    """Play the LLM: the turn's reply is done."""
    await emit(js, ReplyDone(sid, turn, "done.", 0))


# --- 3. one small message must not kill a connection ---


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ('{"type":"text","text":"\\ud800"}', "bad_text"),
        ('{"type":"text","text":"hi","x":' + "[" * 1000 + "]" * 1000 + "}", "bad_json"),
        ("[" * 1000 + "]" * 1000, "bad_json"),
        ('{"type":"session.start","last_event":' + "9" * 5000 + "}", "bad_json"),
        ('{"type":"\\udfff"}', "bad_json"),
    ],
    ids=["lone-surrogate", "deep-in-object", "deep-array", "5000-digits", "surrogate-type"],
)
async def test_a_poisoned_text_frame_gets_its_error_and_the_session_goes_on(
    gateway: RunningGateway, frame: str, code: str
) -> None:
    client = await open_client(gateway)
    await client.start()
    await client.conn.send(frame)
    await expect_error(client, code)
    await still_works(client)


@pytest.mark.parametrize(
    "body",
    [
        b'{"text":"\\ud800"}',
        b'{"text":"hi","x":' + b"[" * 1000 + b"]" * 1000 + b"}",
        b'{"text":' + b"7" * 5000 + b"}",
        b'{"text":"caf\xe9"}',
    ],
    ids=["lone-surrogate", "deep", "5000-digits", "latin-1"],
)
async def test_a_poisoned_rest_body_is_422_not_500(gateway: RunningGateway, body: bytes) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        got = await http.post(
            "/api/text", content=body, headers={"Content-Type": "application/json"}
        )
    assert got.status_code == 422, got.text
    assert got.json()["error"] in ("bad_json", "bad_text") and got.json()["message"]


# --- 2. a session id alone does not open someone else's session ---


async def test_resuming_another_clients_session_needs_its_resume_token(
    gateway: RunningGateway, js: JetStreamContext
) -> None:
    victim = await open_client(gateway)
    ready = await victim.start()
    sid, token = ready["session_id"], ready["resume_token"]
    assert len(token) >= 32 and token != sid
    await emit(js, Transcript(sid, "u1", "my secret plans"))
    assert (await victim.recv())["text"] == "my secret plans"

    thief = await open_client(gateway)
    await thief.send({"type": "session.start", "session_id": sid})
    await expect_error(thief, "bad_message")
    for forged in ("A" * 32, token[:-1] + ("B" if token[-1] != "B" else "C")):
        await thief.send({"type": "session.start", "session_id": sid, "resume_token": forged})
        await expect_error(thief, "unknown_session")
    await thief.send({"type": "session.start", "session_id": "0" * 32, "resume_token": token})
    await expect_error(thief, "unknown_session")
    # The thief is told nothing of the victim's session, and may still start its own.
    await emit(js, Transcript(sid, "u2", "more secrets"))
    own = await thief.start()
    assert own["session_id"] != sid
    await still_works(thief)
    assert (await victim.recv())["text"] == "more secrets"


async def test_a_resume_token_works_only_with_the_key_that_opened_the_session(
    settings: Settings, js: JetStreamContext
) -> None:
    async with serving(settings, api_keys="alice-key,mallory-key") as srv:
        alice = await open_client(srv, additional_headers=bearer("alice-key"))
        ready = await alice.start()
        sid, token = ready["session_id"], ready["resume_token"]
        await alice.conn.close()
        mallory = await open_client(srv, additional_headers=bearer("mallory-key"))
        await mallory.send({"type": "session.start", "session_id": sid, "resume_token": token})
        await expect_error(mallory, "unknown_session")
        async with httpx.AsyncClient(base_url=srv.url) as http:
            body = {"text": "hi", "session_id": sid, "resume_token": token}
            got = await http.post("/api/text", json=body, headers=bearer("mallory-key"))
            assert (got.status_code, got.json()["error"]) == (404, "unknown_session")
        alice = await open_client(srv, additional_headers=bearer("alice-key"))
        again = await alice.start(session_id=sid, resume_token=token)
        assert again["resumed"] is True


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def test_rest_continues_a_session_only_with_its_resume_token(
    gateway: RunningGateway,
) -> None:
    client = await open_client(gateway)
    ready = await client.start()
    sid = ready["session_id"]
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        no_token = await http.post("/api/text", json={"text": "hi", "session_id": sid})
        assert (no_token.status_code, no_token.json()["error"]) == (422, "bad_message")
        wrong = {"text": "hi", "session_id": sid, "resume_token": "x" * 32}
        forged = await http.post("/api/text", json=wrong)
        assert (forged.status_code, forged.json()["error"]) == (404, "unknown_session")
    await still_works(client)


# --- 4. resume cursors past the end, or past 64 bits ---


async def test_resume_cursors_past_the_end_still_deliver_what_comes_next(
    gateway: RunningGateway, js: JetStreamContext
) -> None:
    client = await open_client(gateway)
    ready = await client.start()
    sid, token = ready["session_id"], ready["resume_token"]
    await client.conn.close()
    client = await open_client(gateway)
    await client.start(session_id=sid, resume_token=token, last_event=10**15, last_audio=10**15)
    await emit(js, Transcript(sid, "u1", "after the resume"))
    assert (await client.recv())["text"] == "after the resume"
    await speak(js, chunk(sid, "u1", 0, 0, True))
    audio = await client.recv()
    assert (audio["type"], audio["turn"]) == ("audio", "u1")


@pytest.mark.parametrize("cursor", [2**64 + 5, 2**63, -1, "7", 1.5, True])
async def test_an_impossible_resume_cursor_is_bad_message_not_retryable(
    gateway: RunningGateway, cursor: object
) -> None:
    client = await open_client(gateway)
    ready = await client.start()
    sid, token = ready["session_id"], ready["resume_token"]
    other = await open_client(gateway)
    await other.send(
        {"type": "session.start", "session_id": sid, "resume_token": token, "last_event": cursor}
    )
    error = await expect_error(other, "bad_message")
    assert error["retryable"] is False
    await other.start(session_id=sid, resume_token=token)


# --- 1 and 7. one client cannot take everyone's share ---


async def test_one_session_flooding_typed_turns_gets_too_many_turns_and_others_go_on(
    gateway: RunningGateway, js: JetStreamContext, settings: Settings
) -> None:
    flooder = await open_client(gateway)
    sid = (await flooder.start())["session_id"]
    for i in range(60):
        await flooder.send({"type": "text", "text": f"turn {i}"})
    got = [await flooder.recv() for _ in range(60)]
    turns = [g["turn"] for g in got if g["type"] == "transcript"]
    refused = [g for g in got if g["type"] == "error"]
    assert len(turns) == settings.max_turns_per_session
    assert {g["code"] for g in refused} == {"too_many_turns"} and len(refused) == 58
    assert all(g["retryable"] is True for g in refused)
    # Everyone else is served: no 503, a new session works.
    bystander = await open_client(gateway)
    await bystander.start()
    await still_works(bystander)
    # Once a reply is done, the flooder may send again.
    await finish(js, sid, turns[0])
    await flooder.send({"type": "text", "text": "one more"})
    got = [await flooder.recv() for _ in range(2)]
    assert [g["type"] for g in got] == ["reply.done", "transcript"]


async def test_a_client_is_held_to_its_share_of_turns_across_sessions_and_rest(
    settings: Settings, js: JetStreamContext
) -> None:
    limits = {"max_turns_per_session": 2, "max_turns_per_client": 3, "text_timeout_s": 30.0}
    async with serving(settings, **limits) as srv:
        first, second = await open_client(srv), await open_client(srv)
        await first.start()
        await second.start()
        for client in (first, first, second):
            await client.send({"type": "text", "text": "hi"})
            assert (await client.recv())["type"] == "transcript"
        await second.send({"type": "text", "text": "hi"})
        await expect_error(second, "too_many_turns")
        async with httpx.AsyncClient(base_url=srv.url) as http:
            got = await http.post("/api/text", json={"text": "hi"})
        assert (got.status_code, got.json()["error"]) == (429, "too_many_turns")
        assert got.headers["Retry-After"] == str(settings.retry_after_s)


async def test_a_client_past_its_share_of_open_sessions_gets_429(
    settings: Settings, js: JetStreamContext
) -> None:
    async with serving(settings, max_sessions_per_client=2) as srv:
        held = [await open_client(srv) for _ in range(2)]
        with pytest.raises(InvalidStatus) as info:
            await connect(srv.ws_url)
        assert info.value.response.status_code == 429
        assert b"too_many_sessions" in info.value.response.body
        await held[0].conn.close()  # a closed socket gives its share back
        await until(lambda: handshake_is(srv.ws_url, 101), timeout=TIMEOUT)
        await (await open_client(srv)).start()


async def test_new_sessions_get_503_while_no_vad_worker_takes_claims(
    settings: Settings, js: JetStreamContext
) -> None:
    async with serving(settings, vad_claim_wait_s=0.5) as srv:
        waiting = await open_client(srv)  # no VAD runs: its claim stays pending
        await waiting.start()
        await until(lambda: handshake_is(srv.ws_url, 503), timeout=TIMEOUT)
        with pytest.raises(InvalidStatus) as info:
            await connect(srv.ws_url)
        assert b"no voice activity worker has room" in info.value.response.body
        # Typed turns of open sessions go on.
        await still_works(waiting)
        await js.purge_stream("WORK", subject=Subjects().work("vad"))
        # The claims were taken: new sessions are welcome again.
        await until(lambda: handshake_is(srv.ws_url, 101), timeout=TIMEOUT)


# --- careless clients ---


async def test_a_socket_that_never_sends_session_start_is_closed_with_1008(
    settings: Settings, js: JetStreamContext
) -> None:
    async with serving(settings, start_timeout_s=0.5) as srv:
        idle = await connect(srv.ws_url)
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(idle.recv(), TIMEOUT)
        assert idle.close_code == 1008
        # One that errs first still has to start in time, and one that starts stays.
        started = await open_client(srv)
        await started.start()
        await asyncio.sleep(1.0)
        await still_works(started)


async def test_audio_after_a_long_silence_claims_the_session_again(
    settings: Settings, js: JetStreamContext
) -> None:
    async with serving(settings, session_idle_s=1.0) as srv:
        client = await open_client(srv)
        ready = await client.start()
        sid, token = ready["session_id"], ready["resume_token"]
        await client.conn.send(FRAME)
        await asyncio.sleep(0.6)  # past half the idle limit: the VAD may let go soon
        await client.conn.send(FRAME)
        assert await read_claims(js, 2) == [sid, sid]
        await client.conn.close()
        await asyncio.sleep(0.6)  # and after a resume, judged by the last stored frame
        client = await open_client(srv)
        await client.start(session_id=sid, resume_token=token)
        await client.conn.send(FRAME)
        assert await read_claims(js, 1) == [sid]  # the resume's own claim was deduplicated
        await client.conn.send(FRAME)
        assert await read_claims(js, 0) == []


async def read_claims(js: JetStreamContext, n: int) -> list[str]:
    """The sessions of the next ``n`` claims; with 0, of those that come within a second."""
    sub = await js.pull_subscribe_bind("vad", stream="WORK")
    raws = []
    if n == 0:
        with contextlib.suppress(TimeoutError):
            raws = await sub.fetch(9, timeout=1.0)
    while len(raws) < n:
        raws += await sub.fetch(n - len(raws), timeout=TIMEOUT)
    sids = []
    for raw in raws:
        claim = decode(raw.headers, raw.data)
        assert isinstance(claim, SessionClaim)
        sids.append(claim.sid)
        await raw.ack()
    return sids


async def test_a_client_that_stops_reading_is_dropped_and_holds_up_no_one(
    gateway: RunningGateway,
    js: JetStreamContext,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(session, "SEND_TIMEOUT_S", 0.5)
    stalled = await open_client(gateway, max_queue=1)  # reads nothing from here on
    sid = (await stalled.start())["session_id"]
    for seq in range(300):  # ~13 MB of reply audio (noise: deflate cannot shrink it)
        noise = random.randbytes(44100)
        await speak(js, AudioChunk(sid, "u1", seq, 0, True, 22050, 0.0, noise))
    deadline = asyncio.get_running_loop().time() + TIMEOUT * 3
    while "reads nothing" not in caplog.text:
        assert asyncio.get_running_loop().time() < deadline, "the stalled client was never noticed"
        await asyncio.sleep(0.1)
    bystander = await open_client(gateway)
    await bystander.start()
    await still_works(bystander)
    stalled.conn.transport.abort()  # the stalled client finally goes away
