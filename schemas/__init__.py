"""Morgan's messages and subject names. Pure: stdlib only, no I/O, no NATS.

Every message is a frozen dataclass with a ``TYPE``; one codec (``schemas.codec``)
turns any of them into NATS headers plus a body and back.
"""

from schemas.codec import MessageError, decode, encode
from schemas.control import Abandon, Cancel, Forget, Release, SessionEnd
from schemas.errors import BadInput, Handoff, MorganError, Superseded, Unavailable
from schemas.events import (
    ErrorEvent,
    ReplyCancelled,
    ReplyDelta,
    ReplyDone,
    SpeechStarted,
    SpeechStopped,
    Transcript,
)
from schemas.message import Message, all_message_types
from schemas.subjects import Subjects
from schemas.work import AudioChunk, AudioFrame, LlmRequest, SessionClaim, TtsRequest, Utterance

__all__ = [
    "Abandon",
    "Release",
    "BadInput",
    "Handoff",
    "MorganError",
    "Unavailable",
    "AudioChunk",
    "AudioFrame",
    "Cancel",
    "ErrorEvent",
    "LlmRequest",
    "Message",
    "MessageError",
    "ReplyCancelled",
    "ReplyDelta",
    "ReplyDone",
    "SessionClaim",
    "SessionEnd",
    "Forget",
    "SpeechStarted",
    "SpeechStopped",
    "Subjects",
    "Superseded",
    "Transcript",
    "TtsRequest",
    "Utterance",
    "all_message_types",
    "decode",
    "encode",
]
