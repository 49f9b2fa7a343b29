"""Conversation history keeps being written while PostgreSQL fails over (Patroni).

A primary and a synchronous streaming replica run on two namespaced hosts, etcd on a
third (testbed/patroni.py). The primary's host is killed outright (link down, every
process SIGKILLed) while turns keep coming; Patroni promotes the replica, and the one
history worker, never restarted, finds it through the multi-host DSN
(``target_session_attrs=read-write``). Every turn ends up in the new primary exactly once.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from nats.js import JetStreamContext

from schemas.codec import USER_HEADER, WORKER_HEADER
from schemas.events import ReplyDone, Transcript
from schemas.subjects import Subjects
from streams import bus, embedded
from streams.settings import Settings
from testbed import netns, patroni

pytestmark = pytest.mark.netns

HOSTS = ["etcd", "db1", "db2"]
SID = "hist-failover"
USER = "alice"
TURNS = 30
KILL_AFTER = 10
"""Turns published before the primary's host dies."""
PERIOD_S = 1 / 3
"""Between turns (a transcript and a reply.done each)."""
SETTLE_S = 90.0
"""Most time for every turn to reach the new primary after the last is published."""


@pytest.fixture(scope="module")
def net(
    network_factory: type[netns.Network], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[netns.Network]:
    reason = patroni.available()
    if reason is not None:
        pytest.skip(reason)
    network = network_factory(HOSTS, tmp_path_factory.mktemp("pg")).up()
    try:
        yield network
    finally:
        network.down()


@pytest_asyncio.fixture
async def pg(net: netns.Network) -> AsyncIterator[patroni.Patroni]:
    """A fresh cluster per test (each kills a host); db1 starts as the primary."""
    async with patroni.cluster(net["etcd"], [net["db1"], net["db2"]]) as cluster:
        yield cluster


class Counter:
    """Counts rows of a table on one member every 0.1 s; notes when the count first grew
    after ``mark()`` (the member can only grow by itself: its primary is gone)."""

    def __init__(self, conn: asyncpg.Connection, table: str) -> None:
        self.conn = conn
        self.table = table
        self.count = 0
        self.marked = -1
        self.grew_at = 0.0

    async def run(self) -> None:
        while True:
            try:
                self.count = await self.conn.fetchval(f"SELECT count(*) FROM {self.table}")
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                pass  # the standby restarting as primary: ask again
            if 0 <= self.marked < self.count and not self.grew_at:
                self.grew_at = time.monotonic()
            await asyncio.sleep(0.1)

    def mark(self) -> None:
        self.marked = self.count


def replica_of(pg: patroni.Patroni, primary: str) -> str:
    return next(name for name in pg.hosts if name != primary)


async def test_plain_asyncpg_writes_reach_the_promoted_replica(pg: patroni.Patroni) -> None:
    """The harness and the DSN alone: one pool, a write every 0.2 s, failed writes tried
    again (as the runtime redelivers), the primary's host killed mid-way."""
    old = await pg.leader()
    assert old == "db1"
    pool = await asyncpg.create_pool(pg.dsn, min_size=1, max_size=2, timeout=5, command_timeout=5)
    await pool.execute("CREATE TABLE w (i int PRIMARY KEY)")
    replica = await asyncpg.connect(pg.dsn_of(replica_of(pg, old)))
    counter = Counter(replica, "w")
    counting = asyncio.create_task(counter.run())
    failed = 0
    try:
        for i in range(60):
            if i == 15:
                await asyncio.sleep(0.5)  # the counter's last look before the kill
                pg.kill_host(old)
                counter.mark()
                promoted = asyncio.create_task(pg.wait_promoted(60))
            while True:
                try:
                    await pool.execute("INSERT INTO w VALUES ($1) ON CONFLICT DO NOTHING", i)
                    break
                except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
                    failed += 1
                    await asyncio.sleep(0.5)
            await asyncio.sleep(0.2)
        new = await promoted
        rows = await pool.fetch("SELECT i FROM w ORDER BY i")
    finally:
        counting.cancel()
        await replica.close()
        pool.terminate()
    print(
        f"asyncpg: promoted {new} in {pg.promoted_at - pg.killed_at:.1f} s, first write on it "
        f"{counter.grew_at - pg.killed_at:.1f} s after the kill, {failed} failed tries"
    )
    assert new == "db2"
    assert [r["i"] for r in rows] == list(range(60))
    assert counter.grew_at > pg.killed_at


WORKER = """
import asyncio, signal
from processors.history import SPEC
from processors.runtime import Worker
from streams import logs
from streams.settings import Settings

async def main() -> None:
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await Worker(SPEC, settings, ()).serve(stop)

settings = Settings.from_env()
logs.setup(settings, "history", worker=logs.default_worker("history"))
asyncio.run(main())
"""
"""The history kind's Worker, run the way ``python -m processors KIND`` runs a kind."""


def start_history_worker(nats_url: str, dsn: str, workdir: Path) -> subprocess.Popen[bytes]:
    """One history worker in the root namespace (it reaches the database hosts through
    the test's veth), configured only through MORGAN_* variables."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MORGAN_")}
    env |= {
        "PYTHONPATH": str(netns.ROOT),
        "MORGAN_NATS_URL": nats_url,
        "MORGAN_DATABASE_URL": dsn,
        "MORGAN_DATA_DIR": str(workdir / "data"),
        "MORGAN_LOG_LEVEL": "INFO",
    }
    with (workdir / "history.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-c", WORKER],
            cwd=netns.ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )


async def wait_logged(proc: subprocess.Popen[bytes], log: Path, line: bytes) -> None:
    deadline = time.monotonic() + 60
    while line not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"history worker not ready:\n{log.read_text()[-4000:]}")
        await asyncio.sleep(0.2)


async def publish_turn(js: JetStreamContext, subjects: Subjects, i: int) -> None:
    turn = f"t{i:03d}"
    headers = {USER_HEADER: USER, WORKER_HEADER: "test@failover:1"}
    asked = Transcript(SID, turn, f"question {i}", stt_ms=40.0)
    done = ReplyDone(SID, turn, f"answer {i}", sentences=1, llm_ms=300.0, first_ms=90.0)
    for event, tail in ((asked, "transcript"), (done, "done")):
        subject = subjects.events(SID, event.TYPE)
        await bus.publish(js, subject, event, msg_id=f"{SID}.{turn}.{tail}", headers=headers)


async def test_history_keeps_every_turn_through_a_postgres_failover(
    pg: patroni.Patroni, nats_server: embedded.EmbeddedNats, tmp_path: Path
) -> None:
    old = await pg.leader()
    assert old == "db1"
    settings = Settings(nats_url=nats_server.url, data_dir=tmp_path / "data")
    worker = start_history_worker(nats_server.url, pg.dsn, tmp_path)
    log = tmp_path / "history.log"
    nc = await bus.connect(settings, "failover-test")
    replica = await asyncpg.connect(pg.dsn_of(replica_of(pg, old)))
    counter = Counter(replica, "messages")
    counting = asyncio.create_task(counter.run())
    try:
        await wait_logged(worker, log, b" ready on ")
        pid = worker.pid
        js = nc.jetstream()
        subjects = Subjects(settings.prefix)
        for i in range(TURNS):
            if i == KILL_AFTER:
                await asyncio.sleep(1.0)  # the first turns written and replicated
                pg.kill_host(old)
                counter.mark()
                promoted = asyncio.create_task(pg.wait_promoted(60))
            await publish_turn(js, subjects, i)
            await asyncio.sleep(PERIOD_S)
        new = await promoted
        deadline = time.monotonic() + SETTLE_S
        while counter.count < 2 * TURNS and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
        rows = await replica.fetch("SELECT turn, role, text FROM messages ORDER BY turn, role")
        turns = await replica.fetchval("SELECT count(*) FROM turns WHERE session_id = $1", SID)
        owner = await replica.fetchval("SELECT user_id FROM sessions WHERE id = $1", SID)
    finally:
        counting.cancel()
        await replica.close()
        await nc.close()
        alive = worker.poll() is None
        worker.terminate()
        worker.wait(30)
    history = log.read_text()
    print(
        f"history: promoted {new} in {pg.promoted_at - pg.killed_at:.1f} s, first write on "
        f"it {counter.grew_at - pg.killed_at:.1f} s after the kill, every turn in "
        f"{time.monotonic() - pg.killed_at:.1f} s"
    )
    assert new == "db2"
    expected = [
        (f"t{i:03d}", role, f"{word} {i}")
        for i in range(TURNS)
        for role, word in (("assistant", "answer"), ("user", "question"))
    ]
    assert [tuple(r) for r in rows] == expected, history[-4000:]
    assert turns == TURNS and owner == USER
    assert alive and worker.pid == pid and history.count(" ready on ") == 1, history[-4000:]
    assert counter.grew_at > pg.killed_at
