"""One codec for every message: NATS headers + body, and back.

Wire form:
- header ``Morgan-Type`` names the message type; ``Morgan-Session`` and
  ``Morgan-Turn`` repeat the ids so operators can filter without decoding.
- a JSON-only message has its fields as a compact JSON object in the body;
- a message with a binary field (``BINARY``) has that field's raw bytes as the
  body and its other fields as JSON in the ``Morgan-Meta`` header. No base64.

Anything malformed raises ``MessageError`` (never returns None).
"""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any

from schemas.errors import MorganError
from schemas.message import Message, message_type

TYPE_HEADER = "Morgan-Type"
META_HEADER = "Morgan-Meta"
SESSION_HEADER = "Morgan-Session"
TURN_HEADER = "Morgan-Turn"
USER_HEADER = "Morgan-User"
"""The user a session belongs to: set by the gateway on a session's claim and typed
turns, and carried by the runtime onto everything published while handling them."""
WORKER_HEADER = "Morgan-Worker"
"""The worker (``kind@host:pid``) that published a message; the history records it."""
SPECULATIVE_HEADER = "Morgan-Speculative"
"""Work for a turn not confirmed yet (the speculation's name, ``p<frame seq>``): carried
onwards by the runtime, which holds back what its handlers publish to clients until the
VAD confirms (``Release``) and drops it if the VAD abandons (``Abandon``)."""


class MessageError(MorganError):
    """Bytes or headers that are not a valid Morgan message. Never retryable."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False, code="bad_message")


def encode(msg: Message) -> tuple[dict[str, str], bytes]:
    fields = msg.fields()
    headers = {TYPE_HEADER: msg.TYPE}
    if "sid" in fields:
        headers[SESSION_HEADER] = str(fields["sid"])
    if "turn" in fields:
        headers[TURN_HEADER] = str(fields["turn"])
    if msg.BINARY is None:
        return headers, _dumps(fields).encode()
    body = fields.pop(msg.BINARY)
    headers[META_HEADER] = _dumps(fields, ascii_only=True)
    return headers, body


def decode(headers: typing.Mapping[str, str] | None, body: bytes) -> Message:
    if not headers or TYPE_HEADER not in headers:
        raise MessageError(f"missing {TYPE_HEADER} header")
    cls = message_type(headers[TYPE_HEADER])
    if cls is None:
        raise MessageError(f"unknown message type {headers[TYPE_HEADER]!r}")
    if cls.BINARY is None:
        fields = _loads(body)
    else:
        fields = _loads(headers.get(META_HEADER, "").encode())
        fields[cls.BINARY] = bytes(body)
    return build(cls, fields)


def foreign(headers: typing.Mapping[str, str] | None, body: bytes) -> dict[str, Any] | None:
    """The fields of a JSON message whose type this process does not know (a kind from
    another package published it), with its ``type``; None for anything else."""
    kind = (headers or {}).get(TYPE_HEADER, "")
    if not kind or message_type(kind) is not None or META_HEADER in (headers or {}):
        return None
    try:
        fields = _loads(body)
    except MessageError:
        return None
    return {**fields, "type": kind}


def build(cls: type[Message], fields: dict[str, Any]) -> Message:
    """Make ``cls`` from untrusted fields, checking names and types."""
    hints = _hints(cls)
    unknown = set(fields) - set(hints)
    if unknown:
        raise MessageError(f"{cls.TYPE}: unknown fields {sorted(unknown)}")
    for name, value in fields.items():
        if not _type_ok(value, hints[name]):
            raise MessageError(f"{cls.TYPE}: field {name!r} has the wrong type")
    try:
        return cls(**fields)
    except TypeError as exc:  # a required field is missing
        raise MessageError(f"{cls.TYPE}: {exc}") from None


_HINTS: dict[str, dict[str, Any]] = {}


def _hints(cls: type[Message]) -> dict[str, Any]:
    """Field name -> resolved type, computed once per message type."""
    if cls.TYPE not in _HINTS:
        names = {f.name for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        _HINTS[cls.TYPE] = {k: v for k, v in hints.items() if k in names}
    return _HINTS[cls.TYPE]


def _type_ok(value: Any, hint: Any) -> bool:
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _dumps(fields: dict[str, Any], *, ascii_only: bool = False) -> str:
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=ascii_only, allow_nan=False)


def _loads(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MessageError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise MessageError("JSON body is not an object")
    return value
