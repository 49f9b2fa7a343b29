"""Events a client sees (the EVENTS stream, ``<prefix>.events.<sid>.<type>``).

Their ``TYPE`` is the ``type`` field of the WebSocket event; see docs/protocol.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from schemas.message import Message


@dataclass(frozen=True)
class SpeechStarted(Message):
    TYPE: ClassVar[str] = "vad.speech_started"
    sid: str
    turn: str
    at_ms: int = 0
    """Position in the session's input audio, milliseconds."""


@dataclass(frozen=True)
class SpeechStopped(Message):
    TYPE: ClassVar[str] = "vad.speech_stopped"
    sid: str
    turn: str
    at_ms: int = 0
    """Position in the session's input audio where speech ended, milliseconds."""


@dataclass(frozen=True)
class Transcript(Message):
    TYPE: ClassVar[str] = "transcript"
    sid: str
    turn: str
    text: str
    stt_ms: float = 0.0
    """Speech-to-text compute, milliseconds."""
    typed: bool = False
    """The user typed it (no speech-to-text)."""


@dataclass(frozen=True)
class ReplyDelta(Message):
    TYPE: ClassVar[str] = "reply.delta"
    sid: str
    turn: str
    index: int
    """Delta number within the turn, from 0."""
    text: str


@dataclass(frozen=True)
class ReplyDone(Message):
    TYPE: ClassVar[str] = "reply.done"
    sid: str
    turn: str
    text: str
    sentences: int
    """How many TTS requests (and so audio sentences) the reply has."""
    llm_ms: float = 0.0
    """From the LLM request's receipt to the reply's end, milliseconds."""
    first_ms: float = 0.0
    """From the LLM request's receipt to its first sentence sent to TTS, milliseconds."""
    asked: str = ""
    """The words the reply answers, as the LLM got them (long-term memory stores them)."""


@dataclass(frozen=True)
class ReplyCancelled(Message):
    TYPE: ClassVar[str] = "reply.cancelled"
    sid: str
    turn: str
    reason: str = "barge-in"
    spoken: str = ""
    """The part of the reply already sent to be spoken when it was cancelled."""


@dataclass(frozen=True)
class ErrorEvent(Message):
    TYPE: ClassVar[str] = "error"
    sid: str
    code: str
    """Stable machine-readable reason, e.g. ``bad_audio``, ``stt_failed``."""
    message: str
    retryable: bool = False
    turn: str = ""
