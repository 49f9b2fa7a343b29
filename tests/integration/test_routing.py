"""Tier routing against a real nats-server: gpu while a registered gpu worker keeps up."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.micro.request import Request

from processors import registry, stt
from processors.announce import announced
from processors.context import Onward
from processors.routing import TierRouter, rescue_stranded
from schemas import Message, Subjects, TtsRequest, Utterance
from streams import bus
from streams.routes import Routes
from streams.settings import Settings
from tests.integration.bus_helpers import until, work_inbox
from tests.integration.workers import ChildWorker, gpu_tier_taker, idle_tiered_spec, running

S = Subjects()


@contextlib.asynccontextmanager
async def gpu_worker_registered(nc: Client, settings: Settings, kind: str) -> AsyncIterator[None]:
    """A live gpu worker of ``kind`` that takes its work."""
    async with gpu_tier_taker(nc, nc.jetstream(), settings, kind):
        yield


async def _no_status(req: Request) -> None:
    await req.respond(b"{}")


@contextlib.asynccontextmanager
async def gpu_worker_stuck(nc: Client, settings: Settings, kind: str) -> AsyncIterator[None]:
    """A live gpu worker (it answers pings) that takes no work: its queue grows."""
    async with announced(nc, idle_tiered_spec(kind), settings, ("gpu",), None, _no_status):
        yield


async def test_routes_to_cpu_when_no_gpu_worker_exists(
    settings: Settings, js: JetStreamContext, nc: Client
) -> None:
    router = TierRouter(nc, js, settings)
    assert await router.tier_for("stt") == "cpu"
    assert await router.tier_for("tts") == "cpu"


async def test_routes_to_gpu_while_a_gpu_worker_is_registered(
    settings: Settings, js: JetStreamContext, nc: Client
) -> None:
    async with gpu_worker_registered(nc, settings, "stt"):
        router = TierRouter(nc, js, settings)
        assert await router.tier_for("stt") == "gpu"
        assert await router.tier_for("tts") == "cpu"  # only stt has a gpu worker


async def test_routes_to_cpu_when_the_gpu_backlog_reaches_the_limit(
    settings: Settings, js: JetStreamContext, nc: Client
) -> None:
    settings = settings.model_copy(update={"gpu_queue_limit": 2})
    router = TierRouter(nc, js, settings, refresh_s=0.0)
    async with gpu_worker_stuck(nc, settings, "tts"):
        assert await router.tier_for("tts") == "gpu"
        for seq in range(3):  # nobody takes them: a backlog grows
            await bus.publish(js, S.work("tts", "gpu"), TtsRequest("s", "t", seq, "hi"))

        async def on_cpu() -> bool:
            return await router.tier_for("tts") == "cpu"

        await until(on_cpu)
    await router.close()


async def test_a_gpu_worker_that_goes_away_is_dropped_within_two_seconds(
    settings: Settings, js: JetStreamContext, nc: Client
) -> None:
    router = TierRouter(nc, js, settings)
    async with gpu_worker_registered(nc, settings, "stt"):
        assert await router.tier_for("stt") == "gpu"
    gone = time.monotonic()

    async def on_cpu() -> bool:
        return await router.tier_for("stt") == "cpu"

    await until(on_cpu)
    assert time.monotonic() - gone < 2.0
    await router.close()


async def test_work_for_a_kind_without_tiers_never_goes_to_a_tier(
    settings: Settings, js: JetStreamContext, nc: Client
) -> None:
    router = TierRouter(nc, js, settings)
    onward = Onward(Routes(), registry.is_tiered, router)
    async with gpu_worker_registered(nc, settings, "tts"), gpu_worker_stuck(nc, settings, "llm"):
        assert await onward.subject(S, "stt", "llm.request") == "morgan.work.llm"
        assert await onward.subject(S, "llm", "tts.request") == "morgan.work.tts.gpu"
    await router.close()


async def test_work_stranded_on_the_gpu_tier_moves_to_cpu(
    settings: Settings, js: JetStreamContext, nc: Client
) -> None:
    for i in range(3):
        await bus.publish(js, S.work("stt", "gpu"), Utterance("s", f"u{i}"), msg_id=f"s.u{i}.utt")
    stop = asyncio.Event()
    router = TierRouter(nc, js, settings)
    async with work_inbox(js, "stt-cpu") as cpu:
        task = asyncio.create_task(rescue_stranded(js, router, settings, "stt", stop, 0.1))
        moved = [await cpu.next(Utterance, timeout=10) for _ in range(3)]
        stop.set()
        await task
    assert sorted(u.turn for u in moved) == ["u0", "u1", "u2"]


async def test_killing_the_only_gpu_stt_worker_mid_turn_completes_the_turn_on_cpu(
    settings: Settings, js: JetStreamContext, nc: Client
) -> None:
    from testbed.audio import speak

    fast = settings.model_copy(update={"work_ack_wait_s": 3.0})
    gpu = ChildWorker("stt", fast, env={"MORGAN_TIERS": "gpu"})
    await gpu.wait_ready()
    router = TierRouter(nc, js, fast)
    await until(lambda: _is(router.tier_for("stt"), "gpu"))
    utt = Utterance("sess", "u1", pcm=speak("turn on the kitchen lights"))
    async with running(stt.SPEC, fast, ("cpu",)), work_inbox(js, "llm") as llm:
        await bus.publish(js, S.work("stt", "gpu"), utt, msg_id="sess.u1.utt")
        gpu.kill()  # mid-turn: the utterance is queued or in the dead worker's hands
        request: Message = await llm.next(timeout=60)
        again = await llm.quiet_for(2.0)
    assert "kitchen" in getattr(request, "text", "").lower()
    assert again == []  # transcribed once


async def _is(value: Awaitable[str], want: str) -> bool:
    return await value == want
