"""Which tier gets a kind's work: ``gpu`` while a live gpu worker keeps up, else ``cpu``.

The gpu tier is chosen when a gpu worker of the kind is live and the
``<kind>-gpu`` consumer has fewer than ``settings.gpu_queue_limit`` messages
waiting. Liveness is decided in one place, ``gpu_worker_seen``; for now it
reads the shared durable consumer (a worker with a pull request open), later
a service registry can answer instead. Consumer info is cached briefly so a
reply's sentences do not each cost a round trip.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo

from schemas.subjects import TIERED_KINDS
from streams import definitions
from streams.settings import Settings

log = logging.getLogger("morgan.routing")
CACHE_S = 0.5
"""How long one look at a gpu consumer is reused, seconds."""
LIVE_GRACE_S = 5.0
"""A gpu worker seen pulling this recently still counts as live, seconds (it may be busy)."""
TIMEOUT_S = 1.0
"""Longest wait for consumer info, seconds; on timeout work goes to cpu."""


async def gpu_consumer(js: JetStreamContext, kind: str) -> ConsumerInfo | None:
    """The ``<kind>-gpu`` consumer's state, or None when it cannot be read now."""
    try:
        return await asyncio.wait_for(js.consumer_info(definitions.WORK, f"{kind}-gpu"), TIMEOUT_S)
    except Exception as exc:  # missing consumer, timeout, reconnecting: no gpu for now
        log.debug("no %s-gpu consumer info: %r", kind, exc)
        return None


def gpu_worker_seen(info: ConsumerInfo) -> bool:
    """Whether a gpu worker is pulling right now: the one liveness source to swap later."""
    return (info.num_waiting or 0) > 0


class TierRouter:
    def __init__(
        self,
        js: JetStreamContext,
        settings: Settings,
        *,
        cache_s: float = CACHE_S,
        live_grace_s: float = LIVE_GRACE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.js = js
        self.queue_limit = settings.gpu_queue_limit
        self.cache_s = cache_s
        self.live_grace_s = live_grace_s
        self.clock = clock
        self._looked: dict[str, tuple[float, ConsumerInfo | None]] = {}
        self._last_seen: dict[str, float] = {}

    async def tier_for(self, kind: str) -> str:
        if kind not in TIERED_KINDS:
            raise ValueError(f"{kind} work has no tiers")
        info = await self._look(kind)
        now = self.clock()
        if info is not None and gpu_worker_seen(info):
            self._last_seen[kind] = now
        live = now - self._last_seen.get(kind, -float("inf")) <= self.live_grace_s
        if info is None or not live or (info.num_pending or 0) >= self.queue_limit:
            return "cpu"
        return "gpu"

    async def _look(self, kind: str) -> ConsumerInfo | None:
        looked = self._looked.get(kind)
        if looked is not None and self.clock() - looked[0] < self.cache_s:
            return looked[1]
        info = await gpu_consumer(self.js, kind)
        self._looked[kind] = (self.clock(), info)
        return info
