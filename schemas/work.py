"""Messages that carry work between processors (the WORK and AUDIO streams)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from schemas.message import Message


@dataclass(frozen=True)
class SessionClaim(Message):
    """Asks one VAD worker to own a session's microphone stream."""

    TYPE: ClassVar[str] = "session.claim"
    sid: str
    rate: int = 16000
    """Input sample rate, Hertz."""
    fmt: str = "s16le"
    started_ms: int = 0
    """Wall clock when the gateway opened the session, Unix milliseconds."""


@dataclass(frozen=True)
class AudioFrame(Message):
    """A piece of the client's microphone, as the client sent it."""

    TYPE: ClassVar[str] = "audio.frame"
    BINARY: ClassVar[str | None] = "pcm"
    sid: str
    seq: int
    """Frame number in the session, from 1."""
    offset: int = 0
    """Samples in the session before this frame's first sample."""
    pcm: bytes = b""
    """Signed 16-bit little-endian mono samples at the session's rate."""


@dataclass(frozen=True)
class Utterance(Message):
    """One stretch of speech, from the VAD to speech-to-text."""

    TYPE: ClassVar[str] = "stt.utterance"
    BINARY: ClassVar[str | None] = "pcm"
    sid: str
    turn: str
    rate: int = 16000
    """Hertz."""
    first_seq: int = 0
    """Audio frame number where the utterance starts (the turn id is built from it)."""
    last_seq: int = 0
    vad_tail_ms: int = 0
    """Silence waited after the speech before the utterance was cut, milliseconds."""
    pcm: bytes = b""


@dataclass(frozen=True)
class LlmRequest(Message):
    """A user's words for the dialog model to answer."""

    TYPE: ClassVar[str] = "llm.request"
    sid: str
    turn: str
    text: str


@dataclass(frozen=True)
class TtsRequest(Message):
    """One sentence (or first clause) of a reply to speak."""

    TYPE: ClassVar[str] = "tts.request"
    sid: str
    turn: str
    seq: int
    """Sentence number within the turn, from 0."""
    text: str
    voice: str = ""
    """Voice name or model path; empty means the worker's default."""
    llm_ms: float = 0.0
    """Milliseconds from the LLM request's receipt to this sentence being ready."""


@dataclass(frozen=True)
class AudioChunk(Message):
    """A piece of reply audio; the gateway orders them by (turn, seq, chunk)."""

    TYPE: ClassVar[str] = "audio.chunk"
    BINARY: ClassVar[str | None] = "pcm"
    sid: str
    turn: str
    seq: int
    """Sentence number within the turn."""
    chunk: int
    """Chunk number within the sentence, from 0."""
    last: bool
    """True on the sentence's final chunk."""
    rate: int = 22050
    """Hertz; signed 16-bit little-endian mono."""
    tts_ms: float = 0.0
    """Synthesis compute for this sentence, milliseconds (set on chunk 0)."""
    pcm: bytes = b""
