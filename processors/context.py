"""What a handler gets: its models, where to publish, and what was cancelled.

``Context`` is the protocol a handler sees; ``BusContext`` is the runtime's, over
NATS; ``processors.harness.MemoryContext`` keeps everything in memory for unit tests.
A handler publishes only what its kind declares (``Spec.publishes``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from processors.speculation import Hold, Speculations, remember
from schemas import AudioChunk, Cancel, Message, MorganError, SessionEnd, Subjects
from schemas.codec import SPECULATIVE_HEADER, USER_HEADER, WORKER_HEADER
from streams import bus, definitions
from streams.routes import Routes
from streams.settings import Settings


class KvStore(Protocol):
    """The part of a NATS KV bucket a handler may use."""

    async def get(self, key: str) -> Any: ...

    async def update(self, key: str, value: bytes, last: int | None = None) -> int: ...

    async def put(self, key: str, value: bytes) -> int: ...


class Router(Protocol):
    async def tier_for(self, kind: str) -> str: ...


class Context(Protocol):
    settings: Settings
    """Settings when the message arrived (live config applies from the next message)."""
    state: Any
    """What the kind's loader returned (its models)."""
    tier: str | None
    """The tier the message came from (tiered work), else None."""

    def current_settings(self) -> Settings:
        """Settings as they are now: for long handlers (a session held for minutes)."""
        ...

    @property
    def user(self) -> str:
        """The user the message's session belongs to ("" when no gateway said)."""
        ...

    @property
    def sent_by(self) -> str:
        """The worker that published the message (``Morgan-Worker``; "" if not said)."""
        ...

    @property
    def sent_at(self) -> float:
        """When the message was stored in its stream, Unix seconds (a redelivery keeps
        the first time)."""
        ...

    def cancelled(self, sid: str, turn: str) -> bool:
        """The turn was cancelled (barge-in, the client), or this message's speculation
        was abandoned: stop working on it."""
        ...

    async def settled(self) -> bool:
        """For a speculative turn's message, wait for the VAD's verdict: True when the
        turn is confirmed, False when abandoned (keep no state of it). True at once for
        any other message."""
        ...

    def speculative(self, attempt: str) -> Context:
        """This context with what it forwards marked as speculation ``attempt`` (the
        VAD's utterance at a pause: processors.speculation)."""
        ...

    def session_ended(self, sid: str) -> bool: ...

    @property
    def draining(self) -> bool:
        """The worker is stopping: take nothing new, hand long work over."""
        ...

    async def emit(
        self, event: Message, *, msg_id: str, trace: dict[str, str] | None = None
    ) -> None:
        """Publish a client-visible event to ``<prefix>.events.<sid>.<type>``."""

    async def forward(
        self, work: Message, *, msg_id: str, trace: dict[str, str] | None = None
    ) -> None:
        """Send work to the kind the route table names for it (and a tier, if tiered).
        ``trace`` replaces the message's trace headers (a new turn's root)."""

    async def send_audio(self, chunk: AudioChunk, *, msg_id: str) -> None:
        """Publish reply audio to ``<prefix>.audio.out.<sid>``."""

    async def control(self, msg: Message) -> None:
        """Publish a control message (cancel) to ``<prefix>.control.<sid>``, core NATS."""

    async def key_value(self, bucket: str) -> KvStore:
        """One of the KV buckets declared in ``streams.definitions`` (KeyError if not)."""
        ...

    async def ask(self, kind: str, endpoint: str, body: bytes, timeout: float) -> bytes:
        """Ask another kind's endpoint (``Spec.endpoints``) and wait for its answer;
        ``Unavailable`` when none comes in ``timeout`` seconds."""
        ...


@dataclass
class Signals:
    """Control messages this worker has seen, shared by all its handlers."""

    cancelled: OrderedDict[tuple[str, str], None] = field(default_factory=OrderedDict)
    ended: OrderedDict[str, None] = field(default_factory=OrderedDict)
    draining: asyncio.Event = field(default_factory=asyncio.Event)
    speculations: Speculations | None = None
    """Speculative turns' verdicts and holds (the runtime's; None: no speculation)."""

    def note(self, msg: Message) -> None:
        if self.speculations is not None:
            self.speculations.note(msg)
        if isinstance(msg, Cancel):
            remember(self.cancelled, (msg.sid, msg.turn))
        elif isinstance(msg, SessionEnd):
            remember(self.ended, msg.sid)


@dataclass(frozen=True)
class Onward:
    """Where a kind's work goes next: the route table, which kinds are tiered, and the
    router that picks a tier."""

    routes: Routes
    tiered: Callable[[str], bool]
    """Whether a kind's work is tiered (processors.registry)."""
    router: Router | None = None
    """None sends tiered work to cpu."""

    async def subject(self, subjects: Subjects, sender: str, message_type: str) -> str:
        kind = self.routes.next_kind(sender, message_type)
        if not self.tiered(kind):
            return subjects.work(kind)
        tier = "cpu" if self.router is None else await self.router.tier_for(kind)
        return subjects.work(kind, tier)


def undeclared(kind: str, msg: Message) -> MorganError:
    return MorganError(
        f"kind {kind} publishes {msg.TYPE!r} without declaring it in its Spec",
        retryable=False,
        code="undeclared",
    )


@dataclass
class BusContext:
    """A handler's context in the runtime: one per message."""

    kind: str
    publishes: tuple[type[Message], ...]
    settings: Settings
    nc: Client
    js: JetStreamContext
    state: Any
    tier: str | None
    signals: Signals
    onward: Onward
    raw: Msg | None = None
    """The JetStream message being handled (None in direct calls)."""
    trace: dict[str, str] = field(default_factory=dict)
    """Headers to carry on (``traceparent``): one trace per turn across hosts."""
    carried: dict[str, str] = field(default_factory=dict)
    """Headers on everything published, whatever ``trace`` a call passes: the session's
    user (``Morgan-User``) and this worker (``Morgan-Worker``)."""
    live: Callable[[], Settings] | None = None
    """The worker's settings now (live config); ``settings`` is the message-start snapshot."""
    hold: Hold | None = None
    """Where client-facing output waits while the message's turn is speculative."""
    speculating: str = ""
    """The speculation what this context forwards belongs to ("" = a confirmed turn)."""

    def current_settings(self) -> Settings:
        return self.settings if self.live is None else self.live()

    @property
    def user(self) -> str:
        return self.carried.get(USER_HEADER, "")

    @property
    def sent_by(self) -> str:
        return str(((self.raw.headers if self.raw else None) or {}).get(WORKER_HEADER, ""))

    @property
    def sent_at(self) -> float:
        if self.raw is None:
            return time.time()
        return float(self.raw.metadata.timestamp.timestamp())

    def _headers(self, trace: dict[str, str] | None = None) -> dict[str, str]:
        return (trace or self.trace) | self.carried

    @property
    def subjects(self) -> Subjects:
        return Subjects(self.settings.prefix)

    def cancelled(self, sid: str, turn: str) -> bool:
        return (sid, turn) in self.signals.cancelled or (
            self.hold is not None and self.hold.dropped
        )

    async def settled(self) -> bool:
        if self.hold is None or self.signals.speculations is None:
            return True
        return await self.signals.speculations.settle(self.hold)

    async def flushed(self) -> None:
        """Wait until what the hold keeps is published or dropped (at once without one);
        raises what publishing it raised."""
        if self.hold is not None and self.signals.speculations is not None:
            await self.signals.speculations.finish(self.hold)

    def speculative(self, attempt: str) -> BusContext:
        carried = self.carried | {SPECULATIVE_HEADER: attempt}
        return dataclasses.replace(self, speculating=attempt, carried=carried)

    def session_ended(self, sid: str) -> bool:
        return sid in self.signals.ended

    @property
    def draining(self) -> bool:
        return self.signals.draining.is_set()

    def _declared(self, msg: Message) -> None:
        if not isinstance(msg, self.publishes):
            raise undeclared(self.kind, msg)

    async def to_client(self, publish: Callable[[], Awaitable[object]]) -> None:
        """Publish now, or when the speculative turn is confirmed (never if abandoned)."""
        if self.hold is None:
            await publish()
        else:
            await self.hold.send(publish)

    async def emit(
        self, event: Message, *, msg_id: str, trace: dict[str, str] | None = None
    ) -> None:
        self._declared(event)
        sid = getattr(event, "sid")  # noqa: B009 - every event has a sid
        subject = self.subjects.events(sid, event.TYPE)
        headers = self._headers(trace)
        await self.to_client(
            lambda: bus.publish(self.js, subject, event, msg_id=msg_id, headers=headers)
        )

    async def forward(
        self, work: Message, *, msg_id: str, trace: dict[str, str] | None = None
    ) -> None:
        self._declared(work)
        subject = await self.onward.subject(self.subjects, self.kind, work.TYPE)
        if self.speculating:  # its own queue, and its own id: each attempt is new work
            subject, msg_id = self.subjects.speculative(subject), f"{msg_id}~{self.speculating}"
        await bus.publish(self.js, subject, work, msg_id=msg_id, headers=self._headers(trace))

    async def send_audio(self, chunk: AudioChunk, *, msg_id: str) -> None:
        self._declared(chunk)
        subject = self.subjects.audio_out(chunk.sid)
        headers = self._headers()
        await self.to_client(
            lambda: bus.publish(self.js, subject, chunk, msg_id=msg_id, headers=headers)
        )

    async def control(self, msg: Message) -> None:
        self._declared(msg)
        sid = getattr(msg, "sid")  # noqa: B009
        await bus.publish_core(self.nc, self.subjects.control(sid), msg, headers=self._headers())

    async def key_value(self, bucket: str) -> KeyValue:
        return await definitions.key_value(self.js, self.settings, bucket)

    async def ask(self, kind: str, endpoint: str, body: bytes, timeout: float) -> bytes:
        return await bus.ask(self.nc, self.settings.prefix, kind, endpoint, body, timeout)
