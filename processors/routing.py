"""Which tier gets a kind's work: ``gpu`` while a live gpu worker keeps up, else ``cpu``.

Liveness comes from the registry, not configuration: every worker answers as a
NATS micro service ``morgan-<kind>`` whose metadata lists its tiers, so a
``$SRV.PING.morgan-<kind>`` gathered for a moment says which gpu workers are
alive (a SIGKILLed worker stops answering at once; a busy one still answers,
its model runs on a thread). The gpu tier is chosen while one answered within
``grace_s`` and the ``<kind>-gpu`` consumer has fewer than
``settings.gpu_queue_limit`` messages waiting. The look is refreshed in the
background (stale-while-revalidate), so choosing a tier never waits on it.

Work already queued on the gpu tier when its last worker dies would be
stranded: ``rescue_stranded`` (run by cpu-tier workers) moves it to cpu.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext

from schemas.subjects import Subjects
from streams import definitions
from streams.bus import MSG_ID
from streams.settings import Settings

log = logging.getLogger("morgan.routing")
REFRESH_S = 0.5
"""How long one look is fresh, seconds."""
GRACE_S = 1.0
"""A gpu worker that answered this recently still counts as live, seconds."""
GATHER_S = 0.15
"""How long ping replies are collected, seconds."""


async def live_tiers(nc: Client, kind: str, gather_s: float = GATHER_S) -> list[str]:
    """Tiers served by each ``morgan-<kind>`` worker that answers a ping now (one per tier)."""
    replies: list[Msg] = []

    async def on_reply(msg: Msg) -> None:
        replies.append(msg)

    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox, cb=on_reply)
    try:
        await nc.publish(f"$SRV.PING.morgan-{kind}", b"", reply=inbox)
        await asyncio.sleep(gather_s)  # a ping has no end marker: gather for a moment
    finally:
        await sub.unsubscribe()
    tiers: list[str] = []
    for msg in replies:
        with contextlib.suppress(ValueError, AttributeError, TypeError):
            tiers += json.loads(msg.data)["metadata"]["tiers"].split(",")
    return tiers


@dataclass
class Look:
    at: float
    gpu_seen_at: float
    gpu_pending: int


class TierRouter:
    def __init__(
        self,
        nc: Client,
        js: JetStreamContext,
        settings: Settings,
        *,
        refresh_s: float = REFRESH_S,
        grace_s: float = GRACE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.nc, self.js = nc, js
        self.queue_limit = settings.gpu_queue_limit
        self.refresh_s, self.grace_s, self.clock = refresh_s, grace_s, clock
        self._looks: dict[str, Look] = {}
        self._refreshing: dict[str, asyncio.Task[Look]] = {}

    async def tier_for(self, kind: str) -> str:
        look = await self._look(kind)
        live = self.clock() - look.gpu_seen_at <= self.grace_s
        return "gpu" if live and look.gpu_pending < self.queue_limit else "cpu"

    async def gpu_live(self, kind: str) -> bool:
        look = await self._look(kind)
        return self.clock() - look.gpu_seen_at <= self.grace_s

    async def _look(self, kind: str) -> Look:
        look = self._looks.get(kind)
        task = self._refreshing.get(kind)
        if look is not None and self.clock() - look.at < self.refresh_s:
            return look
        if task is None or task.done():
            task = self._refreshing[kind] = asyncio.create_task(self._refresh(kind))
        if look is not None:
            return look  # stale-while-revalidate
        return await asyncio.shield(task)  # one caller cancelled cancels no one else's look

    async def close(self) -> None:
        """Stop any look still under way."""
        tasks = list(self._refreshing.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _refresh(self, kind: str) -> Look:
        before = self._looks.get(kind)
        seen_at = before.gpu_seen_at if before else -float("inf")
        pending = 0
        try:
            # return_exceptions: a failing half must not leave the other running unawaited.
            # The gather is awaited here, not through wait_for: cancelled (the deadline, or
            # close()), its outcome is still read, and asyncio logs no "never retrieved".
            async with asyncio.timeout(1.0):
                looked = await asyncio.gather(
                    live_tiers(self.nc, kind),
                    self.js.consumer_info(definitions.WORK, f"{kind}-gpu"),
                    return_exceptions=True,
                )
            tiers, info = looked
            if isinstance(tiers, BaseException):
                raise tiers
            if isinstance(info, BaseException):
                raise info
            if "gpu" in tiers:
                seen_at = self.clock()
            pending = int(info.num_pending or 0)
        except (NatsError, TimeoutError) as exc:  # reconnecting, no consumer: keep what we knew
            log.debug("routing look for %s failed: %r", kind, exc)
        look = Look(self.clock(), seen_at, pending)
        self._looks[kind] = look
        return look


async def rescue_stranded(
    js: JetStreamContext,
    router: TierRouter,
    settings: Settings,
    kind: str,
    stop: asyncio.Event,
    every_s: float = 1.0,
) -> None:
    """While no gpu worker of ``kind`` lives, move its queued gpu work (confirmed and
    speculative) to the cpu tier.

    The copy gets a new message id (``<id>.cpu``): the original id is still inside
    the dedup window and the copy would be dropped. The original is acked after.
    """
    cpu = Subjects(settings.prefix).work(kind, "cpu")
    subs = [
        (await js.pull_subscribe_bind(durable, stream=definitions.WORK), subject)
        for durable, subject in (
            (f"{kind}-gpu", cpu),
            (f"{kind}-gpu-spec", Subjects(settings.prefix).speculative(cpu)),
        )
    ]
    try:
        while not stop.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), every_s)
            if stop.is_set() or await router.gpu_live(kind):
                continue
            for sub, subject in subs:
                with contextlib.suppress(NatsError, TimeoutError):  # nothing waiting
                    for raw in await sub.fetch(16, timeout=0.2):
                        headers = dict(raw.headers or {})
                        headers[MSG_ID] = (
                            headers.get(MSG_ID, str(raw.metadata.sequence.stream)) + ".cpu"
                        )
                        await js.publish(subject, raw.data, headers=headers)
                        await raw.ack()
                        log.warning("moved stranded %s work from gpu to cpu", kind)
    finally:
        for sub, _ in subs:
            with contextlib.suppress(NatsError, TimeoutError):
                await sub.unsubscribe()
