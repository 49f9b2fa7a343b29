"""Read what processors publish, the way the next stage or a client would."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime
from typing import TypeVar

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from schemas import Message, decode
from streams import definitions

M = TypeVar("M", bound=Message)


class Inbox:
    """Decoded messages from a subscription, in arrival order."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[Message] = asyncio.Queue()
        self.headers: list[dict[str, str]] = []
        """NATS headers of every message received, in order."""

    async def on_msg(self, raw: Msg) -> None:
        self.headers.append(dict(raw.headers or {}))
        await self.queue.put(decode(raw.headers, raw.data))

    async def next(self, cls: type[M] = Message, timeout: float = 60.0) -> M:  # type: ignore[assignment]
        """The next message of type ``cls`` (others are skipped)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            msg = await asyncio.wait_for(self.queue.get(), max(0.0, deadline - loop.time()))
            if isinstance(msg, cls):
                return msg

    async def quiet_for(self, seconds: float) -> list[Message]:
        """Everything that arrives within ``seconds`` (expected: nothing)."""
        got = []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                while True:
                    got.append(await self.queue.get())
        return got


@asynccontextmanager
async def stream_inbox(js: JetStreamContext, subject: str) -> AsyncIterator[Inbox]:
    """Every message on a stream subject (EVENTS, AUDIO), from the start."""
    inbox = Inbox()
    sub = await js.subscribe(subject, ordered_consumer=True, cb=inbox.on_msg)
    try:
        yield inbox
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


@asynccontextmanager
async def work_inbox(js: JetStreamContext, durable: str) -> AsyncIterator[Inbox]:
    """Play the next processor: pull its durable WORK consumer and ack everything."""
    inbox = Inbox()
    sub = await js.pull_subscribe_bind(durable, stream=definitions.WORK)

    async def pull() -> None:
        while True:
            try:
                msgs = await sub.fetch(10, timeout=0.5)
            except TimeoutError:
                continue
            for raw in msgs:
                await raw.ack()
                await inbox.on_msg(raw)

    task = asyncio.create_task(pull())
    try:
        yield inbox
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        # fetch() never marks its queue done: left subscribed, the test connection's drain
        # would wait out its whole timeout.
        with contextlib.suppress(Exception):
            await sub.unsubscribe()


async def until(check: Callable[[], bool | Awaitable[bool]], timeout: float = 60.0) -> None:
    """Poll ``check`` (plain or async) until it is true; fail after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = check()
        if await result if inspect.isawaitable(result) else result:
            return
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def stored_with_times(
    js: JetStreamContext, stream: str, subject: str
) -> list[tuple[datetime, Message]]:
    """Every message a stream holds on ``subject``, in order, with its store time."""
    out: list[tuple[datetime, Message]] = []
    seq = 1
    while True:
        try:
            raw = await js.get_msg(stream, seq=seq, subject=subject, next=True)
        except NotFoundError:
            return out
        assert raw.seq is not None and raw.time is not None
        out.append((raw.time, decode(raw.headers, raw.data or b"")))
        seq = raw.seq + 1


async def stored(js: JetStreamContext, stream: str, subject: str) -> list[Message]:
    """Every message a stream holds on ``subject``, in order."""
    return [m for _, m in await stored_with_times(js, stream, subject)]
