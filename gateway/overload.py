"""Overload protection: watch the WORK queue and refuse new work when it is deep.

A background task lists the WORK stream's consumers every ``POLL_S`` seconds (one
request) and reads each one's ``num_pending``; which consumers hold work and which hold
session claims, their metadata says (``morgan.input``, from each kind's declaration),
so kinds added later are watched too. The depth is the largest pending work. Past
``settings.max_queue_depth`` the gateway answers new sessions and POST /api/text with
503 + Retry-After.

Session claims are watched apart: a worker with a free slot takes a claim at once, so
claims that stay pending for ``settings.vad_claim_wait_s`` mean every worker of the
claim kind is full (or none runs; before one ever ran there is no consumer, and the
claims stored on its subject count). New WebSocket sessions then get 503 too, instead
of a session that nobody listens to.
"""

from __future__ import annotations

import asyncio
import logging
import time

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import ConsumerInfo

from gateway.metrics import Metrics
from schemas import SessionClaim, Subjects
from streams import definitions
from streams.routes import Routes
from streams.settings import Settings

log = logging.getLogger("morgan.gateway.overload")
POLL_S = 1.0


class Load:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.depth = 0
        self.claims_waiting_since: float | None = None
        """When session claims were first seen pending, on a run of polls that all saw
        some (monotonic seconds); None when the last poll saw none."""

    @property
    def overloaded(self) -> bool:
        return self.depth > self.settings.max_queue_depth

    @property
    def vad_full(self) -> bool:
        """Whether session claims have waited too long for a worker with room."""
        since = self.claims_waiting_since
        return since is not None and time.monotonic() - since >= self.settings.vad_claim_wait_s

    async def poll_once(self, js: JetStreamContext) -> int:
        try:
            consumers = await js.consumers_info(definitions.WORK)
        except (NatsError, TimeoutError) as exc:  # NATS reconnecting: keep the last look
            log.debug("listing work consumers: %r", exc)
            return self.depth
        self.depth = max([0, *(_pending(c) for c in consumers if _feeds(c) == "work")])
        self.metrics.queue_depth.set(self.depth)
        subject = claim_subject(self.settings)
        claimers = [c for c in consumers if _feeds(c) == "claim" and _filter(c) == subject]
        if claimers:
            claims: int | None = sum(_pending(c) for c in claimers)
        else:
            claims = await _stored(js, subject)
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


def claim_subject(settings: Settings) -> str:
    """Where a new voice session's claim goes (the route table's ``session.claim``)."""
    kind = Routes.parse(settings.routes).next_kind("gateway", SessionClaim.TYPE)
    return Subjects(settings.prefix).work(kind)


def _feeds(info: ConsumerInfo) -> str:
    return (info.config.metadata or {}).get(definitions.INPUT, "")


def _filter(info: ConsumerInfo) -> str:
    return info.config.filter_subject or ""


def _pending(info: ConsumerInfo) -> int:
    return info.num_pending or 0


async def _stored(js: JetStreamContext, subject: str) -> int | None:
    """Messages the WORK stream holds on ``subject``; None when unknown."""
    try:
        info = await js.stream_info(definitions.WORK, subjects_filter=subject)
    except (NatsError, TimeoutError) as exc:
        log.debug("stream info %s: %r", subject, exc)
        return None
    return int((info.state.subjects or {}).get(subject, 0))
