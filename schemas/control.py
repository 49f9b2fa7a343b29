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
