"""Fair shares: open sessions per client, typed turns in flight per session and client.

One client must not be able to take what everyone shares: the VAD's session slots
(many sockets opened and dropped) or the work queue (a flood of typed turns,
which would put every other user into 503 ``overloaded``). A client is its API
key when the gateway has keys, else its address. A typed turn (WebSocket ``text``
or ``POST /api/text``) is in flight from when it is published until its
``reply.done``, ``reply.cancelled`` or ``error`` event, which the gateway sees on
one subscription for all sessions (``finish``), or until ``text_timeout_s`` has
passed (a turn whose worker died must not hold a share for ever). Turns stay
counted after their client disconnects: dropping a socket frees nothing early.

Rate (``take``): each API key has a token bucket of ``key_rate_per_min`` tokens,
refilled at that many a minute; an HTTP request, a WebSocket open and a typed turn
each take one. Past it: ``RateLimited`` (HTTP 429 with ``Retry-After``, or an
``error`` event in a session, which stays open). Clients without a key (a gateway
without auth) have no rate: the address of a proxy would be everyone's.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from gateway.protocol import ProtocolError
from streams.settings import Settings


@dataclass(frozen=True)
class _Turn:
    client: str
    sid: str
    expires: float


@dataclass
class _Bucket:
    tokens: float
    at: float
    """When ``tokens`` was counted (monotonic seconds)."""


class RateLimited(ProtocolError):
    """An API key past its rate; ``retry_after_s``: whole seconds until a token is back."""

    def __init__(self, rate: int, retry_after_s: int) -> None:
        message = f"this API key is past its {rate} requests a minute; retry in {retry_after_s} s"
        super().__init__("rate_limited", message, retryable=True)
        self.retry_after_s = retry_after_s

    def to_client(self) -> dict[str, Any]:
        return {**super().to_client(), "retry_after": self.retry_after_s}


class Quota:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.sessions: Counter[str] = Counter()
        self.turns: dict[tuple[str, str], _Turn] = {}
        self.buckets: dict[str, _Bucket] = {}
        """Per API key (``key:<hash>``); as many as keys were used."""

    def take(self, client: str) -> None:
        """One request of ``client``'s rate, or ``RateLimited``; free without a key."""
        if not client.startswith("key:"):
            return
        rate = self.settings.key_rate_per_min
        now = time.monotonic()
        bucket = self.buckets.setdefault(client, _Bucket(float(rate), now))
        bucket.tokens = min(float(rate), bucket.tokens + (now - bucket.at) * rate / 60.0)
        bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return
        wait_s = (1.0 - bucket.tokens) * 60.0 / rate
        raise RateLimited(rate, max(1, math.ceil(wait_s)))

    def open_session(self, client: str) -> bool:
        """Count a new session for ``client``; False when it already has its share."""
        if self.sessions[client] >= self.settings.max_sessions_per_client:
            return False
        self.sessions[client] += 1
        return True

    def close_session(self, client: str) -> None:
        self.sessions[client] -= 1
        if self.sessions[client] <= 0:
            del self.sessions[client]

    def start_turn(self, client: str, sid: str, turn: str) -> None:
        """Count a typed turn, or refuse it with ``too_many_turns``."""
        now = time.monotonic()
        self._expire(now)
        s = self.settings
        in_session = sum(1 for t in self.turns.values() if t.sid == sid)
        if in_session >= s.max_turns_per_session:
            raise too_many_turns(f"{in_session} turns of this session are still being answered")
        of_client = sum(1 for t in self.turns.values() if t.client == client)
        if of_client >= s.max_turns_per_client:
            raise too_many_turns(f"{of_client} of your turns are still being answered")
        self.turns[(sid, turn)] = _Turn(client, sid, now + s.text_timeout_s)

    def finish(self, sid: str, turn: str) -> None:
        self.turns.pop((sid, turn), None)

    def _expire(self, now: float) -> None:
        for key in [k for k, t in self.turns.items() if t.expires <= now]:
            del self.turns[key]


def too_many_turns(why: str) -> ProtocolError:
    return ProtocolError(
        "too_many_turns", f"{why}; wait for a reply before sending more", retryable=True
    )
