"""Speculative turns, the runtime's half: hold back what a handler publishes to clients
until its turn is confirmed; drop it when the turn's speech goes on.

The VAD forwards an utterance at a short pause, marked ``Morgan-Speculative: <attempt>``
(docs/design.md, "Speculative turns"). Every stage runs marked work at once and carries
the mark onwards; what a handler emits for clients (events, reply audio) waits in a
``Hold`` of its (session, turn, attempt). The VAD then settles the attempt on control:

- ``Release(kind="vad")``: the pause was the end. A hold opens when the kind that sent
  its message has released the turn (STT after the VAD, the LLM after STT, TTS after
  the LLM), publishes what it held in order, and releases the turn itself in turn: the
  client gets the transcript before the reply, and the reply's text before its audio.
  A release of another attempt of the same turn drops this one.
- ``Abandon``: speech went on. The hold drops what it has and what its handler still
  emits; ``ctx.cancelled`` says so, and the runtime counts the handler's time as wasted.

A worker that missed the control messages (it started after them) asks EVENTS which
attempt the turn's ``vad.speech_stopped`` names; a hold nothing settles is dropped after
``HOLD_MAX_S``. The runtime acknowledges a marked message only once its hold is settled
and flushed, so nothing a handler published is lost to a crash while it was held.
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from schemas import Abandon, Message, Release

Key = tuple[str, str, str]
"""(session, turn, attempt)"""
Publish = Callable[[], Awaitable[object]]
Verdict = Literal["confirmed", "abandoned", "unknown"]
Lookup = Callable[[str, str, str], Awaitable[Verdict]]
"""What EVENTS says of (session, turn, attempt)."""

HOLD_MAX_S = 30.0
"""A hold nothing settles is dropped after this long, seconds (the VAD that speculated
died and its successor cut the turn differently)."""
CHECK_EVERY_S = 0.5
"""How often an unsettled hold whose handler has finished looks again, seconds."""
REMEMBERED = 4096
"""Control messages of each sort a worker remembers."""


@dataclass(eq=False)
class Hold:
    """One handled message's client-facing output, waiting for its turn's verdict."""

    key: Key
    upstream: str
    """The kind whose ``Release`` lets this hold out (the sender of its message)."""
    release: Callable[[Release], Awaitable[None]]
    kind: str
    created: float = field(default_factory=time.monotonic)
    pending: list[Publish] = field(default_factory=list)
    state: Literal["held", "flushing", "open", "dropped"] = "held"
    settled: asyncio.Event = field(default_factory=asyncio.Event)
    flusher: asyncio.Task[None] | None = None

    @property
    def dropped(self) -> bool:
        return self.state == "dropped"

    async def send(self, publish: Publish) -> None:
        """Publish now if the turn is confirmed and what was held is out, else hold."""
        if self.state == "open":
            await publish()
        elif self.state != "dropped":
            self.pending.append(publish)

    def open(self) -> None:
        """The turn is confirmed: publish what is held (in a task the runtime awaits)."""
        if self.state == "held":
            self.state = "flushing"
            self.flusher = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        """Raises what publishing raised: the runtime then naks the message."""
        try:
            while self.pending:  # what the handler emits meanwhile joins the queue
                await self.pending.pop(0)()
            self.state = "open"
        finally:
            self.settled.set()
        sid, turn, attempt = self.key
        await self.release(Release(sid, turn, attempt, self.kind))

    def drop(self) -> None:
        if self.state == "held":
            self.state = "dropped"
            self.pending.clear()
            self.settled.set()


def remember(d: OrderedDict[Any, Any], key: Any, value: Any = None) -> None:
    """Note ``key`` (with ``value``) as the newest in ``d``, which keeps the last
    ``REMEMBERED``: what a worker remembers of control messages."""
    d[key] = value
    d.move_to_end(key)
    while len(d) > REMEMBERED:
        d.popitem(last=False)


class Speculations:
    """What one worker knows of speculative turns, and the holds of its handlers."""

    def __init__(
        self, kind: str, release: Callable[[Release], Awaitable[None]], lookup: Lookup
    ) -> None:
        self.kind = kind
        self.release = release
        self.lookup = lookup
        self.holds: dict[Key, set[Hold]] = {}
        self.released: OrderedDict[object, None] = OrderedDict()
        """(sid, turn, attempt, kind) of every Release seen."""
        self.confirmed: OrderedDict[object, str] = OrderedDict()
        """(sid, turn) -> the attempt confirmed."""
        self.abandoned: OrderedDict[object, None] = OrderedDict()

    def note(self, msg: Message) -> None:
        """A control message: settle the holds it concerns."""
        if isinstance(msg, Release):
            key = (msg.sid, msg.turn, msg.attempt)
            remember(self.released, (*key, msg.kind))
            remember(self.confirmed, (msg.sid, msg.turn), msg.attempt)
            for other, holds in list(self.holds.items()):
                if other[:2] == key[:2]:
                    for hold in holds:
                        if other != key:
                            hold.drop()
                        elif hold.upstream == msg.kind:
                            hold.open()
        elif isinstance(msg, Abandon):
            key = (msg.sid, msg.turn, msg.attempt)
            remember(self.abandoned, key)
            for hold in self.holds.get(key, ()):
                hold.drop()

    def verdict(self, key: Key) -> Verdict:
        """What this worker has heard of ``key``."""
        if key in self.abandoned:
            return "abandoned"
        confirmed = self.confirmed.get(key[:2])
        if confirmed is None:
            return "unknown"
        return "confirmed" if confirmed == key[2] else "abandoned"

    def hold(self, key: Key, upstream: str) -> Hold:
        """A hold for a marked message from ``upstream``, settled at once if it can be."""
        hold = Hold(key, upstream, self.release, self.kind)
        verdict = self.verdict(key)
        if verdict == "abandoned":
            hold.drop()
        elif (*key, upstream) in self.released:
            hold.open()
        self.holds.setdefault(key, set()).add(hold)
        return hold

    async def settle(self, hold: Hold) -> bool:
        """Wait until ``hold`` is settled: True if its turn was confirmed, False if dropped.

        While waiting: a turn confirmed here but never released by ``upstream`` opens
        after one check (the release was missed); one this worker knows nothing of is
        looked up on EVENTS; past ``HOLD_MAX_S`` the hold is dropped.
        """
        known_confirmed = False
        while not hold.settled.is_set():
            try:
                await asyncio.wait_for(hold.settled.wait(), CHECK_EVERY_S)
                break
            except TimeoutError:
                pass
            verdict = self.verdict(hold.key)
            if verdict == "unknown":
                verdict = await self.lookup(*hold.key)
            if verdict == "abandoned" or time.monotonic() - hold.created > HOLD_MAX_S:
                hold.drop()
            elif verdict == "confirmed" and known_confirmed:
                hold.open()
            known_confirmed = verdict == "confirmed"
        return not hold.dropped

    async def finish(self, hold: Hold) -> None:
        """Settle ``hold`` and wait until what it held is published (raising what that
        raised)."""
        await self.settle(hold)
        if hold.flusher is not None:
            await hold.flusher

    def forget(self, hold: Hold) -> None:
        """Its message is done with (acknowledged, or left for redelivery)."""
        holds = self.holds.get(hold.key)
        if holds is not None:
            holds.discard(hold)
            if not holds:
                del self.holds[hold.key]
