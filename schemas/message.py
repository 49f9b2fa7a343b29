"""The base of every message: a frozen dataclass with a ``TYPE`` name.

A subclass declares its fields; ``BINARY`` names the one ``bytes`` field (if any)
that travels as the raw NATS body instead of inside JSON.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

_REGISTRY: dict[str, type[Message]] = {}


@dataclasses.dataclass(frozen=True)
class Message:
    TYPE: ClassVar[str] = ""
    BINARY: ClassVar[str | None] = None
    """Name of the bytes field carried as the raw body, or None for pure JSON."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.TYPE:
            if cls.TYPE in _REGISTRY and _REGISTRY[cls.TYPE] is not cls:
                raise TypeError(f"message type {cls.TYPE!r} declared twice")
            _REGISTRY[cls.TYPE] = cls

    def fields(self) -> dict[str, Any]:
        """The message's fields as a plain dict (binary field included)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def to_client(self) -> dict[str, Any]:
        """The JSON object a WebSocket client sees for this message (no sid, no bytes)."""
        out: dict[str, Any] = {"type": self.TYPE}
        for name, value in self.fields().items():
            if name != "sid" and name != self.BINARY:
                out[name] = value
        return out


def message_type(name: str) -> type[Message] | None:
    return _REGISTRY.get(name)


def all_message_types() -> list[type[Message]]:
    return list(_REGISTRY.values())
