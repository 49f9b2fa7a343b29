"""Overload protection: watch the WORK queue and refuse new work when it is deep.

A background task asks JetStream every ``POLL_S`` seconds for each shared work
consumer's ``num_pending`` (the VAD's session claims are not work and are
skipped); the depth is the largest. Past ``settings.max_queue_depth`` the
gateway answers new sessions and POST /api/text with 503 + Retry-After.
"""

from __future__ import annotations

import asyncio
import logging

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

    @property
    def overloaded(self) -> bool:
        return self.depth > self.settings.max_queue_depth

    async def poll_once(self, js: JetStreamContext) -> int:
        depths = [0]
        for durable in self.durables:
            try:
                info = await js.consumer_info(definitions.WORK, durable, timeout=2.0)
            except Exception as exc:  # not yet created, or NATS reconnecting
                log.debug("consumer_info %s: %s", durable, exc)
                continue
            depths.append(info.num_pending or 0)
        self.depth = max(depths)
        self.metrics.queue_depth.set(self.depth)
        return self.depth

    async def run(self, js: JetStreamContext) -> None:
        """Poll until cancelled."""
        while True:
            await self.poll_once(js)
            await asyncio.sleep(POLL_S)
