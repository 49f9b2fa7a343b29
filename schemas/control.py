"""Control messages (core NATS, ``<prefix>.control.<sid>``): latency first, no stream."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from schemas.message import Message


@dataclass(frozen=True)
class Cancel(Message):
    """Stop working on a turn: barge-in, or the client asked."""

    TYPE: ClassVar[str] = "control.cancel"
    sid: str
    turn: str
    reason: str = "barge-in"


@dataclass(frozen=True)
class SessionEnd(Message):
    """The client is gone for good: its VAD worker releases the session."""

    TYPE: ClassVar[str] = "control.session_end"
    sid: str


@dataclass(frozen=True)
class Forget(Message):
    """A user's history, cached context and memories are being deleted: every worker
    drops what it keeps of them in memory. Sent to ``<prefix>.control.forget`` (session
    ids are 32 hex digits, so no session's control subject is that)."""

    TYPE: ClassVar[str] = "control.forget"
    user: str
    sid: str = ""
    """One session of the user (a deleted conversation); empty: all of the user's."""


@dataclass(frozen=True)
class Release(Message):
    """A speculative turn is confirmed, and ``kind`` has let out what it held of it.

    The VAD sends it with ``kind="vad"`` when the pause it speculated at became the end
    of the turn; each worker that held a client-facing output of the turn (the runtime's
    ``processors.speculation``) sends its own once that is out, so the next stage lets its
    output out after it: transcript before reply, in order.
    """

    TYPE: ClassVar[str] = "control.release"
    sid: str
    turn: str
    attempt: str
    """Which speculation of the turn (``Morgan-Speculative``)."""
    kind: str


@dataclass(frozen=True)
class Abandon(Message):
    """A speculative turn's speech went on: drop everything of that attempt, unsent."""

    TYPE: ClassVar[str] = "control.abandon"
    sid: str
    turn: str
    attempt: str
