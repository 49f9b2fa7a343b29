"""Overload protection: watch the WORK queue and refuse new work when it is deep.

A background task asks JetStream every ``POLL_S`` seconds for each shared work
consumer's ``num_pending`` (the VAD's session claims are not work and are
skipped); the depth is the largest. Past ``settings.max_queue_depth`` the
gateway answers new sessions and POST /api/text with 503 + Retry-After.

Session claims are watched apart: a VAD worker with a free slot takes a claim at
once, so claims that stay pending for ``settings.vad_claim_wait_s`` mean every
VAD worker is full (or none runs). New WebSocket sessions then get 503 too,
instead of a session that nobody listens to.
"""

from __future__ import annotations

import asyncio
import logging
import time

from nats.js import JetStreamContext

from gateway.metrics import Metrics
from streams import definitions
from streams.settings import Settings

log = logging.getLogger("morgan.gateway.overload")
POLL_S = 1.0


class Load:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.depth = 0
        self.durables = [c.durable for c in definitions.work_consumers() if c.kind != "vad"]
        self.claims_waiting_since: float | None = None
        """When the VAD's claims were first seen pending, on a run of polls that all saw
        some (monotonic seconds); None when the last poll saw none."""

    @property
    def overloaded(self) -> bool:
        return self.depth > self.settings.max_queue_depth

    @property
    def vad_full(self) -> bool:
        """Whether session claims have waited too long for a VAD worker with room."""
        since = self.claims_waiting_since
        return since is not None and time.monotonic() - since >= self.settings.vad_claim_wait_s

    async def poll_once(self, js: JetStreamContext) -> int:
        depths = [0]
        for durable in self.durables:
            pending = await _pending(js, durable)
            if pending is not None:
                depths.append(pending)
        self.depth = max(depths)
        self.metrics.queue_depth.set(self.depth)
        claims = await _pending(js, "vad")
        if claims == 0:
            self.claims_waiting_since = None
        elif claims is not None and self.claims_waiting_since is None:
            self.claims_waiting_since = time.monotonic()
        return self.depth

    async def run(self, js: JetStreamContext) -> None:
        """Poll until cancelled."""
        while True:
            await self.poll_once(js)
            await asyncio.sleep(POLL_S)


async def _pending(js: JetStreamContext, durable: str) -> int | None:
    """Messages not yet delivered to the work consumer ``durable``; None when unknown."""
    try:
        info = await js.consumer_info(definitions.WORK, durable, timeout=2.0)
    except Exception as exc:  # not yet created, or NATS reconnecting
        log.debug("consumer_info %s: %s", durable, exc)
        return None
    return info.num_pending or 0
