"""The one loop every processor runs, whatever its kind.

connect -> declare streams and the kind's consumers -> load models -> pull -> decode
-> handle -> ack. A retryable failure naks with backoff, anything else terms and tells
the session with an ``error`` event. While a message is handled it is heartbeated
(in_progress every third of the kind's ack wait), so only a dead worker's message goes
to another worker, within one ack wait. A session-claim kind's messages are held by
``processors.claims`` for as long as their sessions live. On stop: take no more,
finish what is in hand, hand claims over, unload, drain the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import platform
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from nats.micro.request import Request

from processors import claims, metrics, registry
from processors.announce import announced
from processors.context import BusContext, Onward, Router, Signals
from processors.routing import TierRouter, rescue_stranded
from processors.spec import SPECULATIVE, SessionClaims, Spec
from processors.speculation import Hold, Speculations, Verdict
from schemas import (
    ErrorEvent,
    Handoff,
    MessageError,
    MorganError,
    Release,
    SessionClaim,
    SpeechStopped,
    Subjects,
    Superseded,
    decode,
)
from schemas.codec import (
    SESSION_HEADER,
    SPECULATIVE_HEADER,
    TURN_HEADER,
    USER_HEADER,
    WORKER_HEADER,
)
from streams import bus, definitions, logs, tracing
from streams.config_source import ConfigSource
from streams.definitions import Consumer
from streams.log_limit import LogLimit
from streams.routes import Routes
from streams.settings import Settings

log = logging.getLogger("morgan.runtime")
DRAIN_S = 30.0
"""How long a stopping worker lets the work in hand finish, seconds."""
FETCH_ERRORS = (TimeoutError, NatsError)
"""What a pull may raise while idle or reconnecting: ask again."""
PULL_ERRORS = LogLimit(log, every_s=60.0)
SPECULATION_GRACE_S = 0.02
"""How long an idle worker leaves its confirmed consumers first before pulling
speculative work, seconds."""


@contextlib.asynccontextmanager
async def _bound(
    js: JetStreamContext, consumer: Consumer
) -> AsyncIterator[JetStreamContext.PullSubscription]:
    """A pull subscription on ``consumer``, unsubscribed after."""
    sub = await js.pull_subscribe_bind(consumer.durable, stream=consumer.stream)
    try:
        yield sub
    finally:
        # fetch() never marks its queue done, so nc.drain() would wait out its timeout.
        with contextlib.suppress(NatsError, TimeoutError):
            await sub.unsubscribe()


async def _fetch(sub: JetStreamContext.PullSubscription, durable: str) -> Msg | None:
    """The next message, or None: nothing waiting, reconnecting, or a bug (said,
    rate-limited, after which the caller asks again)."""
    try:
        msgs = await sub.fetch(1, timeout=1.0)
    except FETCH_ERRORS:  # nothing waiting, or reconnecting: just ask again
        return None
    except Exception:  # a bug: said (rate-limited), and the loop goes on
        PULL_ERRORS.exception(durable, "pulling %s failed", durable)
        await asyncio.sleep(1.0)
        return None
    return msgs[0]


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
    sessions: int = 0
    """Sessions held now (a claim kind)."""
    router: Router | None = None
    working: int = 0
    """Confirmed turns' messages in hand; speculative work is pulled only at 0."""
    idle: asyncio.Event = field(default_factory=asyncio.Event)

    async def serve(self, stop: asyncio.Event, ready: asyncio.Event | None = None) -> None:
        kind = self.spec.kind
        tracing.setup(self.settings, f"morgan-{kind}")
        if self.settings.metrics_port:
            metrics.serve(self.settings.metrics_port)
        nc = await bus.connect(self.settings, f"morgan-{kind}-{platform.node()}")
        pullers: list[asyncio.Task[None]] = []
        stack = contextlib.AsyncExitStack()
        try:
            js = nc.jetstream()
            # Live config first: what the store says about models applies to the load.
            config = await stack.enter_async_context(ConfigSource(self.settings, kind, nc=nc))
            self.settings = config.current
            config.subscribe(self._reconfigure)
            started = time.perf_counter()
            self.state = await self.spec.load(self.settings, self.tiers)
            metrics.model_loaded(kind, time.perf_counter() - started)
            consumers = self.spec.consumers(self.settings, self.tiers)
            metrics.declare(kind, [tier for tier, _ in consumers])
            await definitions.apply(
                js,
                self.settings,
                [c for _, c in consumers],
                update=bus.may_configure(self.settings),
            )
            if self.router is None:
                self.router = TierRouter(nc, js, self.settings)
            self.signals.speculations = Speculations(
                kind, lambda msg: self._release(nc, msg), lambda *key: self._verdict(js, *key)
            )
            self.idle.set()
            await nc.subscribe(self.settings.prefix + ".control.*", cb=self._on_control)
            await nc.flush()  # the server has the subscription before the worker says ready
            await stack.enter_async_context(
                announced(nc, self.spec, self.settings, self.tiers, self.state, self._status)
            )
            slots = asyncio.Semaphore(self.spec.concurrency)
            pullers = [
                asyncio.create_task(
                    self._pull_speculative(nc, js, consumer, tier, stop)
                    if consumer.feeds == SPECULATIVE
                    else self._pull(nc, js, consumer, tier, slots, stop)
                )
                for tier, consumer in consumers
            ]
            if self.spec.tiered and "gpu" not in self.tiers and isinstance(self.router, TierRouter):
                rescue = rescue_stranded(js, self.router, self.settings, kind, stop)
                pullers.append(asyncio.create_task(rescue))
            log.info("%s ready on %s", kind, ", ".join(c.durable for _, c in consumers))
            if ready is not None:
                ready.set()
            await stop.wait()
            self.signals.draining.set()
            await asyncio.gather(*pullers, return_exceptions=True)
            if self.in_flight:
                await asyncio.wait(self.in_flight, timeout=DRAIN_S)
        finally:
            await stack.aclose()
            if isinstance(self.router, TierRouter):
                await self.router.close()
            # Cancelled (or failed): stop pulling and drop unfinished work; it is redelivered.
            for task in [*pullers, *self.in_flight]:
                task.cancel()
            await asyncio.gather(*pullers, *self.in_flight, return_exceptions=True)
            if self.spec.unload is not None and self.state is not None:
                await self.spec.unload(self.state)
            with contextlib.suppress(NatsError, TimeoutError):
                await asyncio.wait_for(nc.drain(), 5)

    def _reconfigure(self, settings: Settings) -> None:
        """Live config: each message from now on is handled with these settings."""
        log.info("%s: configuration changed", self.spec.kind)
        self.settings = settings
        if isinstance(self.router, TierRouter):
            self.router.queue_limit = settings.gpu_queue_limit

    async def _on_control(self, raw: Msg) -> None:
        try:
            message = decode(raw.headers, raw.data)
        except MessageError as exc:
            log.debug("%s: unreadable control message: %s", self.spec.kind, exc)
            return
        self.signals.note(message)
        if self.spec.on_control is not None and self.state is not None:
            self.spec.on_control(message, self.state)

    async def _status(self, req: Request) -> None:
        await req.respond(
            json.dumps(
                {
                    "kind": self.spec.kind,
                    "input": self.spec.feeds,
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
        consumer: Consumer,
        tier: str | None,
        slots: asyncio.Semaphore,
        stop: asyncio.Event,
    ) -> None:
        async with _bound(js, consumer) as sub:
            while not stop.is_set():
                await slots.acquire()
                raw = await _fetch(sub, consumer.durable)
                if raw is None:
                    slots.release()
                    if nc.is_closed:  # fetch then fails at once, without yielding: do not spin
                        return
                    continue
                self._start(nc, js, raw, tier).add_done_callback(lambda _: slots.release())

    async def _pull_speculative(
        self,
        nc: Client,
        js: JetStreamContext,
        consumer: Consumer,
        tier: str | None,
        stop: asyncio.Event,
    ) -> None:
        """Speculative turns' work, one message at a time, only while no confirmed work is
        in hand: a busy worker leaves it to idle ones (its slots are not used)."""
        async with _bound(js, consumer) as sub:
            while not stop.is_set():
                await self.idle.wait()
                await asyncio.sleep(SPECULATION_GRACE_S)  # confirmed work waiting goes first
                if not self.idle.is_set():
                    continue
                raw = await _fetch(sub, consumer.durable)
                if raw is None:
                    if nc.is_closed:
                        return
                    continue
                await asyncio.wait([self._start(nc, js, raw, tier)])

    def _start(
        self, nc: Client, js: JetStreamContext, raw: Msg, tier: str | None
    ) -> asyncio.Task[None]:
        """Handle ``raw`` in a task of its own, counted in ``in_flight`` until it ends."""
        task = asyncio.create_task(self._handle(nc, js, raw, tier))
        self.in_flight.add(task)
        task.add_done_callback(self.in_flight.discard)
        return task

    async def _release(self, nc: Client, msg: Release) -> None:
        """Tell every worker this one let a speculative turn's output out."""
        subject = Subjects(self.settings.prefix).control(msg.sid)
        with contextlib.suppress(NatsError, TimeoutError):
            await bus.publish_core(nc, subject, msg)

    async def _verdict(self, js: JetStreamContext, sid: str, turn: str, attempt: str) -> Verdict:
        """What EVENTS says of a speculation (for a worker that missed the VAD's word): the
        session's last ``vad.speech_stopped`` names the attempt that ended its turn."""
        subject = Subjects(self.settings.prefix).events(sid, SpeechStopped.TYPE)
        try:
            stored = await js.get_last_msg(definitions.EVENTS, subject, direct=True)
        except (NotFoundError, NatsError, TimeoutError):
            return "unknown"
        headers = stored.headers or {}
        if headers.get(TURN_HEADER) != turn:
            return "unknown"
        return "confirmed" if headers.get(SPECULATIVE_HEADER) == attempt else "abandoned"

    def _context(self, nc: Client, js: JetStreamContext, raw: Msg, tier: str | None) -> BusContext:
        onward = Onward(Routes.parse(self.settings.routes), registry.is_tiered, self.router)
        headers = raw.headers or {}
        attempt = headers.get(SPECULATIVE_HEADER, "")
        hold: Hold | None = None
        if attempt and self.spec.feeds == "work" and self.signals.speculations is not None:
            key = (headers.get(SESSION_HEADER, ""), headers.get(TURN_HEADER, ""), attempt)
            upstream = headers.get(WORKER_HEADER, "").partition("@")[0]
            hold = self.signals.speculations.hold(key, upstream)
        ctx = BusContext(
            kind=self.spec.kind,
            publishes=self.spec.publishes,
            settings=self.settings,
            nc=nc,
            js=js,
            state=self.state,
            tier=tier,
            signals=self.signals,
            onward=onward,
            raw=raw,
            carried=self._carried(raw),
            live=lambda: self.settings,
            hold=hold,
        )
        return ctx if hold is None else ctx.speculative(attempt)  # its onward work is marked

    def _carried(self, raw: Msg) -> dict[str, str]:
        user = (raw.headers or {}).get(USER_HEADER)
        worker = {WORKER_HEADER: f"{self.spec.kind}@{platform.node()}:{os.getpid()}"}
        return worker | ({USER_HEADER: user} if user else {})

    async def _handle(self, nc: Client, js: JetStreamContext, raw: Msg, tier: str | None) -> None:
        kind = self.spec.kind
        ctx = self._context(nc, js, raw, tier)
        delivered = raw.metadata.num_delivered
        metrics.fetched(kind, tier, raw.metadata.timestamp, delivered)
        heartbeat = asyncio.create_task(self._heartbeat(raw))
        started = time.perf_counter()
        outcome = "ok"
        headers = raw.headers or {}
        sid, turn = headers.get(SESSION_HEADER, ""), headers.get(TURN_HEADER, "")
        ids = {"morgan.session": sid, "morgan.turn": turn}
        confirmed = ctx.hold is None and self.spec.feeds == "work"
        if confirmed:
            self.working += 1
            self.idle.clear()
        try:
            if ctx.hold is not None and ctx.hold.dropped:
                await raw.ack()  # its speculation was abandoned before it started
                return
            with (
                metrics.in_flight(kind),
                tracing.span(f"{kind}.handle", raw.headers, **ids) as span,
                logs.bind(session=sid or None, turn=turn or None, trace_id=tracing.trace_id(span)),
            ):
                ctx.trace = tracing.headers_of(span)
                message = decode(raw.headers, raw.data)
                if not isinstance(message, self.spec.accepts):
                    raise MessageError(f"{kind} does not take {message.TYPE!r}")
                if isinstance(self.spec.input, SessionClaims):
                    assert isinstance(message, SessionClaim)
                    await self._hold(message, ctx)
                else:
                    assert self.spec.handle is not None
                    await self.spec.handle(message, ctx)
                    await ctx.flushed()
        except MorganError as error:
            outcome = await self._fail(ctx, raw, error, delivered)
        except Exception as exc:  # a bug in a handler: logged with its traceback, retried
            log.exception("%s: unexpected error in handler", kind, exc_info=exc)
            bug = MorganError(f"{type(exc).__name__}: {exc}", retryable=True)
            outcome = await self._fail(ctx, raw, bug, delivered)
        else:
            await raw.ack()
            self.handled += 1
        finally:
            heartbeat.cancel()
            seconds = time.perf_counter() - started
            if self.spec.feeds != "claim":  # a claim is held for its session's whole life
                metrics.handled(kind, tier, outcome, seconds)
            if ctx.hold is not None and self.signals.speculations is not None:
                self.signals.speculations.forget(ctx.hold)
                metrics.speculated(kind, "wasted" if ctx.hold.dropped else "used", seconds)
            if confirmed:
                self.working -= 1
                if not self.working:
                    self.idle.set()

    async def _hold(self, claim: SessionClaim, ctx: BusContext) -> None:
        """Own the claim's session until it ends (counted in ``sessions held``)."""
        self.sessions += 1
        metrics.sessions_held(self.spec.kind, self.sessions)
        try:
            await claims.hold(self.spec, claim, ctx)
        finally:
            self.sessions -= 1
            metrics.sessions_held(self.spec.kind, self.sessions)

    async def _fail(self, ctx: BusContext, raw: Msg, error: MorganError, delivered: int) -> str:
        """Nak, term or leave the message as ``error`` says; returns the outcome's name."""
        kind = self.spec.kind
        if isinstance(error, Handoff):
            await raw.nak()
            return "handoff"
        if isinstance(error, Superseded):
            log.warning("%s: %s", kind, error)
            if error.obsolete:
                await raw.ack()
            return "superseded"
        if ctx.hold is not None and ctx.hold.dropped:
            await raw.ack()  # an abandoned speculation: whatever failed, nobody waits for it
            return "ok"
        metrics.error(kind, error.code)
        limit = self.spec.deliveries(self.settings)
        if error.retryable and (limit < 0 or delivered < limit):
            log.warning("%s: retry %d after %s", kind, delivered, error)
            await raw.nak(delay=backoff(delivered))
            return "retry"
        log.error("%s: giving up on message: %s", kind, error)
        self.failed += 1
        await raw.term()
        sid = (raw.headers or {}).get(SESSION_HEADER, "")
        if sid and self.spec.feeds != "tap":  # a tap's failure is not the client's doing
            event = ErrorEvent(
                sid=sid,
                code=error.code,
                message=str(error),
                turn=(raw.headers or {}).get(TURN_HEADER, ""),
                retryable=error.retryable,
            )
            subject = Subjects(self.settings.prefix).events(sid, event.TYPE)
            msg_id = f"error.{raw.metadata.sequence.stream}"
            try:
                await ctx.to_client(
                    lambda: bus.publish(ctx.js, subject, event, msg_id=msg_id, headers=ctx.trace)
                )
                await ctx.flushed()
            except (NatsError, TimeoutError) as exc:
                log.warning("%s: could not tell session %s: %r", kind, sid, exc)
        return "failed"

    async def _heartbeat(self, raw: Msg) -> None:
        every = self.spec.ack_wait(self.settings) / 3
        while True:
            await asyncio.sleep(every)
            with contextlib.suppress(NatsError, TimeoutError):
                await raw.in_progress()
