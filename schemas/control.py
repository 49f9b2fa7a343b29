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
