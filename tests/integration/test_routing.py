"""Tier routing against a real nats-server: gpu while a gpu worker pulls and keeps up."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest
from nats.js import JetStreamContext

from processors.routing import TierRouter
from schemas import Message, Subjects, TtsRequest, decode
from streams import bus, definitions
from streams.settings import Settings

S = Subjects()


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


@contextlib.asynccontextmanager
async def gpu_worker_pulling(js: JetStreamContext, kind: str) -> AsyncIterator[list[Message]]:
    """A worker with a pull request open on ``<kind>-gpu``, as the runtime keeps one.

    Yields the list of messages it takes (and acks).
    """
    sub = await js.pull_subscribe_bind(f"{kind}-gpu", stream=definitions.WORK)
    taken: list[Message] = []

    async def pull() -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                for raw in await sub.fetch(1, timeout=5.0):
                    await raw.ack()
                    taken.append(decode(raw.headers, raw.data))

    task = asyncio.create_task(pull())

    async def waiting() -> bool:
        info = await js.consumer_info(definitions.WORK, f"{kind}-gpu")
        return (info.num_waiting or 0) > 0

    await until(waiting)
    try:
        yield taken
    finally:
        task.cancel()
        with contextlib.suppress(BaseException):
            await task
        await sub.unsubscribe()


async def test_routes_to_cpu_when_no_gpu_worker_exists(
    settings: Settings, js: JetStreamContext
) -> None:
    router = TierRouter(js, settings)
    assert await router.tier_for("stt") == "cpu"
    assert await router.tier_for("tts") == "cpu"


async def test_routes_to_gpu_while_a_gpu_worker_is_pulling(
    settings: Settings, js: JetStreamContext
) -> None:
    async with gpu_worker_pulling(js, "stt"):
        router = TierRouter(js, settings)
        assert await router.tier_for("stt") == "gpu"
        assert await router.tier_for("tts") == "cpu"  # only stt has a gpu worker


async def test_routes_to_cpu_when_the_gpu_backlog_reaches_the_limit(
    settings: Settings, js: JetStreamContext
) -> None:
    settings = settings.model_copy(update={"gpu_queue_limit": 2})
    router = TierRouter(js, settings, cache_s=0.0)
    async with gpu_worker_pulling(js, "tts"):
        assert await router.tier_for("tts") == "gpu"
    # the worker saw within the grace period, but it stopped taking work: a backlog grows
    for seq in range(3):
        await bus.publish(js, S.work("tts", "gpu"), TtsRequest("s", "t", seq, "hi"))
    assert await router.tier_for("tts") == "cpu"


async def test_a_gpu_worker_that_stopped_pulling_is_dropped_after_the_grace_period(
    settings: Settings, js: JetStreamContext
) -> None:
    router = TierRouter(js, settings, cache_s=0.0, live_grace_s=0.3)
    async with gpu_worker_pulling(js, "stt"):
        assert await router.tier_for("stt") == "gpu"
    assert await router.tier_for("stt") == "gpu"  # busy or between pulls: still live

    async def on_cpu() -> bool:
        return await router.tier_for("stt") == "cpu"

    await until(on_cpu)


async def test_consumer_info_is_cached_briefly(settings: Settings, js: JetStreamContext) -> None:
    now = [0.0]
    router = TierRouter(js, settings, cache_s=0.5, clock=lambda: now[0])
    assert await router.tier_for("stt") == "cpu"
    async with gpu_worker_pulling(js, "stt"):
        now[0] = 0.4
        assert await router.tier_for("stt") == "cpu"  # the cached look
        now[0] = 0.6
        assert await router.tier_for("stt") == "gpu"


async def test_kinds_without_tiers_are_refused(settings: Settings, js: JetStreamContext) -> None:
    with pytest.raises(ValueError):
        await TierRouter(js, settings).tier_for("llm")
