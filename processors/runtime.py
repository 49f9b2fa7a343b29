"""The one loop every processor runs.

connect -> declare streams -> load models -> pull from the kind's durable
consumer(s) -> decode -> handle -> ack. A retryable failure naks with backoff,
anything else terms and tells the session with an ``error`` event. Long work
heartbeats with in_progress. On stop: take no more, finish what is in hand,
hand claims over, drain the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import platform
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.micro.request import Request

from processors import metrics
from processors.announce import announced
from processors.context import Context, Router, Signals
from processors.routing import TierRouter, rescue_stranded
from processors.spec import Spec
from schemas import ErrorEvent, Handoff, MessageError, MorganError, Superseded, decode
from schemas.codec import SESSION_HEADER
from streams import bus, definitions, tracing
from streams.config_source import ConfigSource
from streams.settings import Settings

log = logging.getLogger("morgan.runtime")


def backoff(delivered: int) -> float:
    """Seconds before redelivering after the n-th failed delivery."""
    return float(min(0.25 * 2 ** (delivered - 1), 8.0))


@dataclass
class Worker:
    spec: Spec
    settings: Settings
    tiers: tuple[str, ...]
    state: Any = None
    signals: Signals = field(default_factory=Signals)
    in_flight: set[asyncio.Task[None]] = field(default_factory=set)
    handled: int = 0
    failed: int = 0
    router: Router | None = None

    def durables(self) -> list[str]:
        kind = self.spec.kind
        return [f"{kind}-{t}" for t in self.tiers] if self.spec.tiered else [kind]

    async def serve(self, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
        tracing.setup(self.settings, f"morgan-{self.spec.kind}")
        if self.settings.metrics_port:
            metrics.serve(self.settings.metrics_port)
        self.state = await self.spec.load(self.settings, self.tiers)
        nc = await bus.connect(self.settings, f"morgan-{self.spec.kind}-{platform.node()}")
        pullers: list[asyncio.Task[None]] = []
        stack = contextlib.AsyncExitStack()
        try:
            js = nc.jetstream()
            await definitions.apply(js, self.settings)
            if self.router is None:
                self.router = TierRouter(nc, js, self.settings)
            await nc.subscribe(self.settings.prefix + ".control.*", cb=self._on_control)
            config = ConfigSource(self.settings, self.spec.kind, nc=nc)
            self.settings = await config.start()
            config.subscribe(self._reconfigure)
            await stack.enter_async_context(config)
            await stack.enter_async_context(
                announced(nc, self.spec, self.settings, self.tiers, self.state, self._status)
            )
            slots = asyncio.Semaphore(self.spec.concurrency)
            pullers = [
                asyncio.create_task(self._pull(nc, js, durable, slots, stop))
                for durable in self.durables()
            ]
            if self.spec.tiered and "gpu" not in self.tiers and isinstance(self.router, TierRouter):
                rescue = rescue_stranded(js, self.router, self.settings, self.spec.kind, stop)
                pullers.append(asyncio.create_task(rescue))
            log.info("%s ready on %s", self.spec.kind, ", ".join(self.durables()))
            if ready is not None:
                ready.set()
            await stop.wait()
            self.signals.draining.set()
            await asyncio.gather(*pullers, return_exceptions=True)
            if self.in_flight:
                await asyncio.wait(self.in_flight, timeout=self.settings.work_ack_wait_s)
        finally:
            await stack.aclose()
            if isinstance(self.router, TierRouter):
                await self.router.close()
            # Cancelled (or failed): stop pulling and drop unfinished work; it is redelivered.
            for task in [*pullers, *self.in_flight]:
                task.cancel()
            await asyncio.gather(*pullers, *self.in_flight, return_exceptions=True)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.drain(), 5)

    def _reconfigure(self, settings: Settings) -> None:
        """Live config: each message from now on is handled with these settings."""
        log.info("%s: configuration changed", self.spec.kind)
        self.settings = settings

    async def _on_control(self, raw: Msg) -> None:
        with contextlib.suppress(MessageError):
            self.signals.note(decode(raw.headers, raw.data))

    async def _status(self, req: Request) -> None:
        await req.respond(
            json.dumps(
                {
                    "kind": self.spec.kind,
                    "tiers": list(self.tiers),
                    "model": self.spec.describe(self.state),
                    "in_flight": len(self.in_flight),
                    "handled": self.handled,
                    "failed": self.failed,
                }
            ).encode()
        )

    async def _pull(
        self,
        nc: Client,
        js: JetStreamContext,
        durable: str,
        slots: asyncio.Semaphore,
        stop: asyncio.Event,
    ) -> None:
        sub = await js.pull_subscribe_bind(durable, stream=definitions.WORK)
        try:
            while not stop.is_set():
                await slots.acquire()
                try:
                    msgs = await sub.fetch(1, timeout=1.0)
                except Exception:  # timeout, or reconnecting: just ask again
                    slots.release()
                    if nc.is_closed:  # fetch then fails at once, without yielding: do not spin
                        return
                    continue
                task = asyncio.create_task(self._handle(nc, js, msgs[0], durable))
                self.in_flight.add(task)
                task.add_done_callback(self.in_flight.discard)
                task.add_done_callback(lambda _: slots.release())
        finally:
            # fetch() never marks its queue done, so nc.drain() would wait out its timeout.
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _handle(self, nc: Client, js: JetStreamContext, raw: Msg, durable: str) -> None:
        tier = durable.split("-", 1)[1] if self.spec.tiered else None
        ctx = Context(
            self.settings,
            nc,
            js,
            self.state,
            tier,
            self.signals,
            raw,
            {},
            self.router,
            lambda: self.settings,
        )
        heartbeat = asyncio.create_task(self._heartbeat(raw))
        delivered = raw.metadata.num_delivered
        started = asyncio.get_running_loop().time()
        try:
            with tracing.span(f"{self.spec.kind}.handle", raw.headers) as span:
                ctx.trace = tracing.headers_of(span)
                message = decode(raw.headers, raw.data)
                if not isinstance(message, self.spec.accepts):
                    raise MessageError(f"{self.spec.kind} does not take {message.TYPE!r}")
                await self.spec.handle(message, ctx)
        except Exception as exc:
            error = exc if isinstance(exc, MorganError) else _unexpected(exc)
            await self._fail(ctx, raw, error, delivered)
        else:
            await raw.ack()
            self.handled += 1
            metrics.observe(self.spec.kind, "ok", asyncio.get_running_loop().time() - started)
        finally:
            heartbeat.cancel()

    async def _fail(self, ctx: Context, raw: Msg, error: MorganError, delivered: int) -> None:
        limit = self._max_deliver(ctx.tier)
        if isinstance(error, Handoff):
            await raw.nak()
            return
        if isinstance(error, Superseded):
            log.warning("%s: %s", self.spec.kind, error)
            if error.obsolete:
                await raw.ack()
            return
        if error.retryable and (limit < 0 or delivered < limit):
            log.warning("%s: retry %d after %s", self.spec.kind, delivered, error)
            await raw.nak(delay=backoff(delivered))
            metrics.observe(self.spec.kind, "retry", 0.0)
            return
        log.error("%s: giving up on message: %s", self.spec.kind, error)
        self.failed += 1
        metrics.observe(self.spec.kind, "failed", 0.0)
        await raw.term()
        sid = (raw.headers or {}).get(SESSION_HEADER, "")
        if sid:
            event = ErrorEvent(
                sid=sid,
                code=error.code,
                message=str(error),
                turn=(raw.headers or {}).get("Morgan-Turn", ""),
                retryable=error.retryable,
            )
            with contextlib.suppress(Exception):
                await ctx.emit(event, msg_id=f"error.{raw.metadata.sequence.stream}")

    def _max_deliver(self, tier: str | None) -> int:
        """Deliveries the consumer allows (-1: no limit; a VAD's session claim)."""
        consumer = definitions.WorkConsumer(self.spec.kind, tier).config(self.settings)
        return consumer.max_deliver if consumer.max_deliver is not None else -1

    async def _heartbeat(self, raw: Msg) -> None:
        while True:
            await asyncio.sleep(self._ack_wait() / 3)
            with contextlib.suppress(Exception):
                await raw.in_progress()

    def _ack_wait(self) -> float:
        s = self.settings
        return s.claim_ack_wait_s if self.spec.kind == "vad" else s.work_ack_wait_s


def _unexpected(exc: Exception) -> MorganError:
    log.exception("unexpected error in handler", exc_info=exc)
    return MorganError(f"{type(exc).__name__}: {exc}", retryable=True)
