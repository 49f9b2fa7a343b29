"""Asking the memory kind (processors/memory.py) for a user's memories, or to forget them.

Callers pass how to ask (``Ask``): a handler passes ``ctx.ask``, the gateway
``streams.bus.ask`` bound to its connection. Recall is best effort (the prompt goes
without memories when no answer comes in time); forgetting must be confirmed.

``encode``/``decode``: memories as stored for a session's next turn (the memory kind
finds them when a turn ends, so that turn's prompt needs no recall: docs/data.md).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime

from nats.aio.client import Client

from schemas import MorganError, Unavailable
from store.records import Memory
from streams import bus

log = logging.getLogger("morgan.store.recall")
Ask = Callable[[str, str, bytes, float], Awaitable[bytes]]
"""(kind, endpoint, body, timeout seconds) -> the answer's body."""
FORGET_TIMEOUT_S = 5.0


async def recall(ask: Ask, user: str, text: str, limit: int, timeout: float) -> list[Memory]:
    """The user's ``limit`` memories closest to ``text``; [] when none, or no answer."""
    if not (user and text.strip() and limit > 0):
        return []
    body = json.dumps({"user": user, "text": text, "limit": limit}).encode()
    started = time.perf_counter()
    try:
        answer = json.loads(await ask("memory", "recall", body, timeout))
        return [Memory(**found) for found in answer["memories"]]
    except (MorganError, ValueError, KeyError, TypeError) as exc:
        waited = (time.perf_counter() - started) * 1000
        log.info("recall for %s: none after %.0f ms (%s)", user, waited, exc)
        return []


async def forget(ask: Ask, user: str) -> int:
    """Delete every memory of ``user``: how many there were. ``Unavailable`` when no
    memory worker confirms it."""
    body = json.dumps({"user": user}).encode()
    answer = json.loads(await ask("memory", "forget", body, FORGET_TIMEOUT_S))
    try:
        return int(answer["deleted"])
    except (KeyError, TypeError, ValueError) as exc:
        raise Unavailable(f"memory.forget answered {answer!r}") from exc


def encode(memories: Sequence[Memory]) -> bytes:
    return json.dumps([asdict(m) for m in memories]).encode()


def decode(raw: bytes | None) -> list[Memory]:
    """Stored memories; [] for anything unreadable (the turn goes without)."""
    try:
        return [Memory(**found) for found in json.loads(raw or b"[]")]
    except (ValueError, TypeError) as exc:
        log.info("stored memories unreadable: %r", exc)
        return []


CLIP = 200
"""Longest piece of a memory put in a prompt line, characters."""


def prompt_lines(memories: Sequence[Memory]) -> list[str]:
    """One line per memory, for the LLM's prompt:
    ``- (2026-12-01) you were told: "..." (you answered: "...")``, dates in UTC."""
    lines = []
    for m in memories:
        day = datetime.fromtimestamp(m.at, tz=UTC).date().isoformat()
        line = f'- ({day}) you were told: "{_clip(m.text)}"'
        if m.reply:
            line += f' (you answered: "{_clip(m.reply)}")'
        lines.append(line)
    return lines


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= CLIP else text[: CLIP - 1] + "…"


def over_bus(nc: Client, prefix: str) -> Ask:
    """``Ask`` over a NATS connection (``streams.bus.ask``), for callers outside a handler."""

    async def ask(kind: str, endpoint: str, body: bytes, timeout: float) -> bytes:
        return await bus.ask(nc, prefix, kind, endpoint, body, timeout)

    return ask
