"""The conversation history against real PostgreSQL servers: schema migrations, idempotent
writes, reads by session and by user, deletes, and what an unreachable server does."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio

from schemas import Unavailable
from store import migrate
from store.history import History
from store.records import Exchange
from testbed.postgres import PgServer, with_database

T0 = 1_767_225_600.0
"""2026-01-01T00:00:00Z: event times, Unix seconds."""
VERSIONS = [m.version for m in migrate.migrations()]


@pytest_asyncio.fixture
async def history(postgres_dsn: str) -> AsyncIterator[History]:
    opened = await History.open(postgres_dsn)
    try:
        yield opened
    finally:
        await opened.close()


async def turn(
    h: History, sid: str, n: int, user: str = "alice", *, reply: bool = True, at: float = T0
) -> None:
    """Turn ``t<n>`` of ``sid``: the user's words at ``at + 10 n``, the reply a second later."""
    when = at + 10 * n
    await h.record_user(sid, f"t{n}", user, f"question {n}", typed=False, at=when, stt_ms=40.0)
    if reply:
        await h.record_reply(
            sid, f"t{n}", user, f"answer {n}", cancelled=False, at=when + 1, llm_ms=300.0
        )


async def count(dsn: str, table: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        found: int = await conn.fetchval(f"SELECT count(*) FROM {table}")
        return found
    finally:
        await conn.close()


# --- migrations ---


async def test_a_fresh_database_gets_every_migration_and_a_second_start_applies_none(
    postgres_dsn: str,
) -> None:
    everything = VERSIONS
    assert everything[:2] == [1, 2]
    conn = await asyncpg.connect(postgres_dsn)
    try:
        assert await migrate.migrate(conn) == everything
        assert await migrate.migrate(conn) == []
        rows = await conn.fetch("SELECT version, name FROM morgan_schema_migrations ORDER BY 1")
        assert [(r["version"], r["name"]) for r in rows][:2] == [
            (1, "history"),
            (2, "conversation_list"),
        ]
    finally:
        await conn.close()
    opened = await History.open(postgres_dsn)  # a History's start is a second start too
    await opened.close()
    assert await count(postgres_dsn, "morgan_schema_migrations") == len(everything)


async def test_an_older_schema_is_upgraded_by_the_later_migrations_keeping_its_data(
    postgres_dsn: str, tmp_path: Path
) -> None:
    only_first = tmp_path / "migrations"
    only_first.mkdir()
    shutil.copy(migrate.FOLDER / "0001_history.sql", only_first)
    conn = await asyncpg.connect(postgres_dsn)
    try:
        assert await migrate.migrate(conn, only_first) == [1]
        # Data as a Morgan with only 0001 wrote it.
        await conn.execute(
            "INSERT INTO users (id) VALUES ('alice');"
            "INSERT INTO sessions VALUES ('s1', 'alice', now() - interval '1 hour', now());"
            "INSERT INTO turns (session_id, turn, started_at) VALUES"
            " ('s1', 't1', now() - interval '1 hour'), ('s1', 't2', now());"
            "INSERT INTO messages (session_id, turn, role, text, created_at) VALUES"
            " ('s1', 't2', 'user', 'second', now()),"
            " ('s1', 't1', 'user', 'first', now() - interval '1 hour')"
        )
        assert await migrate.migrate(conn) == [v for v in VERSIONS if v > 1]
        assert await migrate.applied(conn) == VERSIONS
        indexes = await conn.fetch("SELECT indexname FROM pg_indexes WHERE tablename = 'sessions'")
        assert "sessions_user_recent" in {r["indexname"] for r in indexes}
    finally:
        await conn.close()
    opened = await History.open(postgres_dsn)
    try:
        [summary] = await opened.conversations("alice")
        assert (summary.id, summary.title, summary.turns) == ("s1", "first", 2)
    finally:
        await opened.close()


async def test_two_processes_starting_together_apply_the_migrations_once(
    postgres_dsn: str,
) -> None:
    first, second = await asyncpg.connect(postgres_dsn), await asyncpg.connect(postgres_dsn)
    try:
        done = await asyncio.gather(migrate.migrate(first), migrate.migrate(second))
        assert sorted(done, key=len) == [[], VERSIONS]
    finally:
        await first.close()
        await second.close()
    assert await count(postgres_dsn, "morgan_schema_migrations") == len(VERSIONS)


async def test_histories_opening_together_on_a_fresh_database_all_start(
    postgres_dsn: str,
) -> None:
    opened = await asyncio.gather(*(History.open(postgres_dsn) for _ in range(4)))
    for h in opened:
        await h.ping()
        await h.close()
    assert await count(postgres_dsn, "morgan_schema_migrations") == len(VERSIONS)


# --- writes ---


async def test_the_same_events_recorded_twice_add_no_rows(
    history: History, postgres_dsn: str
) -> None:
    assert await history.record_user("s1", "t1", "alice", "hi", typed=True, at=T0, stt_ms=0.0)
    assert await history.record_reply(
        "s1", "t1", "alice", "hello", cancelled=False, at=T0 + 1, llm_ms=200, first_ms=90
    )
    before = await history.conversation("alice", "s1")
    # Again, even as published again later (a new stream time) and by another worker.
    assert not await history.record_user(
        "s1", "t1", "alice", "hi", typed=True, at=T0 + 60, worker="gateway@h:2"
    )
    assert not await history.record_reply(
        "s1", "t1", "alice", "hello", cancelled=False, at=T0 + 61, llm_ms=1, worker="llm@h:9"
    )
    counts = [await count(postgres_dsn, t) for t in ("users", "sessions", "turns", "messages")]
    assert counts == [1, 1, 1, 2]
    assert await history.conversation("alice", "s1") == before


async def test_a_turn_records_its_input_timings_and_workers(history: History) -> None:
    await history.record_user(
        "s1", "t1", "alice", "what time is it", typed=False, at=T0, stt_ms=42.0,
        worker="stt@gpu1:10",
    )  # fmt: skip
    await history.record_reply(
        "s1", "t1", "alice", "Noon.", cancelled=False, at=T0 + 2, llm_ms=310.0, first_ms=120.0,
        worker="llm@gpu2:20",
    )  # fmt: skip
    await history.record_user("s1", "t2", "alice", "thanks", typed=True, at=T0 + 10, stt_ms=5.0)
    conv = await history.conversation("alice", "s1")
    assert conv is not None
    asked, answered, typed = conv.messages
    assert (asked.role, asked.text, asked.created_at) == ("user", "what time is it", T0)
    assert (answered.role, answered.text, answered.created_at) == ("assistant", "Noon.", T0 + 2)
    assert answered.workers == {"stt": "stt@gpu1:10", "llm": "llm@gpu2:20"}
    assert (answered.input, answered.outcome) == ("voice", "done")
    assert (answered.stt_ms, answered.llm_ms, answered.first_ms) == (42.0, 310.0, 120.0)
    assert (typed.input, typed.outcome, typed.stt_ms) == ("text", None, None)
    body = conv.to_json()
    assert body["messages"][1]["created_at"] == "2026-01-01T00:00:02Z"
    assert body["messages"][1]["created_at_unix"] == T0 + 2
    assert (conv.title, conv.started_at, conv.last_turn_at) == ("what time is it", T0, T0 + 10)


async def test_a_cancelled_reply_keeps_only_what_was_spoken_and_stays_as_recorded(
    history: History,
) -> None:
    await history.record_user("s1", "t1", "alice", "tell me a story", typed=False, at=T0)
    assert await history.record_reply("s1", "t1", "alice", "Once upon", cancelled=True, at=T0 + 1)
    # The full reply arriving later (a late reply.done) does not replace what was spoken.
    assert not await history.record_reply(
        "s1", "t1", "alice", "Once upon a time there was...", cancelled=False, at=T0 + 2
    )
    assert await history.exchanges("s1", 5) == [
        Exchange("t1", "tell me a story", "Once upon", at=T0 + 1, cancelled=True)
    ]
    conv = await history.conversation("alice", "s1")
    assert conv is not None and conv.messages[1].outcome == "cancelled"


async def test_a_reply_before_its_transcript_and_an_unknown_user_are_filled_in_later(
    history: History,
) -> None:
    await history.record_reply("s1", "t1", "", "Hello!", cancelled=False, at=T0 + 1)
    assert await history.owner_of("s1") is None
    assert await history.conversation("alice", "s1") is None
    await history.record_user("s1", "t1", "alice", "hi", typed=False, at=T0)
    assert await history.owner_of("s1") == "alice"
    # A session keeps the first user it was known to belong to.
    await history.record_user("s1", "t2", "mallory", "mine now", typed=False, at=T0 + 10)
    assert await history.owner_of("s1") == "alice"
    conv = await history.conversation("alice", "s1")
    assert conv is not None
    assert [(m.turn, m.role) for m in conv.messages] == [
        ("t1", "user"),
        ("t1", "assistant"),
        ("t2", "user"),
    ]
    assert (conv.started_at, conv.title) == (T0, "hi")


async def test_text_postgresql_cannot_hold_is_stored_without_it(history: History) -> None:
    await history.record_user("s1", "t1", "alice", "nul\x00byte", typed=True, at=T0)
    conv = await history.conversation("alice", "s1")
    assert conv is not None and conv.messages[0].text == "nulbyte"


# --- reads ---


async def test_exchanges_are_the_last_turns_with_a_reply_oldest_first(history: History) -> None:
    for n in range(1, 6):
        await turn(history, "s1", n)
    await turn(history, "s1", 6, reply=False)  # not answered yet: not an exchange
    await turn(history, "s2", 1)
    last = await history.exchanges("s1", 3)
    assert [(e.turn, e.user, e.assistant) for e in last] == [
        ("t3", "question 3", "answer 3"),
        ("t4", "question 4", "answer 4"),
        ("t5", "question 5", "answer 5"),
    ]
    assert [e.at for e in last] == [T0 + 31, T0 + 41, T0 + 51]
    assert len(await history.exchanges("s1", 100)) == 5
    assert await history.exchanges("s1", 0) == []
    assert await history.exchanges("nobody", 3) == []


async def test_conversations_are_paged_newest_first_and_only_their_users(
    history: History,
) -> None:
    for n in range(5):  # s0 oldest ... s4 newest
        await turn(history, f"s{n}", 1, at=T0 + 100 * n)
        await turn(history, f"s{n}", 2, at=T0 + 100 * n)
    await turn(history, "bob1", 1, user="bob", at=T0 + 1000)
    first = await history.conversations("alice", limit=2)
    assert [c.id for c in first] == ["s4", "s3"]
    second = await history.conversations("alice", limit=2, before=first[-1].last_turn_at)
    assert [c.id for c in second] == ["s2", "s1"]
    third = await history.conversations("alice", limit=2, before=second[-1].last_turn_at)
    assert [c.id for c in third] == ["s0"]
    s4 = first[0]
    assert (s4.title, s4.turns, s4.started_at, s4.last_turn_at) == (
        "question 1",
        2,
        T0 + 410,
        T0 + 421,
    )
    assert s4.to_json()["last_turn_at"] == "2026-01-01T00:07:01Z"
    assert [c.id for c in await history.conversations("bob")] == ["bob1"]
    assert await history.conversations("carol") == []


async def test_another_users_conversation_is_invisible_and_cannot_be_deleted(
    history: History,
) -> None:
    await turn(history, "s1", 1, user="alice")
    assert await history.conversation("bob", "s1") is None
    assert not await history.delete_conversation("bob", "s1")
    assert await history.conversation("alice", "s1") is not None
    assert await history.delete_conversation("alice", "s1")
    assert await history.conversation("alice", "s1") is None
    assert await history.exchanges("s1", 5) == []
    assert not await history.delete_conversation("alice", "s1")


async def test_forgetting_a_user_removes_all_their_rows_and_nothing_of_another(
    history: History, postgres_dsn: str
) -> None:
    for sid in ("a1", "a2"):
        await turn(history, sid, 1, user="alice")
        await turn(history, sid, 2, user="alice")
    await turn(history, "b1", 1, user="bob")
    assert await history.forget_user("alice") == ["a1", "a2"]
    conn = await asyncpg.connect(postgres_dsn)
    try:
        left = {
            "users": await conn.fetch("SELECT id AS key FROM users"),
            "sessions": await conn.fetch("SELECT user_id AS key FROM sessions"),
            "turns": await conn.fetch("SELECT DISTINCT session_id AS key FROM turns"),
            "messages": await conn.fetch("SELECT DISTINCT session_id AS key FROM messages"),
        }
    finally:
        await conn.close()
    assert {table: [r["key"] for r in rows] for table, rows in left.items()} == {
        "users": ["bob"],
        "sessions": ["bob"],
        "turns": ["b1"],
        "messages": ["b1"],
    }
    assert await history.conversations("alice") == []
    assert [c.id for c in await history.conversations("bob")] == ["b1"]
    assert await history.forget_user("alice") == []


# --- reaching the database ---


async def test_an_unreachable_server_is_unavailable_and_writes_resume_when_it_is_back(
    private_postgres: PgServer,
) -> None:
    dsn = private_postgres.dsn()
    history = await History.open(dsn)
    try:
        await turn(history, "s1", 1)
        await private_postgres.stop()
        started = asyncio.get_running_loop().time()
        with pytest.raises(Unavailable):
            await turn(history, "s1", 2)
        with pytest.raises(Unavailable):
            await history.conversations("alice")
        with pytest.raises(Unavailable):
            await History.open(dsn)
        assert asyncio.get_running_loop().time() - started < 30
        await private_postgres.start()
        await retried(lambda: turn(history, "s1", 2))
        assert len(await history.exchanges("s1", 5)) == 2
    finally:
        await history.close()


async def test_a_lazy_history_connects_once_the_server_answers(
    private_postgres: PgServer,
) -> None:
    await private_postgres.stop()
    history = History.lazy(private_postgres.dsn(), migrate=True)
    try:
        with pytest.raises(Unavailable):
            await history.ping()
        await private_postgres.start()
        await history.ping()
        await turn(history, "s1", 1)
        assert len(await history.exchanges("s1", 5)) == 1
    finally:
        await history.close()


async def test_a_multi_host_dsn_writes_to_the_host_that_takes_writes(postgres_dsn: str) -> None:
    """The first host is down, the second read-only (as a standby is): the third is used."""
    down = PgServer()
    read_only = PgServer()
    try:
        async with read_only:
            target = urlparts(postgres_dsn)
            conn = await asyncpg.connect(read_only.dsn())
            try:
                await conn.execute(f'CREATE DATABASE "{target["db"]}"')
                await conn.execute("ALTER SYSTEM SET default_transaction_read_only = on")
                await conn.execute("SELECT pg_reload_conf()")
            finally:
                await conn.close()
            hosts = f"127.0.0.1:{down.port},127.0.0.1:{read_only.port},{target['hosts']}"
            dsn = f"postgresql://postgres@{hosts}/{target['db']}?target_session_attrs=read-write"
            history = await History.open(dsn)
            try:
                await turn(history, "s1", 1)
            finally:
                await history.close()
            conn = await asyncpg.connect(with_database(read_only.dsn(), target["db"]))
            try:
                assert await conn.fetchval("SELECT to_regclass('messages')") is None
            finally:
                await conn.close()
    finally:
        down.remove()
    assert await count(postgres_dsn, "messages") == 2


def urlparts(dsn: str) -> dict[str, str]:
    rest = dsn.split("://", 1)[1]
    hosts, _, db = rest.rpartition("@")[2].partition("/")
    return {"hosts": hosts, "db": db.split("?")[0]}


async def retried(write: Callable[[], Awaitable[None]], timeout: float = 30.0) -> None:
    """Call ``write()`` until it is not ``Unavailable`` (a pool's broken connections fail
    one call each after a restart)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            await write()
            return
        except Unavailable:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.2)


async def test_a_primary_that_stops_taking_writes_is_left_for_the_host_that_does(
    private_postgres: PgServer, postgres_dsn: str
) -> None:
    """As in a failover: the first host of the DSN is demoted (read-only from now on) and
    the second, which has the same schema (a replica would), is promoted. One write fails
    ``Unavailable`` on each pooled connection to the old primary; then writes go on."""
    promoted = await History.open(postgres_dsn)  # the same schema there
    await promoted.close()
    target = urlparts(postgres_dsn)
    conn = await asyncpg.connect(private_postgres.dsn())
    try:
        await conn.execute(f'CREATE DATABASE "{target["db"]}"')
    finally:
        await conn.close()
    old_primary = with_database(private_postgres.dsn(), target["db"])
    hosts = f"127.0.0.1:{private_postgres.port},{target['hosts']}"
    dsn = f"postgresql://postgres@{hosts}/{target['db']}?target_session_attrs=read-write"
    history = await History.open(dsn)
    try:
        await turn(history, "s1", 1)
        conn = await asyncpg.connect(old_primary)
        try:
            await conn.execute("ALTER SYSTEM SET default_transaction_read_only = on")
            await conn.execute("SELECT pg_reload_conf()")
        finally:
            await conn.close()
        await asyncio.sleep(1.0)  # every backend takes the reload (a signal, async)
        with pytest.raises(Unavailable):
            await turn(history, "s1", 2)
        await retried(lambda: turn(history, "s1", 2))
    finally:
        await history.close()
    assert await count(old_primary, "messages") == 2  # turn 1
    assert await count(postgres_dsn, "messages") == 2  # turn 2
