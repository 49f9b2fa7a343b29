"""A session's recent exchanges, for the dialog model's prompt.

One NATS KV bucket (``MORGAN_DIALOG``, replicas = ``settings.replicas``, each
key lives ``settings.events_max_age_s`` after its last write), keyed by session
id, holding a JSON list of ``{"turn", "user", "assistant"}``, oldest first.
Saving an exchange replaces one with the same turn id, so a redelivered turn
is stored once; writes use the entry's revision, so two workers never lose
each other's exchange. Any NATS trouble is ``Unavailable`` (retryable).
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
from collections.abc import Awaitable
from dataclasses import asdict, dataclass
from typing import TypeVar

from nats.errors import Error as NatsError
from nats.js.errors import BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError

from processors.context import KvStore
from schemas import Unavailable
from streams import definitions

BUCKET = definitions.DIALOG
TIMEOUT_S = 5.0
"""Longest wait for one KV operation, seconds."""
KEEP = 32
"""Most exchanges stored per session (the prompt uses the last few)."""
_PLAIN_KEY = re.compile(r"[-_=A-Za-z0-9]+")
T = TypeVar("T")


@dataclass(frozen=True)
class Exchange:
    turn: str
    user: str
    assistant: str


def key_for(sid: str) -> str:
    """A valid KV key for any session id."""
    if _PLAIN_KEY.fullmatch(sid):
        return sid
    return "b64_" + base64.urlsafe_b64encode(sid.encode()).decode()


async def timed(op: Awaitable[T], what: str) -> T:
    """Await a KV operation with a deadline; NATS trouble becomes ``Unavailable``."""
    try:
        return await asyncio.wait_for(op, TIMEOUT_S)
    except (BucketNotFoundError, KeyNotFoundError, KeyWrongLastSequenceError):
        raise  # answers, not failures
    except (NatsError, TimeoutError) as exc:
        raise Unavailable(f"dialog memory: {what} failed: {exc!r}") from exc


class DialogMemory:
    def __init__(self, kv: KvStore) -> None:
        self.kv = kv

    async def history(self, sid: str) -> list[Exchange]:
        return (await self._read(sid))[0]

    async def save(self, sid: str, exchange: Exchange) -> None:
        """Append (or replace, same turn id) an exchange; keeps the last ``KEEP``."""
        for _ in range(5):
            exchanges, revision = await self._read(sid)
            kept = [e for e in exchanges if e.turn != exchange.turn] + [exchange]
            value = json.dumps([asdict(e) for e in kept[-KEEP:]]).encode()
            try:
                await timed(self.kv.update(key_for(sid), value, last=revision), "save")
                return
            except KeyWrongLastSequenceError:
                continue  # written meanwhile: read again
        raise Unavailable(f"dialog memory: session {sid} keeps changing under us")

    async def _read(self, sid: str) -> tuple[list[Exchange], int]:
        try:
            entry = await timed(self.kv.get(key_for(sid)), "read")
        except KeyNotFoundError:
            return [], 0
        try:
            items = json.loads(entry.value or b"[]")
            exchanges = [
                Exchange(str(i["turn"]), str(i["user"]), str(i["assistant"])) for i in items
            ]
        except (ValueError, TypeError, KeyError):  # unreadable: start the session afresh
            exchanges = []
        return exchanges, entry.revision or 0
