"""What each stage sends onwards: a route table, the shipped pipeline by default.

A stage hands its output to the runtime (``ctx.forward``), which asks this table
which kind takes it next and publishes it to that kind's work subject. By default a
message type goes to the kind of the shipped pipeline that takes it::

    session.claim -> vad    (a gateway's new voice session)
    stt.utterance -> stt    (what the VAD cuts)
    llm.request   -> llm    (what STT heard, or what a client typed)
    tts.request   -> tts    (each sentence the LLM writes)

``MORGAN_ROUTES`` overrides entries per sender, so a stage can be inserted without
editing the kind upstream of it: ``stt:llm.request=redact`` sends STT's requests to a
``redact`` kind, whose own ``llm.request`` then follows the default to ``llm``.
``*:llm.request=redact`` sends every sender's requests there (the gateway's typed
turns too) except the inserted kind's own.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from dataclasses import dataclass, field

from schemas.subjects import check_token

SHIPPED: Mapping[str, str] = {
    "session.claim": "vad",
    "stt.utterance": "stt",
    "llm.request": "llm",
    "tts.request": "tts",
}
"""The shipped pipeline: message type -> the kind that takes it."""
ANY = "*"


class RouteError(ValueError):
    """A route table that cannot be used (malformed, or a kind routed to itself)."""


@dataclass(frozen=True)
class Routes:
    overrides: Mapping[tuple[str, str], str] = field(default_factory=dict)
    """(sender kind or ``*``, message type) -> the kind that takes it."""
    defaults: Mapping[str, str] = field(default_factory=lambda: dict(SHIPPED))

    @classmethod
    @functools.lru_cache(maxsize=16)
    def parse(cls, text: str) -> Routes:
        """``sender:type=kind`` entries, comma-separated (``MORGAN_ROUTES``). Parsed once
        per text: every message a worker forwards and every turn a gateway starts asks."""
        overrides: dict[tuple[str, str], str] = {}
        for entry in filter(None, (e.strip() for e in text.split(","))):
            left, eq, kind = entry.partition("=")
            sender, colon, message_type = left.partition(":")
            if not (eq and colon and sender.strip() and message_type.strip() and kind.strip()):
                raise RouteError(f"route {entry!r}: write sender:type=kind")
            sender, message_type, kind = sender.strip(), message_type.strip(), kind.strip()
            try:
                check_token(kind, "route target")
                if sender != ANY:
                    check_token(sender, "route sender")
            except ValueError as exc:
                raise RouteError(f"route {entry!r}: {exc}") from None
            if sender == kind:
                raise RouteError(f"route {entry!r} sends {kind}'s output back to {kind}")
            overrides[(sender, message_type)] = kind
        return cls(overrides)

    def next_kind(self, sender: str, message_type: str) -> str:
        """The kind that takes ``message_type`` from ``sender``."""
        for key in ((sender, message_type), (ANY, message_type)):
            kind = self.overrides.get(key)
            if kind is not None and kind != sender:
                return kind
        try:
            return self.defaults[message_type]
        except KeyError:
            raise RouteError(f"no route for {message_type!r} from {sender!r}") from None

    def table(self) -> list[tuple[str, str, str]]:
        """(sender, message type, kind) rows: the defaults (sender ``*``), then overrides."""
        rows = [(ANY, t, k) for t, k in self.defaults.items() if (ANY, t) not in self.overrides]
        return rows + sorted((s, t, k) for (s, t), k in self.overrides.items())
