"""A processor kind is one declaration: ``Spec``. The runtime does the rest.

A kind says where its input comes from (``WorkQueue``, ``SessionClaims`` or
``EventTap``), what it accepts and publishes, how long one message may go without a
heartbeat, how often it is retried, how many it handles at once, how its models are
loaded (and unloaded) and what handles a message. Everything else is derived from
the declarations: consumers and their durable names (``consumers``), the subjects a
kind may publish (``Context`` refuses others), ``morgan up``'s children, ``morgan run``'s
choices and ``morgan doctor``'s table (``processors.registry``).

A handler publishes through ``Context`` and returns normally to ack; it raises a
``MorganError`` whose ``retryable`` decides nak-with-backoff or term.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from nats.aio.msg import Msg

from schemas import Message, SessionClaim
from schemas.subjects import TIERS, Subjects
from streams import definitions
from streams.definitions import Consumer
from streams.settings import Settings

if TYPE_CHECKING:
    from processors.claims import Owner
    from processors.context import Context

Loader = Callable[[Settings, tuple[str, ...]], Awaitable[Any]]
"""(settings, tiers served) -> the kind's state (models), once per process."""
Unloader = Callable[[Any], Awaitable[None]]
Handler = Callable[[Message, "Context"], Awaitable[None]]


class SessionReader(Protocol):
    """What a session-claim kind does with the frames of a session it owns."""

    async def feed(self, frames: list[Msg]) -> bool:
        """Frames fetched from the session's audio (acked by the reader as it likes);
        whether any of them was audio not heard before (idle time restarts)."""
        ...


SessionOpener = Callable[[SessionClaim, "Context", "Owner"], Awaitable[SessionReader]]

Endpoint = Callable[[Any, bytes], Awaitable[bytes]]
"""(the kind's state, request body) -> reply body: a request the kind answers at
``<prefix>.svc.<kind>.<name>`` (one worker of the kind answers each; JSON by convention).
Raise ``MorganError`` to answer with an error (its code and message)."""
ControlHook = Callable[[Message, Any], None]
"""(control message, the kind's state): called for every control message the worker
sees (cancel, session end, forget), after the runtime noted it."""
"""(claim, context, the session's owner record) -> a reader of its frames."""


@dataclass(frozen=True)
class WorkQueue:
    """Messages on ``<prefix>.work.<kind>`` (``.gpu``/``.cpu`` when tiered), each taken
    by one worker of the kind: one durable consumer per tier that all its workers share."""

    tiered: bool = False


@dataclass(frozen=True)
class SessionClaims:
    """Session claims on ``<prefix>.work.<kind>``: a worker owns a session while it holds
    the claim, reads the session's microphone frames (``<prefix>.audio.in.<sid>``) through
    a consumer of its own and hands the session to another worker when it stops or dies
    (``processors.claims``). ``open`` makes the kind's reader for one session."""

    open: SessionOpener


@dataclass(frozen=True)
class EventTap:
    """Every event of the given types (``transcript``, ``reply.done``, ...) from every
    session, through a durable consumer of its own on EVENTS: each event reaches one
    worker of the kind, and every kind that taps it."""

    types: tuple[str, ...]
    from_start: bool = False
    """Read what EVENTS still holds when the consumer is first made, not only new events."""


Input = WorkQueue | SessionClaims | EventTap

SPECULATIVE = "speculative"
"""What feeds a work kind's second consumer per tier: work of speculative turns
(``<work subject>.spec``, processors.speculation), taken only by idle workers."""

SPEC_ACK_WAIT_S = 3.0
"""The shipped work kinds' ack wait: a worker heartbeats every third of it, so a dead
worker's message moves to another within about this long."""


@dataclass(frozen=True)
class Spec:
    kind: str
    """Names the durable consumer(s), the service ``morgan-<kind>`` and ``morgan run KIND``."""
    input: Input
    accepts: tuple[type[Message], ...]
    """Message types the handler takes; anything else is terminated as bad input."""
    publishes: tuple[type[Message], ...]
    """Message types the kind sends: events to ``events.<sid>.<type>``, work (through the
    route table), reply audio, control. ``Context`` refuses anything else."""
    load: Loader
    """Loads models once per process (may take seconds); its result is ``ctx.state``."""
    handle: Handler | None = None
    """Handles one message (work and tap kinds; a claim kind's work is its reader)."""
    unload: Unloader | None = None
    """Releases what ``load`` made, when the worker stops."""
    ack_wait_s: float = SPEC_ACK_WAIT_S
    """Seconds a message may go without a heartbeat before another worker gets it
    (overridden by ``MORGAN_WORK_ACK_WAIT_S``/``MORGAN_CLAIM_ACK_WAIT_S`` when set)."""
    max_deliver: int | None = None
    """Deliveries before a message is given up; None = ``settings.max_deliver``, -1 = never
    (a session claim lives as long as its session)."""
    concurrency: int = 1
    """Messages handled at once by one worker (a claim kind: sessions held)."""
    describe: Callable[[Any], str] = lambda state: ""
    """A short model description for the service registry."""
    endpoints: Mapping[str, Endpoint] = field(default_factory=dict)
    """Requests the kind answers, by name (``<prefix>.svc.<kind>.<name>``)."""
    on_control: ControlHook | None = None
    """What the kind does with control messages beyond what the runtime does."""
    buckets: Mapping[str, str] = field(default_factory=dict)
    """KV buckets (``streams.definitions``) the kind uses -> ``read`` or ``write``; its NATS
    role may touch only these (a claim kind's owner records need no entry)."""
    asks: tuple[str, ...] = ()
    """Other kinds' endpoints the kind asks, as ``kind.endpoint`` (``memory.recall``)."""
    health: Callable[[Any], Awaitable[str]] | None = None
    """Why the worker is degraded ("" = it is not), e.g. a store it uses is away; shown as
    a Consul ``warning`` and in ``status`` until it passes again."""

    def __post_init__(self) -> None:
        claims = isinstance(self.input, SessionClaims)
        if claims == (self.handle is not None):
            raise ValueError(f"kind {self.kind}: a handler for work and taps, none for claims")

    @property
    def tiered(self) -> bool:
        return isinstance(self.input, WorkQueue) and self.input.tiered

    @property
    def feeds(self) -> str:
        """``work``, ``claim`` or ``tap``: what feeds the kind's consumer(s)."""
        if isinstance(self.input, SessionClaims):
            return "claim"
        return "tap" if isinstance(self.input, EventTap) else "work"

    def durable(self, tier: str | None = None) -> str:
        """The durable consumer of ``tier`` (tiered work) or of the kind."""
        return f"{self.kind}-{tier}" if tier else self.kind

    def tiers_of(self, serving: tuple[str, ...]) -> tuple[str | None, ...]:
        """The consumers' tiers a worker serving ``serving`` reads (None: untiered)."""
        return tuple(t for t in TIERS if t in serving) if self.tiered else (None,)

    def ack_wait(self, settings: Settings) -> float:
        override = settings.claim_ack_wait_s if self.feeds == "claim" else settings.work_ack_wait_s
        return override or self.ack_wait_s

    def deliveries(self, settings: Settings) -> int:
        """Deliveries allowed (-1: no limit)."""
        return settings.max_deliver if self.max_deliver is None else self.max_deliver

    def consumers(
        self, settings: Settings, serving: tuple[str, ...] = TIERS
    ) -> list[tuple[str | None, Consumer]]:
        """The kind's durable consumers (with their tier) for a worker serving ``serving``."""
        s = Subjects(settings.prefix)
        if isinstance(self.input, EventTap):
            subjects = tuple(f"{s.prefix}.events.*.{t}" for t in self.input.types)
            tap = Consumer(
                definitions.EVENTS,
                self.durable(),
                subjects,
                self.ack_wait(settings),
                self.deliveries(settings),
                max_ack_pending=1_000,
                feeds="tap",
                deliver_new=not self.input.from_start,
            )
            return [(None, tap)]
        out = []
        for tier in self.tiers_of(serving):
            subject, durable = s.work(self.kind, tier), self.durable(tier)
            out.append((tier, self._work_consumer(settings, subject, durable, self.feeds)))
            if self.feeds == "work":  # speculative turns' work: pulled when nothing else is
                spec = s.speculative(subject)
                out.append(
                    (tier, self._work_consumer(settings, spec, f"{durable}-spec", SPECULATIVE))
                )
        return out

    def _work_consumer(
        self, settings: Settings, subject: str, durable: str, feeds: str
    ) -> Consumer:
        return Consumer(
            definitions.WORK,
            durable,
            (subject,),
            self.ack_wait(settings),
            self.deliveries(settings),
            max_ack_pending=10_000 if feeds == "claim" else 1_000,
            feeds=feeds,
        )
