"""A WebSocket client of the gateway, and the processors' part played on the bus, for the
gateway's integration tests."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from websockets.asyncio.client import ClientConnection, connect

from gateway.server import RunningGateway, start
from schemas import AudioChunk, LlmRequest, Message, ReplyDone, Subjects, decode
from streams import bus
from streams.settings import Settings

TIMEOUT = 10.0
FRAME = b"\x01\x00" * 512  # 32 ms at 16 kHz


class Client:
    """A WebSocket client that reads audio headers together with their bytes."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn

    async def send(self, obj: dict[str, Any]) -> None:
        await self.conn.send(json.dumps(obj))

    async def recv(self) -> dict[str, Any]:
        raw = await asyncio.wait_for(self.conn.recv(), TIMEOUT)
        assert isinstance(raw, str), f"expected a JSON text frame, got {len(raw)} bytes"
        msg: dict[str, Any] = json.loads(raw)
        if msg["type"] == "audio":
            pcm = await asyncio.wait_for(self.conn.recv(), TIMEOUT)
            assert isinstance(pcm, bytes) and len(pcm) == msg["bytes"]
            msg["pcm"] = pcm
        return msg

    async def start(self, **extra: Any) -> dict[str, Any]:
        await self.send(
            {"type": "session.start", "rate": 16000, "format": "s16le", "channels": 1, **extra}
        )
        ready = await self.recv()
        assert ready["type"] == "session.ready", ready
        return ready


async def open_client(gw: RunningGateway, query: str = "", **kw: Any) -> Client:
    return Client(await connect(gw.ws_url + query, **kw))


async def emit(js: JetStreamContext, event: Message) -> None:
    sid = getattr(event, "sid")  # noqa: B009
    await bus.publish(js, Subjects().events(sid, event.TYPE), event)


async def speak(js: JetStreamContext, chunk: AudioChunk) -> None:
    await bus.publish(js, Subjects().audio_out(chunk.sid), chunk)


def chunk(sid: str, turn: str, seq: int, n: int, last: bool) -> AudioChunk:
    return AudioChunk(sid, turn, seq, n, last, 22050, 0.0, bytes([seq, n]) * 100)


@asynccontextmanager
async def serving(settings: Settings, **update: Any) -> AsyncIterator[RunningGateway]:
    """A gateway with ``settings`` changed by ``update``, stopped when the block ends."""
    srv = await start(settings.model_copy(update=update))
    try:
        yield srv
    finally:
        await srv.stop()


async def answer_llm(js: JetStreamContext) -> None:
    """Be the LLM: answer each typed turn at once with an empty reply (until cancelled)."""
    sub = await js.pull_subscribe_bind("llm", stream="WORK")
    try:
        while True:
            with contextlib.suppress(NatsTimeoutError):
                for raw in await sub.fetch(1, timeout=1.0):
                    request = decode(raw.headers, raw.data)
                    if isinstance(request, LlmRequest):
                        done = ReplyDone(request.sid, request.turn, "", 0)
                        await bus.publish(js, Subjects().events(request.sid, done.TYPE), done)
                    await raw.ack()
    finally:
        await sub.unsubscribe()
