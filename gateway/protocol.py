"""What a WebSocket client may send, parsed and checked, and the gateway's own
messages to it. Pure: no I/O.

Every refusal is a ``ProtocolError`` whose ``code`` the client sees in an
``error`` message (docs/protocol.md lists them); the session stays open.

The same rules, as the OpenAPI schema states them: ``SESSION_ID_PATTERN`` (path
parameters too) and ``TEXT_REQUEST_BODY`` (``POST /api/text``).
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
MAX_DEPTH = 16
"""Deepest nesting of arrays and objects accepted in a client's JSON."""
MAX_CURSOR = 2**63 - 1
"""Largest resume cursor: stream sequences are 64-bit, and no stream gets near this."""
SESSION_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
"""What a session (conversation) id looks like; the same in OpenAPI path parameters."""
RESUME_TOKEN_PATTERN = r"^[A-Za-z0-9_-]{16,128}$"
_SESSION_ID = re.compile(SESSION_ID_PATTERN.strip("^$"))
_RESUME_TOKEN = re.compile(RESUME_TOKEN_PATTERN.strip("^$"))
TEXT_REQUEST_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "title": "TypedTurn",
                "type": "object",
                "required": ["text"],
                "properties": {
                    "text": {"type": "string", "minLength": 1, "maxLength": MAX_TEXT_CHARS},
                    "session_id": {"type": "string", "pattern": SESSION_ID_PATTERN},
                    "resume_token": {"type": "string", "pattern": RESUME_TOKEN_PATTERN},
                },
            }
        }
    },
}
"""``POST /api/text``'s body in the OpenAPI schema (``openapi_extra={"requestBody": ...}``):
the route reads its body itself (gateway/http_body.py), so FastAPI cannot tell."""


class ProtocolError(Exception):
    """A refusal the client sees; ``retryable`` when the same message may succeed later
    (a share of work frees up), not when the message itself is wrong."""

    def __init__(self, code: str, message: str, *, retryable: bool = False) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retryable = retryable

    def to_client(self) -> dict[str, Any]:
        return {
            "type": "error",
            "code": self.code,
            "message": self.message,
            "retryable": self.retryable,
        }


@dataclass(frozen=True)
class Start:
    session_id: str | None = None
    """Set to resume an earlier session."""
    resume_token: str = ""
    """The secret ``session.ready`` gave with the session; required with ``session_id``."""
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


def load_object(raw: str | bytes, what: str = "text frames") -> dict[str, Any]:
    """A client's JSON object (a WebSocket text frame, a REST body), or ``ProtocolError``.

    Whatever the client sends is refused with ``bad_json``, never raised as something
    else: malformed or non-UTF-8 input, integers past Python's digit limit, nesting past
    ``MAX_DEPTH`` (a deep array would recurse the parser), and strings holding a lone
    UTF-16 surrogate (``"\\ud800"``: valid JSON, but not text that can be encoded again).
    """
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError and UnicodeError included
        reason = "nested too deeply" if isinstance(exc, RecursionError) else str(exc)[:200]
        raise ProtocolError("bad_json", f"{what} must be JSON objects: {reason}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_json", f"{what} must be JSON objects")
    _check_tree(obj)
    return obj


def _check_tree(obj: dict[str, Any]) -> None:
    """Depth and Unicode checks over a parsed object, without recursion."""
    stack: list[tuple[Any, int, str]] = [(obj, 1, "")]
    while stack:
        value, depth, key = stack.pop()
        if isinstance(value, str):
            if not _encodable(value):
                code = "bad_text" if key == "text" and depth == 2 else "bad_json"
                raise ProtocolError(code, "strings must be valid Unicode (a lone surrogate?)")
            continue
        if not isinstance(value, dict | list):
            continue
        if depth > MAX_DEPTH:
            raise ProtocolError("bad_json", f"JSON nested deeper than {MAX_DEPTH} levels")
        if isinstance(value, dict):
            for k, v in value.items():
                if not _encodable(k):
                    raise ProtocolError("bad_json", "keys must be valid Unicode")
                stack.append((v, depth + 1, k))
        else:
            stack.extend((v, depth + 1, "") for v in value)


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def parse(raw: str) -> ClientMessage:
    """One text frame from the client, or ``ProtocolError``."""
    obj = load_object(raw)
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
    sid, token = resume_fields(obj)
    cursors = {}
    for name in ("last_event", "last_audio"):
        value = obj.get(name, 0)
        if not (_is_int(value) and 0 <= value <= MAX_CURSOR):
            raise ProtocolError("bad_message", f"{name} must be an integer from 0 to {MAX_CURSOR}")
        cursors[name] = value
    return Start(sid, token, cursors["last_event"], cursors["last_audio"])


def resume_fields(obj: dict[str, Any]) -> tuple[str | None, str]:
    """``session_id`` and its ``resume_token`` (WebSocket resume or REST), checked for form.

    A session id alone proves nothing (it shows in consumer names): continuing a session
    takes the secret its ``session.ready`` or REST answer gave.
    """
    sid = obj.get("session_id")
    token = obj.get("resume_token")
    if sid is None:
        if token is not None:
            raise ProtocolError("bad_message", "resume_token without session_id")
        return None, ""
    check_session_id(sid)
    if token is None:
        raise ProtocolError("bad_message", "session_id needs the resume_token it was given with")
    if not (isinstance(token, str) and _RESUME_TOKEN.fullmatch(token)):
        raise ProtocolError("bad_message", "resume_token is malformed")
    return sid, token


def text_of(obj: dict[str, Any]) -> str:
    """The ``text`` field of a typed turn (WebSocket or REST), stripped and checked."""
    text = obj.get("text")
    if not isinstance(text, str) or not text.strip():
        raise ProtocolError("bad_text", "text must be a non-empty string")
    if not _encodable(text):
        raise ProtocolError("bad_text", "text must be valid Unicode (a lone surrogate?)")
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


def ready(sid: str, token: str | None, output_rate: int) -> dict[str, Any]:
    """The ``session.ready`` message: a new session's carries its ``resume_token``
    (only a hash is kept, so a resumed session's cannot)."""
    fmt = {"format": INPUT_FORMAT, "channels": INPUT_CHANNELS}
    secret = {} if token is None else {"resume_token": token}
    return {
        "type": "session.ready",
        "session_id": sid,
        "resumed": token is None,
        **secret,
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
