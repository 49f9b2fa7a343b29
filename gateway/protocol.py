"""What a WebSocket client may send, parsed and checked, and the gateway's own
messages to it. Pure: no I/O.

Every refusal is a ``ProtocolError`` whose ``code`` the client sees in an
``error`` message (docs/protocol.md lists them); the session stays open.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from schemas import AudioChunk

INPUT_RATE = 16000
"""The only accepted microphone rate, Hertz."""
INPUT_FORMAT = "s16le"
INPUT_CHANNELS = 1
MAX_TEXT_CHARS = 4000
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class ProtocolError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def to_client(self) -> dict[str, Any]:
        return {"type": "error", "code": self.code, "message": self.message}


@dataclass(frozen=True)
class Start:
    session_id: str | None = None
    """Set to resume an earlier session."""
    last_event: int = 0
    """EVENTS stream id of the last event the client has (resume)."""
    last_audio: int = 0
    """AUDIO stream id of the last audio chunk the client has (resume)."""


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class CancelReply:
    pass


@dataclass(frozen=True)
class End:
    pass


ClientMessage = Start | Text | CancelReply | End


def parse(raw: str) -> ClientMessage:
    """One text frame from the client, or ``ProtocolError``."""
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ProtocolError("bad_json", f"text frames must be JSON objects: {exc}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_json", "text frames must be JSON objects")
    kind = obj.get("type")
    if kind == "session.start":
        return _start(obj)
    if kind == "text":
        return Text(text_of(obj))
    if kind == "cancel":
        return CancelReply()
    if kind == "session.end":
        return End()
    raise ProtocolError(
        "unknown_type",
        f"unknown message type {kind!r}; expected session.start, text, cancel or session.end",
    )


def _start(obj: dict[str, Any]) -> Start:
    rate = obj.get("rate", INPUT_RATE)
    fmt = obj.get("format", INPUT_FORMAT)
    channels = obj.get("channels", INPUT_CHANNELS)
    if not (_is_int(rate) and rate == INPUT_RATE and fmt == INPUT_FORMAT and channels == 1):
        raise ProtocolError(
            "bad_audio_format",
            f"audio must be {INPUT_RATE} Hz {INPUT_FORMAT} mono; got rate={rate!r} "
            f"format={fmt!r} channels={channels!r}",
        )
    sid = obj.get("session_id")
    if sid is not None:
        check_session_id(sid)
    cursors = {}
    for name in ("last_event", "last_audio"):
        value = obj.get(name, 0)
        if not (_is_int(value) and value >= 0):
            raise ProtocolError("bad_message", f"{name} must be a non-negative integer")
        cursors[name] = value
    return Start(sid, cursors["last_event"], cursors["last_audio"])


def text_of(obj: dict[str, Any]) -> str:
    """The ``text`` field of a typed turn (WebSocket or REST), stripped and checked."""
    text = obj.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ProtocolError("bad_text", "text must be a non-empty string")
    if len(text) > MAX_TEXT_CHARS:
        raise ProtocolError("bad_text", f"text is longer than {MAX_TEXT_CHARS} characters")
    return text.strip()


def check_frame(data: bytes, max_bytes: int) -> None:
    """A binary frame must be whole 16-bit samples and at most ``max_bytes``."""
    if not data:
        raise ProtocolError("bad_frame", "empty audio frame")
    if len(data) % 2:
        raise ProtocolError("bad_frame", f"odd frame length {len(data)}: samples are 2 bytes")
    if len(data) > max_bytes:
        raise ProtocolError("bad_frame", f"frame of {len(data)} bytes exceeds {max_bytes}")


def check_session_id(value: Any) -> str:
    if not (isinstance(value, str) and _SESSION_ID.fullmatch(value)):
        raise ProtocolError("bad_message", "session_id must be 1-64 letters, digits, _ or -")
    return value


def ready(sid: str, resumed: bool, output_rate: int) -> dict[str, Any]:
    """The ``session.ready`` message."""
    fmt = {"format": INPUT_FORMAT, "channels": INPUT_CHANNELS}
    return {
        "type": "session.ready",
        "session_id": sid,
        "resumed": resumed,
        "input": {"rate": INPUT_RATE, **fmt},
        "output": {"rate": output_rate, **fmt},
    }


def audio_header(stream_id: int, chunk: AudioChunk) -> dict[str, Any]:
    """The JSON header sent just before a reply audio chunk's bytes."""
    return {
        "type": "audio",
        "id": stream_id,
        "turn": chunk.turn,
        "seq": chunk.seq,
        "chunk": chunk.chunk,
        "last": chunk.last,
        "rate": chunk.rate,
        "bytes": len(chunk.pcm),
    }


def unavailable(exc: BaseException) -> dict[str, Any]:
    """The error a client gets when the bus failed on its message: try again later."""
    return {
        "type": "error",
        "code": "unavailable",
        "message": f"the message bus is unavailable, try again: {exc or type(exc).__name__}",
        "retryable": True,
    }


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
