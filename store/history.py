"""Conversation history in PostgreSQL: users, sessions, turns and messages (docs/data.md).

``History`` is one asyncpg pool. The history kind writes it, one idempotent write per
event (``record_user``, ``record_reply``: a repeated event changes nothing); the LLM's
context cache reads a session's last exchanges from it (``exchanges``); the gateway's
conversations API reads and deletes a user's conversations.

Every failure that trying again can cure (the server is down, restarting, failing over,
unreachable, out of connections) is ``Unavailable``; a value PostgreSQL cannot store is
``BadInput``. Acquiring a connection and each statement give up after a few seconds, so
an unreachable host never hangs a write.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast
from urllib.parse import urlsplit

import asyncpg
from asyncpg.exceptions import _base as asyncpg_base

from schemas import BadInput, Unavailable
from store import migrate as migrations
from store import pg_hosts
from store.migrate import Connection
from store.records import Exchange

log = logging.getLogger("morgan.store.history")

CONNECT_S = 5.0
"""Opening one connection (each host of a multi-host DSN gets ``pg_hosts.HOST_S``)."""
ACQUIRE_S = 5.0
"""Waiting for a connection of the pool."""
COMMAND_S = 5.0
"""One statement."""
CLOSE_S = 10.0
"""Closing the pool gracefully before its connections are cut."""

RETRYABLE: tuple[type[BaseException], ...] = (
    OSError,  # refused, reset, unreachable
    TimeoutError,  # connect, acquire or statement timeout
    asyncpg.PostgresConnectionError,  # 08: the connection failed or is gone
    asyncpg.InterfaceError,  # the connection was closed under a statement
    asyncpg.exceptions.OperatorInterventionError,  # 57: shutdown, crash, starting, cancelled
    asyncpg.ReadOnlySQLTransactionError,  # 25006: the host is a standby now (failover)
    asyncpg.exceptions.InsufficientResourcesError,  # 53: too many connections, disk full
    asyncpg.TransactionRollbackError,  # 40: deadlock or serialization failure
    asyncpg_base.TargetServerAttributeNotMatched,  # no host takes writes (mid-failover)
)
"""Errors a later try can cure: they become ``Unavailable``."""
WRONG_HOST: tuple[type[BaseException], ...] = (asyncpg.ReadOnlySQLTransactionError,)
"""The connection's server no longer takes writes (a demoted primary): it is dropped."""
REFUSED: tuple[type[BaseException], ...] = (
    asyncpg.exceptions.DataError,  # 22: a value the server cannot store
    asyncpg_base.DataError,  # a value the driver cannot encode
)
"""Errors no retry cures: they become ``BadInput``."""
MISCONFIGURED: tuple[type[BaseException], ...] = (asyncpg_base.ClientConfigurationError,)
"""A DSN or option the driver cannot use: raised as it is (an ``InterfaceError``, but no
retry cures it)."""


def _time(at: float) -> datetime:
    return datetime.fromtimestamp(at, UTC)


def _unix(at: datetime | None) -> float | None:
    return None if at is None else at.timestamp()


def _iso(at: float | None) -> str | None:
    return None if at is None else _time(at).isoformat().replace("+00:00", "Z")


def _text(text: str) -> str:
    """PostgreSQL's text cannot hold NUL."""
    return text.replace("\x00", "")


def _stage(worker: str, default: str) -> dict[str, str]:
    """``{stage: worker}`` for a ``kind@host:pid`` worker (its kind is the stage)."""
    if not worker:
        return {}
    kind, at, _ = worker.partition("@")
    return {kind if at and kind else default: worker}


@dataclass(frozen=True)
class ConversationSummary:
    """One of a user's conversations, as the conversation list shows it."""

    id: str
    title: str
    """The first thing the user said."""
    started_at: float
    last_turn_at: float
    """Unix seconds; the list is ordered by it, newest first (the next page's cursor)."""
    turns: int

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "turns": self.turns,
            "started_at": _iso(self.started_at),
            "started_at_unix": self.started_at,
            "last_turn_at": _iso(self.last_turn_at),
            "last_turn_at_unix": self.last_turn_at,
        }


@dataclass(frozen=True)
class Message:
    """One message of a conversation, with what its turn measured."""

    turn: str
    role: str
    """``user`` or ``assistant``."""
    text: str
    """For a cancelled reply, only what was sent to be spoken."""
    created_at: float
    cancelled: bool = False
    input: str | None = None
    """The turn's input: ``voice``, ``text`` or None (not known)."""
    outcome: str | None = None
    """The turn's end: ``done``, ``cancelled`` or None (no reply yet)."""
    stt_ms: float | None = None
    llm_ms: float | None = None
    first_ms: float | None = None
    workers: Mapping[str, str] = field(default_factory=dict)
    """The turn's workers by stage (``{"stt": "stt@host:pid", "llm": ...}``)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "turn": self.turn,
            "role": self.role,
            "text": self.text,
            "created_at": _iso(self.created_at),
            "created_at_unix": self.created_at,
            "cancelled": self.cancelled,
            "input": self.input,
            "outcome": self.outcome,
            "stt_ms": self.stt_ms,
            "llm_ms": self.llm_ms,
            "first_ms": self.first_ms,
            "workers": dict(self.workers),
        }


@dataclass(frozen=True)
class Conversation:
    """A whole conversation: its messages in order, the user's before the reply."""

    id: str
    user: str
    title: str
    started_at: float
    last_turn_at: float
    messages: tuple[Message, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "user": self.user,
            "title": self.title,
            "started_at": _iso(self.started_at),
            "started_at_unix": self.started_at,
            "last_turn_at": _iso(self.last_turn_at),
            "last_turn_at_unix": self.last_turn_at,
            "messages": [m.to_json() for m in self.messages],
        }


_USER = "INSERT INTO users (id, created_at) VALUES ($1, $2) ON CONFLICT DO NOTHING"
_SESSION = """
INSERT INTO sessions (id, user_id, started_at, last_turn_at) VALUES ($1, $2, $3, $3)
ON CONFLICT (id) DO UPDATE SET user_id = coalesce(sessions.user_id, excluded.user_id)
"""
_TOUCH = """
UPDATE sessions SET started_at = least(started_at, $2), last_turn_at = greatest(last_turn_at, $2)
WHERE id = $1
"""
_TURN = """
INSERT INTO turns (session_id, turn, started_at) VALUES ($1, $2, $3)
ON CONFLICT (session_id, turn) DO UPDATE SET
    started_at = least(turns.started_at, excluded.started_at)
"""
_MESSAGE = """
INSERT INTO messages (session_id, turn, role, text, created_at, cancelled)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT DO NOTHING
RETURNING true
"""
_ASKED = """
UPDATE turns SET input = $3, stt_ms = $4, workers = workers || $5::jsonb
WHERE session_id = $1 AND turn = $2
"""
_ANSWERED = """
UPDATE turns SET ended_at = $3, outcome = $4, llm_ms = $5, first_ms = $6,
    workers = workers || $7::jsonb
WHERE session_id = $1 AND turn = $2
"""
_TITLE = """
UPDATE sessions SET title = (
    SELECT m.text FROM messages AS m
    WHERE m.session_id = $1 AND m.role = 'user'
    ORDER BY m.created_at, m.turn
    LIMIT 1
)
WHERE id = $1
"""
_EXCHANGES = """
SELECT a.turn, coalesce(u.text, '') AS asked, a.text, a.created_at, a.cancelled
FROM messages AS a
LEFT JOIN messages AS u ON u.session_id = a.session_id AND u.turn = a.turn AND u.role = 'user'
WHERE a.session_id = $1 AND a.role = 'assistant'
ORDER BY a.created_at DESC, a.turn DESC
LIMIT $2
"""
_CONVERSATIONS = """
SELECT s.id, coalesce(s.title, '') AS title, s.started_at, s.last_turn_at,
    (SELECT count(*) FROM turns AS t WHERE t.session_id = s.id) AS turns
FROM sessions AS s
WHERE s.user_id = $1 AND ($2::timestamptz IS NULL OR s.last_turn_at < $2)
ORDER BY s.last_turn_at DESC, s.id DESC
LIMIT $3
"""
_CONVERSATION = """
SELECT coalesce(title, '') AS title, started_at, last_turn_at
FROM sessions WHERE id = $1 AND user_id = $2
"""
_MESSAGES = """
SELECT m.turn, m.role, m.text, m.created_at, m.cancelled,
    t.input, t.outcome, t.stt_ms, t.llm_ms, t.first_ms, t.workers::text AS workers
FROM messages AS m JOIN turns AS t USING (session_id, turn)
WHERE m.session_id = $1
ORDER BY t.started_at, m.turn, m.role = 'assistant'
"""


class History:
    """Conversation history over an asyncpg pool (``open``, or ``lazy``: opened on first
    use). Every method raises ``Unavailable`` while the database cannot be reached."""

    def __init__(self, dsn: str, *, pool_size: int = 4, migrate: bool = True) -> None:
        self._dsn = dsn
        self._pool_size = pool_size
        self._migrate = migrate
        self._pool: asyncpg.Pool[asyncpg.Record] | None = None
        self._opening = asyncio.Lock()

    @classmethod
    async def open(cls, dsn: str, *, pool_size: int = 4, migrate: bool = True) -> History:
        """Connect (and bring the schema up to date unless ``migrate`` is False).
        ``Unavailable`` if the server cannot be reached."""
        history = cls(dsn, pool_size=pool_size, migrate=migrate)
        await history._ready()
        return history

    @classmethod
    def lazy(cls, dsn: str, *, pool_size: int = 4, migrate: bool = False) -> History:
        """A history that connects on first use (and tries again on each use until then)."""
        return cls(dsn, pool_size=pool_size, migrate=migrate)

    def describe(self) -> str:
        """``postgresql host1:port,host2:port/db``, without credentials."""
        url = urlsplit(self._dsn)
        return f"postgresql {url.netloc.rpartition('@')[2]}{url.path}"

    async def close(self) -> None:
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), CLOSE_S)
        except TimeoutError:
            pool.terminate()

    async def _ready(self) -> asyncpg.Pool[asyncpg.Record]:
        """The pool, made (and the schema migrated) if it is not yet."""
        if self._pool is not None:
            return self._pool
        async with self._opening:
            if self._pool is None:
                self._pool = await self._connect()
            return self._pool

    async def _connect(self) -> asyncpg.Pool[asyncpg.Record]:
        """A new pool that has reached the server once (and migrated it if asked).

        No connection floor (``min_size=0``): while the server is down the pool does not
        try to reconnect in the background; each use tries, and fails ``Unavailable``.
        """
        pool = asyncpg.create_pool(
            self._dsn,
            # each host of a multi-host DSN in its own time (the stub wants connect's
            # whole keyword list; the pool passes it on as **kwargs)
            connect=cast(Any, pg_hosts.connect),
            min_size=0,
            max_size=self._pool_size,
            timeout=CONNECT_S,
            command_timeout=COMMAND_S,
        )
        try:
            await pool
            async with pool.acquire(timeout=ACQUIRE_S) as conn:
                if self._migrate:
                    await migrations.migrate(conn)
                else:
                    await conn.fetchval("SELECT 1")
        except MISCONFIGURED:
            pool.terminate()
            raise
        except RETRYABLE as exc:
            pool.terminate()
            raise Unavailable(f"history database: cannot connect: {_why(exc)}") from exc
        except BaseException:
            pool.terminate()
            raise
        return pool

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[Connection]:
        """A connection of the pool; what goes wrong with it is ``Unavailable`` when a
        retry can cure it, ``BadInput`` when no retry can."""
        try:
            pool = await self._ready()
            async with pool.acquire(timeout=ACQUIRE_S) as conn:
                try:
                    yield conn
                except WRONG_HOST:
                    conn.terminate()  # the pool's next connection finds the new primary
                    raise
        except MISCONFIGURED:
            raise
        except REFUSED as exc:
            raise BadInput(f"history database refused a value: {exc}") from exc
        except RETRYABLE as exc:
            raise Unavailable(f"history database: {_why(exc)}") from exc

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Connection]:
        async with self._connection() as conn, conn.transaction():
            yield conn

    async def ping(self) -> None:
        """``Unavailable`` unless the database answers."""
        async with self._connection() as conn:
            await conn.fetchval("SELECT 1")

    # --- writes (the history kind): each one idempotent ---

    async def record_user(
        self,
        sid: str,
        turn: str,
        user: str,
        text: str,
        *,
        typed: bool,
        at: float,
        stt_ms: float | None = None,
        worker: str = "",
    ) -> bool:
        """What the user said (or typed) in a turn; True if it was not recorded before.
        ``user`` "" = not known (a later event of the session may say); ``at`` Unix seconds."""
        when = _time(at)
        async with self._transaction() as conn:
            await self._turn(conn, sid, turn, user, when)
            new = await conn.fetchval(_MESSAGE, sid, turn, "user", _text(text), when, False)
            if not new:
                return False
            await conn.execute(_TOUCH, sid, when)
            stage = json.dumps(_stage(worker, "stt"))
            source = "text" if typed else "voice"
            await conn.execute(_ASKED, sid, turn, source, None if typed else stt_ms, stage)
            await conn.execute(_TITLE, sid)
            return True

    async def record_reply(
        self,
        sid: str,
        turn: str,
        user: str,
        text: str,
        *,
        cancelled: bool,
        at: float,
        llm_ms: float | None = None,
        first_ms: float | None = None,
        worker: str = "",
    ) -> bool:
        """Morgan's reply in a turn (a cancelled one: only what was sent to be spoken);
        True if it was not recorded before. A turn's first reply stays as it was."""
        when = _time(at)
        async with self._transaction() as conn:
            await self._turn(conn, sid, turn, user, when)
            new = await conn.fetchval(
                _MESSAGE, sid, turn, "assistant", _text(text), when, cancelled
            )
            if not new:
                return False
            await conn.execute(_TOUCH, sid, when)
            outcome = "cancelled" if cancelled else "done"
            stage = json.dumps(_stage(worker, "llm"))
            await conn.execute(_ANSWERED, sid, turn, when, outcome, llm_ms, first_ms, stage)
            return True

    async def _turn(self, conn: Connection, sid: str, turn: str, user: str, when: datetime) -> None:
        """Make the user (if known), the session (its owner filled in if it had none)
        and the turn exist, in this order. Every writer locks its rows in this order (the
        session's row until it commits), so writers of one session take turns and never
        deadlock. A session's times move only with a new message (``_TOUCH``): a repeated
        event, even one published again later, changes nothing."""
        if user:
            await conn.execute(_USER, user, when)
        await conn.execute(_SESSION, sid, user or None, when)
        await conn.execute(_TURN, sid, turn, when)

    # --- reads ---

    async def exchanges(self, sid: str, limit: int) -> list[Exchange]:
        """The session's last ``limit`` turns that have a reply, oldest first."""
        if limit <= 0:
            return []
        async with self._connection() as conn:
            rows = await conn.fetch(_EXCHANGES, sid, limit)
        return [
            Exchange(
                turn=r["turn"],
                user=r["asked"],
                assistant=r["text"],
                at=r["created_at"].timestamp(),
                cancelled=r["cancelled"],
            )
            for r in reversed(rows)
        ]

    async def conversations(
        self, user: str, *, limit: int = 20, before: float | None = None
    ) -> list[ConversationSummary]:
        """The user's conversations, newest first; ``before`` (a ``last_turn_at``) pages."""
        if not user or limit <= 0:
            return []
        cursor = None if before is None else _time(before)
        async with self._connection() as conn:
            rows = await conn.fetch(_CONVERSATIONS, user, cursor, limit)
        return [
            ConversationSummary(
                id=r["id"],
                title=r["title"],
                started_at=r["started_at"].timestamp(),
                last_turn_at=r["last_turn_at"].timestamp(),
                turns=r["turns"],
            )
            for r in rows
        ]

    async def conversation(self, user: str, sid: str) -> Conversation | None:
        """The user's conversation ``sid`` with its messages; None if it is not theirs."""
        if not user:
            return None
        async with self._connection() as conn, conn.transaction(isolation="repeatable_read"):
            session = await conn.fetchrow(_CONVERSATION, sid, user)
            if session is None:
                return None
            rows = await conn.fetch(_MESSAGES, sid)
        messages = tuple(
            Message(
                turn=r["turn"],
                role=r["role"],
                text=r["text"],
                created_at=r["created_at"].timestamp(),
                cancelled=r["cancelled"],
                input=r["input"],
                outcome=r["outcome"],
                stt_ms=r["stt_ms"],
                llm_ms=r["llm_ms"],
                first_ms=r["first_ms"],
                workers=json.loads(r["workers"]),
            )
            for r in rows
        )
        return Conversation(
            id=sid,
            user=user,
            title=session["title"],
            started_at=session["started_at"].timestamp(),
            last_turn_at=session["last_turn_at"].timestamp(),
            messages=messages,
        )

    async def owner_of(self, sid: str) -> str | None:
        """The user a session belongs to; None if unknown (or no such session)."""
        async with self._connection() as conn:
            owner: str | None = await conn.fetchval(
                "SELECT user_id FROM sessions WHERE id = $1", sid
            )
        return owner

    # --- deletes (the conversations API) ---

    async def delete_conversation(self, user: str, sid: str) -> bool:
        """Delete the user's conversation ``sid``; False if it is not theirs."""
        if not user:
            return False
        async with self._connection() as conn:
            deleted = await conn.fetchval(
                "DELETE FROM sessions WHERE id = $1 AND user_id = $2 RETURNING true", sid, user
            )
        return bool(deleted)

    async def forget_user(self, user: str) -> list[str]:
        """Delete everything of ``user``; the ids of the sessions that were theirs."""
        if not user:
            return []
        async with self._transaction() as conn:
            # The user's row first, as writers lock it (its key) before their session's.
            await conn.execute("SELECT 1 FROM users WHERE id = $1 FOR UPDATE", user)
            rows = await conn.fetch("DELETE FROM sessions WHERE user_id = $1 RETURNING id", user)
            await conn.execute("DELETE FROM users WHERE id = $1", user)
        return sorted(r["id"] for r in rows)


def _why(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
