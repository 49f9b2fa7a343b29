"""The history kind against real nats-server and PostgreSQL: every turn is recorded
exactly once, through a database outage, redelivery and a worker killed mid-batch."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import asyncpg
from nats.js import JetStreamContext

from processors.history import SPEC
from schemas import ReplyDone, Subjects, Transcript
from schemas.codec import USER_HEADER, WORKER_HEADER
from store import migrate
from streams import bus, definitions
from streams.settings import Settings
from testbed.postgres import PgServer
from tests.integration.workers import ROOT, env_of, running

S = Subjects()
STT = "stt@host-a:11"
LLM = "llm@host-b:22"


async def publish_turn(js: JetStreamContext, sid: str, n: int, *, again: str = "") -> None:
    """Turn ``t<n>`` of ``sid`` as STT and the LLM publish it: alice's transcript, then the
    reply, with the ids the real processors use (``again`` makes new ids for the same
    events, so JetStream stores and delivers them a second time)."""
    await bus.publish(
        js,
        S.events(sid, Transcript.TYPE),
        Transcript(sid, f"t{n}", f"question {n}", stt_ms=40.0),
        msg_id=f"{sid}.t{n}.transcript{again}",
        headers={USER_HEADER: "alice", WORKER_HEADER: STT},
    )
    await bus.publish(
        js,
        S.events(sid, ReplyDone.TYPE),
        ReplyDone(sid, f"t{n}", f"answer {n}", sentences=1, llm_ms=300.0, first_ms=90.0),
        msg_id=f"{sid}.t{n}.done{again}",
        headers={USER_HEADER: "alice", WORKER_HEADER: LLM},
    )


class Rows:
    """Looks at what the history holds, through a connection of its own."""

    def __init__(self, conn: asyncpg.Connection) -> None:
        self.conn = conn

    async def count(self, table: str = "messages") -> int:
        found: int = await self.conn.fetchval(f"SELECT count(*) FROM {table}")
        return found

    async def until(self, messages: int, timeout: float = 90.0) -> None:
        """Wait until the history holds ``messages`` messages."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (found := await self.count()) < messages:
            assert loop.time() < deadline, f"{found} of {messages} messages recorded in time"
            await asyncio.sleep(0.1)

    async def turns(self) -> list[tuple[str, str, str, str, str, str]]:
        """(session, turn, owner, outcome, the user's words, the reply) of every turn."""
        rows = await self.conn.fetch(
            "SELECT t.session_id, t.turn, s.user_id, t.outcome, u.text AS asked, a.text"
            " FROM turns t JOIN sessions s ON s.id = t.session_id"
            " JOIN messages u ON (u.session_id, u.turn, u.role) = (t.session_id, t.turn, 'user')"
            " JOIN messages a"
            "  ON (a.session_id, a.turn, a.role) = (t.session_id, t.turn, 'assistant')"
            " ORDER BY 1, 2"
        )
        return [tuple(r.values()) for r in rows]


def expected(sid: str, numbers: range) -> list[tuple[str, str, str, str, str, str]]:
    return [
        (sid, f"t{n}", "alice", "done", f"question {n}", f"answer {n}")
        for n in sorted(numbers, key=lambda n: f"t{n}")
    ]


async def test_turns_published_while_postgresql_is_down_are_recorded_once_it_is_back(
    settings: Settings, js: JetStreamContext, private_postgres: PgServer
) -> None:
    with_db = settings.model_copy(update={"database_url": private_postgres.dsn()})
    async with running(SPEC, with_db) as worker:
        conn = await asyncpg.connect(private_postgres.dsn())
        for n in range(1, 21):
            await publish_turn(js, "s1", n)
            if n == 5:
                await Rows(conn).until(10)
                await conn.close()
                await private_postgres.stop()
            elif n == 15:
                await private_postgres.start()
            await asyncio.sleep(0.2)
        conn = await asyncpg.connect(private_postgres.dsn())
        try:
            rows = Rows(conn)
            await rows.until(40)
            await until_acked(js)
            assert await rows.turns() == expected("s1", range(1, 21))
            assert [await rows.count(t) for t in ("sessions", "turns", "messages")] == [1, 20, 40]
            assert worker.failed == 0
            # Each turn has the time it was published, not the time it was written.
            times = await conn.fetch(
                "SELECT turn FROM messages WHERE role = 'user' ORDER BY created_at"
            )
            assert [r["turn"] for r in times] == [f"t{n}" for n in range(1, 21)]
            workers = await conn.fetch("SELECT DISTINCT workers::text AS w FROM turns")
            assert [r["w"] for r in workers] == [f'{{"llm": "{LLM}", "stt": "{STT}"}}']
        finally:
            await conn.close()


async def test_events_delivered_again_add_no_rows(
    settings: Settings, js: JetStreamContext, postgres_dsn: str
) -> None:
    with_db = settings.model_copy(update={"database_url": postgres_dsn})
    conn = await asyncpg.connect(postgres_dsn)
    try:
        rows = Rows(conn)
        async with running(SPEC, with_db) as worker:
            for n in range(1, 6):
                await publish_turn(js, "s1", n)
            await rows.until(10)
            before = [tuple(r.values()) for r in await conn.fetch("SELECT * FROM sessions")]
            for n in range(1, 6):
                await publish_turn(js, "s1", n, again=".again")
            await until_acked(js)
            assert worker.handled == 20
        assert await rows.turns() == expected("s1", range(1, 6))
        assert await rows.count() == 10
        assert [tuple(r.values()) for r in await conn.fetch("SELECT * FROM sessions")] == before
    finally:
        await conn.close()


async def test_a_worker_killed_mid_batch_leaves_exactly_one_row_per_message(
    settings: Settings, js: JetStreamContext, postgres_dsn: str, tmp_path: Path
) -> None:
    """300 events of 10 sessions. The test holds session k0's row (an uncommitted insert),
    so the first worker writes turns of the other sessions while its writes of k0 wait
    in open transactions (each until its statement times out, and again). It is
    SIGKILLed while one does: some turns written, some in flight, others never fetched.
    A second worker writes the rest, and the in-flight ones again."""
    child_settings = settings.model_copy(
        update={"database_url": postgres_dsn, "work_ack_wait_s": 3.0}
    )
    sessions, per_session = 10, 15
    for n in range(1, per_session + 1):
        for k in range(sessions):
            await publish_turn(js, f"k{k}", n)
    total = 2 * sessions * per_session
    conn = await asyncpg.connect(postgres_dsn)
    try:
        await migrate.migrate(conn)
        rows = Rows(conn)
        first = HistoryChild(child_settings, tmp_path / "first.log")
        try:
            async with conn.transaction():
                await conn.execute(
                    "INSERT INTO sessions (id, started_at, last_turn_at)"
                    " VALUES ('k0', now(), now())"
                )
                await first.wait_ready()
                await rows.until(20)
                await until_blocked(postgres_dsn)
                first.kill()
                assert await rows.count() < total
                raise Rollback()
        except Rollback:
            pass
        finally:
            first.kill()
        second = HistoryChild(child_settings, tmp_path / "second.log")
        try:
            await second.wait_ready()
            await rows.until(total)
            await until_acked(js)
        finally:
            second.kill()
        assert await rows.count() == total
        assert await rows.count("turns") == total // 2
        assert await rows.turns() == sorted(
            t for k in range(sessions) for t in expected(f"k{k}", range(1, per_session + 1))
        )
    finally:
        await conn.close()


class Rollback(Exception):
    """Leaves an ``async with conn.transaction()`` block rolling it back."""


async def test_a_history_worker_started_before_postgresql_waits_for_it(
    settings: Settings, js: JetStreamContext, private_postgres: PgServer
) -> None:
    await private_postgres.stop()
    with_db = settings.model_copy(update={"database_url": private_postgres.dsn()})

    async def start_later() -> None:
        await asyncio.sleep(2.0)
        await private_postgres.start()

    later = asyncio.create_task(start_later())
    await publish_turn(js, "s1", 1)
    async with running(SPEC, with_db):
        assert later.done(), "the worker was ready before its database"
        conn = await asyncpg.connect(private_postgres.dsn())
        try:
            await Rows(conn).until(2)
            assert await Rows(conn).turns() == expected("s1", range(1, 2))
        finally:
            await conn.close()
    await later


class HistoryChild:
    """A history worker as a process of its own (the kind is not in the registry, so
    ``python -m processors history`` cannot run it), to SIGKILL."""

    SCRIPT = (
        "import asyncio\n"
        "from processors.history import SPEC\n"
        "from processors.runtime import Worker\n"
        "from streams import logs\n"
        "from streams.settings import Settings\n"
        "settings = Settings.from_env()\n"
        "logs.setup(settings, 'history', worker=logs.default_worker('history'))\n"
        "asyncio.run(Worker(SPEC, settings, ('cpu',)).serve(asyncio.Event()))\n"
    )

    def __init__(self, settings: Settings, log: Path) -> None:
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", self.SCRIPT],
                env=env_of(settings),
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=out,
            )

    async def wait_ready(self, timeout: float = 120.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while b" ready on " not in self.log.read_bytes():
            if self.proc.poll() is not None or loop.time() > deadline:
                self.kill()
                raise RuntimeError(self.log.read_text(errors="replace"))
            await asyncio.sleep(0.1)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)


async def until_blocked(dsn: str, timeout: float = 60.0) -> None:
    """Wait until a session of the database waits for a lock (the test's). Asked on a
    connection of its own: within a transaction, pg_stat_activity does not change."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    conn = await asyncpg.connect(dsn)
    try:
        while not await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND wait_event_type = 'Lock'"
        ):
            assert loop.time() < deadline, "no write of the worker waited for the test's lock"
            await asyncio.sleep(0.05)
    finally:
        await conn.close()


async def until_acked(js: JetStreamContext, timeout: float = 90.0) -> None:
    """Wait until the history consumer has nothing pending and nothing unacked."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        info = await js.consumer_info(definitions.EVENTS, SPEC.durable())
        if info.num_pending == 0 and info.num_ack_pending == 0:
            return
        assert loop.time() < deadline, f"history consumer still has work: {info}"
        await asyncio.sleep(0.1)
