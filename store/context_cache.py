"""The LLM's context: a session's last exchanges, from three levels (docs/data.md).

    L1  this process's LRU of sessions (``context_l1_sessions``, ``context_l1_ttl_s``)
    L2  Redis or Redis Cluster, key ``<prefix>:ctx:<sid>`` (``context_l2_ttl_s``)
    L3  the conversation history in PostgreSQL (anything with ``exchanges``, see ``L3``)

``ContextCache.recent`` reads L2 while Redis answers (it is shared: with several LLM
workers, the turn before may have been answered by another one, which an L1 hit would
miss), else L1, else L3, and fills the levels above on a miss. So L1 answers when there
is no Redis (one LLM worker, ``morgan up``) and while Redis is away.
``ContextCache.add`` writes a finished turn to L2 and L1. Every level holds at most the
last ``KEEP`` exchanges of a session, oldest first (by ``Exchange.at``).

Redis is a cache: when it fails (``REDIS_DOWN``), reads and writes skip it for ``RETRY_S``
seconds, ``status`` says ``degraded`` with a ``reason``, and the first answer after that
says ``ok`` again. Only ``forget`` raises when Redis cannot be reached: a user's data must
not stay behind silently.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol, TypeVar

import redis.asyncio
import redis.exceptions
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from schemas import Unavailable
from store.records import Exchange
from streams.settings import Settings

log = logging.getLogger("morgan.context")

KEEP = 32
"""Most exchanges kept per session, at every level (a prompt uses the last few)."""
RETRY_S = 2.0
"""After a Redis failure, seconds during which Redis is not tried again."""
SOCKET_TIMEOUT_S = 0.5
"""Redis connect and read timeout, seconds: a dead Redis costs at most this much."""
TIMEOUT_S = 1.0
"""Longest one Redis operation may take in all (a cluster may try several nodes), seconds."""
REDIS_DOWN: tuple[type[BaseException], ...] = (
    OSError,  # includes the built-in ConnectionError
    TimeoutError,
    redis.exceptions.ConnectionError,  # includes BusyLoadingError, MaxConnectionsError
    redis.exceptions.TimeoutError,
    redis.exceptions.ClusterError,  # includes ClusterDownError, MasterDownError
    redis.exceptions.RedisClusterException,  # no node reachable, slot not covered
    redis.exceptions.TryAgainError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.OutOfMemoryError,
)
"""Errors meaning Redis cannot serve us now (not a mistake in what we sent)."""

MERGE = """
-- KEYS[1]: a session's list of JSON exchanges, ordered by `at`.
-- ARGV: keep, ttl_ms, the new exchange ('' = none), then the caller's known exchanges.
-- The list becomes the union by turn of what it holds, the known exchanges it lacks and
-- the new exchange (which replaces the one of its turn), ordered by `at` (ties keep that
-- order), its last `keep` items, living `ttl_ms` from now. Returns it.
local key = KEYS[1]
local items, index = {}, {}
local function put(raw, replace)
  local ok, e = pcall(cjson.decode, raw)
  if not ok or type(e) ~= 'table' or type(e.turn) ~= 'string' then return end
  local i = index[e.turn]
  if i == nil then
    items[#items + 1] = {n = #items + 1, at = tonumber(e.at) or 0, raw = raw}
    index[e.turn] = #items
  elseif replace then
    items[i].at, items[i].raw = tonumber(e.at) or 0, raw
  end
end
for _, raw in ipairs(redis.call('LRANGE', key, 0, -1)) do put(raw, false) end
for i = 4, #ARGV do put(ARGV[i], false) end
if ARGV[3] ~= '' then put(ARGV[3], true) end
table.sort(items, function(x, y)
  if x.at ~= y.at then return x.at < y.at end
  return x.n < y.n
end)
redis.call('DEL', key)
for i = math.max(1, #items - tonumber(ARGV[1]) + 1), #items do
  redis.call('RPUSH', key, items[i].raw)
end
redis.call('PEXPIRE', key, ARGV[2])
return redis.call('LRANGE', key, 0, -1)
"""

T = TypeVar("T")


class L3(Protocol):
    """The record (store.history.History): a session's last ``limit`` exchanges, oldest
    first. May raise ``Unavailable``."""

    async def exchanges(self, sid: str, limit: int) -> list[Exchange]: ...


@dataclass(frozen=True)
class _Entry:
    user: str
    exchanges: tuple[Exchange, ...]
    expires: float


class L1:
    """This process's cache: at most ``size`` sessions, the least recently used going
    first; an entry expires ``ttl_s`` after it was written. ``clock`` is monotonic
    seconds (injectable for tests)."""

    def __init__(
        self, size: int, ttl_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.size = size
        self.ttl_s = ttl_s
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, sid: str) -> list[Exchange] | None:
        """The session's exchanges, or None when not cached or expired."""
        entry = self._entries.get(sid)
        if entry is None:
            return None
        if self._clock() >= entry.expires:
            del self._entries[sid]
            return None
        self._entries.move_to_end(sid)
        return list(entry.exchanges)

    def put(self, sid: str, user: str, exchanges: Sequence[Exchange]) -> None:
        """Cache the session's exchanges (its last ``KEEP``) for ``ttl_s`` from now.
        An empty ``user`` keeps the user the entry already had."""
        old = self._entries.pop(sid, None)
        user = user or (old.user if old else "")
        expires = self._clock() + self.ttl_s
        self._entries[sid] = _Entry(user, tuple(exchanges[-KEEP:]), expires)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def drop(self, sids: Iterable[str]) -> None:
        for sid in sids:
            self._entries.pop(sid, None)

    def drop_user(self, user: str) -> None:
        """Drop every session of ``user``."""
        self.drop([sid for sid, entry in self._entries.items() if entry.user == user])


def merged(old: Sequence[Exchange], new: Sequence[Exchange]) -> list[Exchange]:
    """The union by turn of ``old`` and ``new`` (an exchange of ``new`` replaces the one of
    its turn), ordered by ``at`` (ties keep that order), the last ``KEEP``."""
    by_turn = {e.turn: e for e in old}
    by_turn.update((e.turn, e) for e in new)  # a replaced turn keeps its place
    return sorted(by_turn.values(), key=lambda e: e.at)[-KEEP:]


def encode(exchange: Exchange) -> str:
    return json.dumps(asdict(exchange), separators=(",", ":"))


def decode(items: Iterable[bytes | str]) -> list[Exchange]:
    """Exchanges from their JSON; unreadable items are skipped."""
    out = []
    for raw in items:
        try:
            d = json.loads(raw)
            out.append(
                Exchange(
                    turn=str(d["turn"]),
                    user=str(d["user"]),
                    assistant=str(d["assistant"]),
                    at=float(d.get("at", 0.0)),
                    cancelled=bool(d.get("cancelled", False)),
                )
            )
        except (ValueError, TypeError, KeyError, AttributeError):
            continue
    return out


class L2:
    """A session's exchanges in Redis: a list of JSON exchanges at ``<prefix>:ctx:<sid>``.

    Each operation touches one key, so it works the same on Redis Cluster. A write is one
    Lua script (``MERGE``): Redis runs it atomically, so two LLM workers writing one
    session never lose each other's turn, and a redelivered turn replaces its earlier copy
    by turn id instead of adding a second one. One round trip, no retry loop (as
    WATCH/MULTI would need when two workers collide), and it returns the list it leaves,
    which the caller caches in L1. The writer also sends what its L1 knows of the session,
    and the script adds the turns Redis lacks: after a Redis restart, an expired key or a
    write that failed while Redis was down, the next write brings them back.

    Redis errors (``REDIS_DOWN``) propagate; ``ContextCache`` decides what they mean.
    """

    def __init__(self, settings: Settings) -> None:
        self.prefix = settings.prefix
        self.ttl_ms = int(settings.context_l2_ttl_s * 1000)
        options: dict[str, Any] = {
            "socket_timeout": SOCKET_TIMEOUT_S,
            "socket_connect_timeout": SOCKET_TIMEOUT_S,
            "retry": Retry(NoBackoff(), 0),  # no retries: the cache falls back instead
        }
        self.client: redis.asyncio.Redis | RedisCluster
        nodes = [n.strip() for n in settings.redis_cluster_nodes.split(",") if n.strip()]
        if nodes:
            startup = [ClusterNode(*_host_port(node)) for node in nodes]
            self.client = RedisCluster(startup_nodes=startup, **options)
            self.name = f"Redis cluster ({len(nodes)} nodes)"
        else:
            self.client = redis.asyncio.from_url(settings.redis_url, **options)
            self.name = "Redis"
        self._merge = self.client.register_script(MERGE)

    def key(self, sid: str) -> str:
        return f"{self.prefix}:ctx:{sid}"

    async def _ready(self) -> None:
        """Let a cluster client map the slots (again, after a failure) before a command.
        Its own first commands, many at once, make redis-py 8.1 fail some of them with
        "Connection closed by server"; ``initialize`` takes a lock and returns at once
        when the map is there."""
        if isinstance(self.client, RedisCluster):
            await self.client.initialize()

    async def read(self, sid: str) -> list[Exchange] | None:
        """The session's exchanges; None when Redis has none."""
        await self._ready()
        items = await self.client.lrange(self.key(sid), -KEEP, -1)
        return decode(items) if items else None

    async def merge(
        self, sid: str, exchange: Exchange | None, known: Sequence[Exchange] = ()
    ) -> list[Exchange]:
        """Store ``exchange`` (replacing the one of its turn) and the ``known`` exchanges
        (the caller's L1) that Redis lacks; refresh the TTL; return what is stored now."""
        await self._ready()
        args: list[str | int] = [KEEP, self.ttl_ms, encode(exchange) if exchange else ""]
        items = await self._merge(keys=[self.key(sid)], args=[*args, *map(encode, known)])
        return decode(items)

    async def delete(self, sids: Iterable[str]) -> None:
        await self._ready()
        for sid in sids:  # one key per command (keys of a cluster live on different nodes)
            await self.client.delete(self.key(sid))

    async def ping(self) -> None:
        await self._ready()
        await self.client.ping()

    async def close(self) -> None:
        await self.client.aclose()


def _text(exc: BaseException) -> str:
    return f"{type(exc).__name__}({exc})"


def _host_port(node: str) -> tuple[str, int]:
    host, _, port = node.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"redis_cluster_nodes: {node!r} is not host:port")
    return host, int(port)


class ContextCache:
    """A session's recent exchanges for the LLM: L1, then L2 (when ``redis_url`` or
    ``redis_cluster_nodes`` is set), then L3 (when given)."""

    def __init__(
        self, settings: Settings, l3: L3 | None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.l1 = L1(settings.context_l1_sessions, settings.context_l1_ttl_s, clock)
        self.l2 = L2(settings) if settings.redis_url or settings.redis_cluster_nodes else None
        self.l3 = l3
        self.reason = ""
        """Why the cache is degraded; empty when it is not."""
        self._clock = clock
        self._retry_at = 0.0

    @property
    def status(self) -> str:
        return "degraded" if self.reason else "ok"

    def describe(self) -> str:
        """The levels in use, e.g. ``L1 + Redis cluster (3 nodes) + PostgreSQL``."""
        levels = ["L1"]
        if self.l2 is not None:
            levels.append(self.l2.name)
        if self.l3 is not None:
            levels.append("PostgreSQL")
        return " + ".join(levels)

    async def recent(self, sid: str, limit: int, *, user: str = "") -> list[Exchange]:
        """The session's last ``limit`` exchanges (at most ``KEEP``), oldest first.
        ``user``, when known, is remembered with the L1 entry (for ``forget``).
        L3's ``Unavailable`` propagates."""
        if limit <= 0:
            return []
        shared = await self._redis(lambda l2: l2.read(sid), "read")
        if shared is not None:
            self.l1.put(sid, user, shared)
            return shared[-limit:]
        cached = self.l1.get(sid)
        if cached is None:
            cached = await self._load(sid, user)
        return cached[-limit:]

    async def add(self, sid: str, user: str, exchange: Exchange) -> None:
        """Store a finished turn in L2 and L1, replacing an exchange with the same turn.
        Never reads L3 and never raises for Redis: what this process knows of the session
        (its L1, filled by ``recent`` at the start of the turn) goes with the write, and
        L1 keeps what Redis holds now. Without an answer from Redis, the turn is merged
        into L1 when L1 has the session (else the next ``recent`` reads it from below)."""
        known = self.l1.get(sid)
        stored = await self._redis(lambda l2: l2.merge(sid, exchange, known or ()), "write")
        if stored is not None:
            self.l1.put(sid, user, stored)
        elif known is not None:
            self.l1.put(sid, user, merged(known, [exchange]))

    async def forget(self, sids: Iterable[str], user: str) -> None:
        """Drop the sessions and every session of ``user`` from L1, and the sessions' keys
        from Redis. Tries Redis even while it is marked down, and raises ``Unavailable``
        when it cannot: forgetting must not silently leave data behind."""
        sids = list(sids)
        self.l1.drop(sids)
        self.l1.drop_user(user)
        if self.l2 is None:
            return
        try:
            async with asyncio.timeout(TIMEOUT_S):
                await self.l2.delete(sids)
        except REDIS_DOWN as exc:
            self._down("delete", exc)
            raise Unavailable(f"context cache: cannot delete from Redis: {_text(exc)}") from exc
        self._up()

    async def check(self) -> str:
        """``status``, after pinging Redis unless it failed less than ``RETRY_S`` ago (for
        health checks: a degraded cache comes back to ok without any turn)."""
        await self._redis(lambda l2: l2.ping(), "ping")
        return self.status

    async def close(self) -> None:
        if self.l2 is not None:
            await self.l2.close()

    async def _load(self, sid: str, user: str) -> list[Exchange]:
        """Read L3 (L2 and L1 missed), filling L2 and L1."""
        found = await self.l3.exchanges(sid, KEEP) if self.l3 is not None else []
        if found:
            await self._redis(lambda l2: l2.merge(sid, None, found), "fill")
        self.l1.put(sid, user, found)
        return found

    async def _redis(self, op: Callable[[L2], Awaitable[T]], what: str) -> T | None:
        """``op(l2)``, or None without L2, while Redis is marked down, or when it fails."""
        if self.l2 is None or self._clock() < self._retry_at:
            return None
        try:
            async with asyncio.timeout(TIMEOUT_S):
                result = await op(self.l2)
        except REDIS_DOWN as exc:
            self._down(what, exc)
            return None
        self._up()
        return result

    def _down(self, what: str, exc: BaseException) -> None:
        if not self.reason:
            log.warning("context cache: Redis %s failed, using L1/L3: %s", what, _text(exc))
        self.reason = f"Redis {what} failed: {_text(exc)}"
        self._retry_at = self._clock() + RETRY_S

    def _up(self) -> None:
        if self.reason:
            log.info("context cache: Redis answers again")
        self.reason = ""
