"""POST /api/text, /health, /metrics and the page, over a real socket and nats-server.

Where a reply is needed, the test plays the LLM and TTS workers: it takes the
LlmRequest from the real ``llm`` work consumer and publishes the real events
and audio chunks (sentence 1 before sentence 0, as parallel TTS may).
"""

from __future__ import annotations

import asyncio
import base64
import io
import wave
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
import pytest_asyncio
from nats.js import JetStreamContext

from gateway.server import RunningGateway, start
from schemas import (
    AudioChunk,
    ErrorEvent,
    LlmRequest,
    Message,
    ReplyCancelled,
    ReplyDelta,
    ReplyDone,
    Subjects,
    decode,
)
from streams import bus, embedded
from streams.settings import Settings

TIMEOUT = 10.0
Reply = Callable[[LlmRequest], list[Message]]


@pytest_asyncio.fixture
async def http(gateway: RunningGateway) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=gateway.url, timeout=TIMEOUT * 2) as client:
        yield client


async def answer_one(js: JetStreamContext, reply: Reply) -> LlmRequest:
    """Be the LLM and TTS for one request: publish ``reply(request)`` on the bus."""
    sub = await js.pull_subscribe_bind("llm", stream="WORK")
    [raw] = await sub.fetch(1, timeout=TIMEOUT)
    request = decode(raw.headers, raw.data)
    assert isinstance(request, LlmRequest)
    s = Subjects()
    for msg in reply(request):
        sid = getattr(msg, "sid")  # noqa: B009
        subject = s.audio_out(sid) if isinstance(msg, AudioChunk) else s.events(sid, msg.TYPE)
        await bus.publish(js, subject, msg)
    await raw.ack()
    return request


def pcm(seq: int, n: int) -> bytes:
    return bytes([seq * 16 + n, 0]) * 2205  # 0.1 s at 22050 Hz


def two_sentences(r: LlmRequest) -> list[Message]:
    sid, turn = r.sid, r.turn
    return [
        ReplyDelta(sid, turn, 0, "Hello. "),
        AudioChunk(sid, turn, 1, 0, True, 22050, 1.0, pcm(1, 0)),
        ReplyDelta(sid, turn, 1, "Nice day."),
        AudioChunk(sid, turn, 0, 1, True, 22050, 1.0, pcm(0, 1)),
        AudioChunk(sid, turn, 0, 0, False, 22050, 1.0, pcm(0, 0)),
        AudioChunk("other", turn, 2, 0, True, 22050, 1.0, pcm(9, 9)),
        ReplyDone(sid, turn, "Hello. Nice day.", 2),
    ]


async def post_with(
    http: httpx.AsyncClient, js: JetStreamContext, reply: Reply, body: dict[str, object]
) -> tuple[httpx.Response, LlmRequest]:
    worker = asyncio.create_task(answer_one(js, reply))
    response = await http.post("/api/text", json=body)
    return response, await worker


async def test_post_text_returns_the_reply_text_and_a_playable_wav_in_order(
    http: httpx.AsyncClient, js: JetStreamContext
) -> None:
    response, request = await post_with(http, js, two_sentences, {"text": "  Hi Morgan "})
    assert response.status_code == 200, response.text
    body = response.json()
    assert request.text == "Hi Morgan" and body["session_id"] == request.sid
    assert body["turn"] == request.turn and body["text"] == "Hello. Nice day."
    with wave.open(io.BytesIO(base64.b64decode(body["audio_base64"]))) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 22050)
        frames = w.readframes(w.getnframes())
    assert frames == pcm(0, 0) + pcm(0, 1) + pcm(1, 0)


async def test_post_text_continues_a_session_with_its_resume_token(
    http: httpx.AsyncClient, js: JetStreamContext
) -> None:
    first, _ = await post_with(http, js, two_sentences, {"text": "hi"})
    sid, token = first.json()["session_id"], first.json()["resume_token"]
    body = {"text": "again", "session_id": sid, "resume_token": token}
    response, request = await post_with(http, js, two_sentences, body)
    assert response.status_code == 200 and request.sid == sid
    assert response.json()["session_id"] == sid and "resume_token" not in response.json()


async def test_a_reply_without_sentences_is_an_empty_wav(
    http: httpx.AsyncClient, js: JetStreamContext
) -> None:
    def silent(r: LlmRequest) -> list[Message]:
        return [ReplyDone(r.sid, r.turn, "...", 0)]

    response, _ = await post_with(http, js, silent, {"text": "shh"})
    assert response.status_code == 200
    with wave.open(io.BytesIO(base64.b64decode(response.json()["audio_base64"]))) as w:
        assert w.getnframes() == 0


@pytest.mark.parametrize(
    "reply, reason",
    [
        (lambda r: [ReplyCancelled(r.sid, r.turn, "barge-in")], "reply cancelled (barge-in)"),
        (
            lambda r: [ErrorEvent(r.sid, "llm_failed", "model crashed", False, r.turn)],
            "llm_failed: model crashed",
        ),
    ],
)
async def test_a_cancelled_or_failed_reply_is_502_with_the_reason(
    http: httpx.AsyncClient, js: JetStreamContext, reply: Reply, reason: str
) -> None:
    response, _ = await post_with(http, js, reply, {"text": "hi"})
    assert response.status_code == 502
    assert response.json() == {"error": "reply_failed", "message": reason}


@pytest.mark.parametrize(
    "content",
    [
        b'{"text": ""}',
        b'{"text": "   "}',
        b"{}",
        b'{"text": 5}',
        b"not json",
        b"[1]",
        b'{"text": "hi", "session_id": "a.b"}',
    ],
)
async def test_post_text_without_usable_text_is_422_with_a_reason(
    http: httpx.AsyncClient, content: bytes
) -> None:
    json_type = {"Content-Type": "application/json"}  # else 415 (gateway/http_guard.py)
    response = await http.post("/api/text", content=content, headers=json_type)
    assert response.status_code == 422
    assert response.json()["error"] in {"bad_text", "bad_json", "bad_message"}
    assert response.json()["message"]


async def test_an_oversized_body_is_413(http: httpx.AsyncClient) -> None:
    response = await http.post("/api/text", json={"text": "a" * 70_000})
    assert response.status_code == 413 and response.json()["error"] == "too_large"


async def test_post_text_times_out_with_504_when_no_reply_comes(
    settings: Settings, js: JetStreamContext
) -> None:
    srv = await start(settings.model_copy(update={"text_timeout_s": 0.3}))
    try:
        async with httpx.AsyncClient(base_url=srv.url) as http:
            response = await http.post("/api/text", json={"text": "anyone?"})
        assert response.status_code == 504 and response.json()["error"] == "timeout"
    finally:
        await srv.stop()


async def test_api_needs_a_valid_key_when_keys_are_configured(
    settings: Settings, js: JetStreamContext
) -> None:
    srv = await start(settings.model_copy(update={"api_keys": "abc"}))
    try:
        async with httpx.AsyncClient(base_url=srv.url) as http:
            for headers in [{}, {"Authorization": "Bearer x"}]:
                refused = await http.post("/api/text", json={"text": ""}, headers=headers)
                assert refused.status_code == 401
                assert refused.headers["www-authenticate"] == "Bearer"
            # Past auth the request is judged on its merits (here: empty text).
            by_header = await http.post(
                "/api/text", json={"text": ""}, headers={"Authorization": "Bearer abc"}
            )
            assert by_header.status_code == 422
            # A key in the URL is refused, valid or not (docs/protocol.md, "Authentication").
            by_query = await http.post("/api/text?api_key=abc", json={"text": ""})
            assert (by_query.status_code, by_query.json()["error"]) == (400, "key_in_url")
            assert (await http.get("/health")).status_code == 200
    finally:
        await srv.stop()


async def test_health_reports_nats_and_queue_depth(http: httpx.AsyncClient) -> None:
    response = await http.get("/health")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "nats": "connected",
        "queue_depth": 0,
        "stores": {"postgres": "none", "redis": "none"},  # none configured
    }


async def test_metrics_count_sessions_frames_and_rejections(
    http: httpx.AsyncClient,
) -> None:
    await http.post("/api/text", json={"text": ""})
    text = (await http.get("/metrics")).text
    assert "morgan_gateway_active_sessions 0.0" in text
    assert "morgan_gateway_frames_in_total 0.0" in text
    assert "morgan_gateway_queue_depth 0.0" in text
    assert "# TYPE morgan_gateway_rejections_total counter" in text


async def test_the_page_and_its_script_are_served(http: httpx.AsyncClient) -> None:
    page = await http.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert '<script src="/static/app.js">' in page.text
    script = await http.get("/static/app.js")
    assert script.status_code == 200 and "audioWorklet" in script.text


async def test_the_page_may_not_be_framed_by_another_site(http: httpx.AsyncClient) -> None:
    page = await http.get("/")
    assert page.headers["x-frame-options"] == "DENY"
    assert page.headers["content-security-policy"] == "frame-ancestors 'none'"
    assert page.headers["referrer-policy"] == "no-referrer"


async def test_health_is_503_while_nats_is_down(
    nats_server: embedded.EmbeddedNats, settings: Settings
) -> None:
    gw = await start(settings)
    try:
        async with httpx.AsyncClient(base_url=gw.url) as http:
            assert (await http.get("/health")).status_code == 200
            await nats_server.kill()
            deadline = asyncio.get_running_loop().time() + TIMEOUT
            while (health := await http.get("/health")).status_code != 503:
                assert asyncio.get_running_loop().time() < deadline
                await asyncio.sleep(0.05)
            assert health.json()["nats"] == "disconnected"
            refused = await http.post("/api/text", json={"text": "hi"})
            assert refused.status_code == 503 and refused.headers["retry-after"] == "5"
    finally:
        await gw.stop()
