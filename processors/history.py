"""The ``history`` kind: every turn's transcript and reply, written to PostgreSQL.

An event tap on ``transcript``, ``reply.done`` and ``reply.cancelled`` (docs/data.md).
Each event is one idempotent write (``store.history``), so a redelivered event adds
nothing. While PostgreSQL is unreachable a write raises ``Unavailable``: the runtime naks
it with backoff and, with no delivery limit, keeps it until the database is back; the
EVENTS stream is the write queue. The loader waits for the database the same way, so a
history worker may start before it.
"""

from __future__ import annotations

import asyncio
import logging

from processors.context import Context
from processors.spec import EventTap, Spec
from schemas import Message, ReplyCancelled, ReplyDone, Transcript, Unavailable
from store.history import History
from streams.settings import Settings

log = logging.getLogger("morgan.history")

RETRY_FIRST_S = 0.5
RETRY_MOST_S = 15.0
"""The loader's backoff while the database is unreachable: 0.5 s doubling to 15 s."""


class NoDatabase(ValueError):
    """The history kind runs only with a database (``MORGAN_DATABASE_URL``)."""


async def load(settings: Settings, tiers: tuple[str, ...]) -> History:
    """The history's pool, with the schema brought up to date; waits (and logs) while
    the database is unreachable."""
    if not settings.database_url:
        raise NoDatabase(
            "the history kind needs a PostgreSQL database: set MORGAN_DATABASE_URL "
            "(e.g. postgresql://morgan@db1:5432,db2:5432/morgan?target_session_attrs=read-write)"
        )
    delay = RETRY_FIRST_S
    while True:
        try:
            return await History.open(settings.database_url, pool_size=settings.database_pool_size)
        except Unavailable as exc:
            log.warning("history: database unreachable, trying again in %.1f s: %s", delay, exc)
            await asyncio.sleep(delay)
            delay = min(delay * 2, RETRY_MOST_S)


async def unload(history: History) -> None:
    await history.close()


def describe(history: History) -> str:
    return history.describe()


async def health(history: History) -> str:
    """Why the worker is degraded ("" = it is not): its database does not answer (events
    wait in the stream meanwhile)."""
    try:
        await history.ping()
    except Unavailable as exc:
        return f"history database: {exc}"
    return ""


async def handle(msg: Message, ctx: Context) -> None:
    history: History = ctx.state
    worker, at = ctx.sent_by, ctx.sent_at
    if isinstance(msg, Transcript):
        await history.record_user(
            msg.sid,
            msg.turn,
            ctx.user,
            msg.text,
            typed=msg.typed,
            at=at,
            stt_ms=msg.stt_ms,
            worker=worker,
        )
    elif isinstance(msg, ReplyDone):
        await history.record_reply(
            msg.sid,
            msg.turn,
            ctx.user,
            msg.text,
            cancelled=False,
            at=at,
            llm_ms=msg.llm_ms,
            first_ms=msg.first_ms,
            worker=worker,
        )
    elif isinstance(msg, ReplyCancelled):
        await history.record_reply(
            msg.sid, msg.turn, ctx.user, msg.spoken, cancelled=True, at=at, worker=worker
        )


SPEC = Spec(
    kind="history",
    input=EventTap(("transcript", "reply.done", "reply.cancelled"), from_start=True),
    accepts=(Transcript, ReplyDone, ReplyCancelled),
    publishes=(),
    load=load,
    unload=unload,
    describe=describe,
    health=health,
    handle=handle,
    # A write takes milliseconds; an unreachable host gives up within about 10 s
    # (acquire + statement timeouts) and the runtime heartbeats meanwhile. The ack wait
    # only says how soon a dead worker's events move to another: nobody waits on history.
    ack_wait_s=10.0,
    max_deliver=-1,  # never drop a turn: redelivered until the database takes it
    concurrency=8,  # writes of one session queue on its row; different sessions do not
)
