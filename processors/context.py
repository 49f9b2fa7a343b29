"""What a handler gets: its models, where to publish, and what was cancelled."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from schemas import Cancel, Message, SessionEnd, Subjects
from streams import bus
from streams.settings import Settings

_REMEMBERED = 4096


class Router(Protocol):
    async def tier_for(self, kind: str) -> str: ...


@dataclass
class Signals:
    """Control messages this worker has seen, shared by all its handlers."""

    cancelled: OrderedDict[tuple[str, str], None] = field(default_factory=OrderedDict)
    ended: OrderedDict[str, None] = field(default_factory=OrderedDict)
    draining: asyncio.Event = field(default_factory=asyncio.Event)

    def note(self, msg: Message) -> None:
        if isinstance(msg, Cancel):
            _remember(self.cancelled, (msg.sid, msg.turn))
        elif isinstance(msg, SessionEnd):
            _remember(self.ended, msg.sid)


def _remember(d: OrderedDict[Any, None], key: Any) -> None:
    d[key] = None
    d.move_to_end(key)
    while len(d) > _REMEMBERED:
        d.popitem(last=False)


@dataclass
class Context:
    settings: Settings
    nc: Client
    js: JetStreamContext
    state: Any
    tier: str | None
    signals: Signals
    raw: Msg | None = None
    """The JetStream message being handled (None in direct calls)."""
    trace: dict[str, str] = field(default_factory=dict)
    """Headers to carry on (``traceparent``): one trace per turn across hosts."""
    router: Router | None = None
    """Chooses gpu or cpu tiers (processors.routing); None sends everything to cpu."""
    live: Callable[[], Settings] | None = None
    """The worker's settings now (live config); ``settings`` is the message-start snapshot."""

    def current_settings(self) -> Settings:
        """For long handlers (a VAD session): settings as they are now, not at start."""
        return self.settings if self.live is None else self.live()

    @property
    def subjects(self) -> Subjects:
        return Subjects(self.settings.prefix)

    def cancelled(self, sid: str, turn: str) -> bool:
        return (sid, turn) in self.signals.cancelled

    def session_ended(self, sid: str) -> bool:
        return sid in self.signals.ended

    @property
    def draining(self) -> bool:
        return self.signals.draining.is_set()

    async def emit(
        self, event: Message, *, msg_id: str, trace: dict[str, str] | None = None
    ) -> None:
        """Publish a client-visible event to ``<prefix>.events.<sid>.<type>``."""
        sid = getattr(event, "sid")  # noqa: B009 - every event has a sid
        subject = self.subjects.events(sid, event.TYPE)
        await bus.publish(self.js, subject, event, msg_id=msg_id, headers=trace or self.trace)

    async def send(
        self, subject: str, msg: Message, *, msg_id: str, trace: dict[str, str] | None = None
    ) -> None:
        """Publish work or audio to a stream, deduplicated by ``msg_id``.

        ``trace`` replaces the handler's trace header (the VAD starts a trace per turn).
        """
        await bus.publish(self.js, subject, msg, msg_id=msg_id, headers=trace or self.trace)

    async def control(self, msg: Message) -> None:
        sid = getattr(msg, "sid")  # noqa: B009
        await bus.publish_core(self.nc, self.subjects.control(sid), msg, headers=self.trace)

    async def tier_for(self, kind: str) -> str:
        """The tier to send ``kind`` work to now: gpu while a live gpu worker keeps up."""
        return "cpu" if self.router is None else await self.router.tier_for(kind)

    async def in_progress(self) -> None:
        if self.raw is not None:
            await self.raw.in_progress()
