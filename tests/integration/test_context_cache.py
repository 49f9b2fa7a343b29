"""The context cache on real Redis: a private redis-server, and a private 3-node Redis
Cluster (testbed/redis_nodes.py). L3 is a dict here; the history has its own tests."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest
import pytest_asyncio
import redis.asyncio
from redis.asyncio.cluster import ClusterNode, RedisCluster

from schemas import Unavailable
from store import context_cache
from store.context_cache import ContextCache, decode
from store.records import Exchange
from streams.settings import Settings
from testbed import redis_nodes
from testbed.redis_nodes import (
    RedisNode,
    cluster_nodes,
    redis_cluster,
    redis_node,
    wait_cluster_ok,
)
from tests.context_helpers import DictL3

pytestmark = pytest.mark.skipif(not redis_nodes.installed(), reason="redis-server not installed")


def ex(turn: str, reply: str = "hello") -> Exchange:
    return Exchange(turn=turn, user=f"question {turn}", assistant=reply, at=time.time())


@dataclass
class Backend:
    """A running Redis (one node or a cluster) and the settings that reach it."""

    nodes: list[RedisNode]
    cluster: bool

    def settings(self, prefix: str, **fields: float) -> Settings:
        if self.cluster:
            where = {"redis_url": "", "redis_cluster_nodes": cluster_nodes(self.nodes)}
        else:
            where = {"redis_url": self.nodes[0].url, "redis_cluster_nodes": ""}
        return Settings(prefix=prefix, **where, **fields)  # type: ignore[arg-type]

    def client(self) -> redis.asyncio.Redis | RedisCluster:
        """A plain client, to look at what the cache stored."""
        if self.cluster:
            startup = [ClusterNode("127.0.0.1", node.port) for node in self.nodes]
            return RedisCluster(startup_nodes=startup)
        return redis.asyncio.from_url(self.nodes[0].url)

    async def commands_processed(self, clients: list[redis.asyncio.Redis]) -> int:
        """Commands the nodes have run (``clients``: one per node, kept open, so each call
        adds just its own INFO to the next one's count)."""
        stats = [await client.info("stats") for client in clients]
        return sum(int(s["total_commands_processed"]) for s in stats)


@pytest.fixture(scope="module", params=["redis", "cluster"])
def backend(request: pytest.FixtureRequest) -> Iterator[Backend]:
    if request.param == "cluster":
        with redis_cluster(3) as nodes:
            yield Backend(nodes, cluster=True)
    else:
        with redis_node() as node:
            yield Backend([node], cluster=False)


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:12]}"


@pytest_asyncio.fixture
async def raw(backend: Backend, prefix: str) -> AsyncIterator[redis.asyncio.Redis | RedisCluster]:
    """A plain client; the test's keys are deleted afterwards."""
    client = backend.client()
    try:
        yield client
    finally:
        async for key in client.scan_iter(match=f"{prefix}:*"):
            await client.delete(key)
        await client.aclose()


async def stored(raw: redis.asyncio.Redis | RedisCluster, prefix: str, sid: str) -> list[Exchange]:
    return decode(await raw.lrange(f"{prefix}:ctx:{sid}", 0, -1))


@pytest_asyncio.fixture
async def caches(backend: Backend, prefix: str) -> AsyncIterator[list[ContextCache]]:
    """Two caches on the same Redis: two LLM workers. Their L3 is empty."""
    made = [ContextCache(backend.settings(prefix), DictL3()) for _ in range(2)]
    try:
        yield made
    finally:
        for cache in made:
            await cache.close()


async def test_describe_names_the_levels(backend: Backend, caches: list[ContextCache]) -> None:
    expected = (
        "L1 + Redis cluster (3 nodes) + PostgreSQL"
        if backend.cluster
        else "L1 + Redis + PostgreSQL"
    )
    assert caches[0].describe() == expected


async def test_while_redis_answers_each_read_goes_to_it_so_other_workers_turns_are_seen(
    backend: Backend, caches: list[ContextCache]
) -> None:
    a, b = caches
    await a.add("s", "alice", ex("t1"))
    assert [e.turn for e in await a.recent("s", 4)] == ["t1"]  # now in a's L1
    await b.add("s", "alice", ex("t2"))  # the next turn, answered by another worker
    clients = [redis.asyncio.from_url(node.url) for node in backend.nodes]
    try:
        before = await backend.commands_processed(clients)
        assert [e.turn for e in await a.recent("s", 4)] == ["t1", "t2"]
        after = await backend.commands_processed(clients)
    finally:
        for client in clients:
            await client.aclose()
    assert after - before == len(backend.nodes) + 1  # the INFO on each node and one read


async def test_a_turn_added_by_one_worker_is_read_from_l2_by_another(
    raw: redis.asyncio.Redis | RedisCluster, prefix: str, caches: list[ContextCache]
) -> None:
    a, b = caches
    await a.add("s", "alice", ex("t1", "first"))
    await a.add("s", "alice", ex("t2", "second"))
    got = await b.recent("s", 4)
    assert [(e.turn, e.assistant) for e in got] == [("t1", "first"), ("t2", "second")]
    assert isinstance(b.l3, DictL3) and b.l3.reads == 0
    assert await stored(raw, prefix, "s") == got
    assert a.status == b.status == "ok"


async def test_a_cold_cache_reads_l3_and_fills_l1_and_l2(
    backend: Backend, raw: redis.asyncio.Redis | RedisCluster, prefix: str
) -> None:
    history = [ex(f"t{i}") for i in range(40)]
    l3 = DictL3({"s": history})
    cold = ContextCache(backend.settings(prefix), l3)
    other = ContextCache(backend.settings(prefix), DictL3())
    try:
        assert await cold.recent("s", 3) == history[-3:]
        assert l3.reads == 1
        assert await stored(raw, prefix, "s") == history[-context_cache.KEEP :]
        assert await raw.pttl(f"{prefix}:ctx:s") > 0
        assert await cold.recent("s", 5) == history[-5:]  # from L1
        assert l3.reads == 1
        assert await other.recent("s", 3) == history[-3:]  # from L2
    finally:
        await cold.close()
        await other.close()


async def test_concurrent_adds_from_two_workers_keep_every_turn(
    raw: redis.asyncio.Redis | RedisCluster, prefix: str, caches: list[ContextCache]
) -> None:
    a, b = caches
    await asyncio.gather(
        *(cache.add("s", "alice", ex(f"{cache is a}-{i}")) for i in range(10) for cache in (a, b))
    )
    assert (a.reason, b.reason) == ("", "")
    turns = [e.turn for e in await stored(raw, prefix, "s")]
    assert sorted(turns) == sorted(f"{w}-{i}" for i in range(10) for w in (True, False))


async def test_a_redelivered_turn_is_stored_once(
    raw: redis.asyncio.Redis | RedisCluster, prefix: str, caches: list[ContextCache]
) -> None:
    a, b = caches
    await a.add("s", "alice", ex("t1"))
    await a.add("s", "alice", ex("t2", "the first try"))
    await b.add("s", "alice", ex("t2", "the redelivery"))
    assert [(e.turn, e.assistant) for e in await stored(raw, prefix, "s")] == [
        ("t1", "hello"),
        ("t2", "the redelivery"),
    ]
    assert [e.assistant for e in await b.recent("s", 4)] == ["hello", "the redelivery"]


async def test_each_write_sets_the_l2_ttl(
    backend: Backend, raw: redis.asyncio.Redis | RedisCluster, prefix: str
) -> None:
    cache = ContextCache(backend.settings(prefix, context_l2_ttl_s=100), None)
    key = f"{prefix}:ctx:s"
    try:
        await cache.add("s", "alice", ex("t1"))
        assert 99_000 < await raw.pttl(key) <= 100_000
        await raw.pexpire(key, 5_000)
        await cache.add("s", "alice", ex("t2"))
        assert 99_000 < await raw.pttl(key) <= 100_000
    finally:
        await cache.close()


async def test_only_the_last_32_exchanges_are_kept(
    raw: redis.asyncio.Redis | RedisCluster, prefix: str, caches: list[ContextCache]
) -> None:
    a, b = caches
    for i in range(40):
        await a.add("s", "alice", ex(f"t{i}"))
    assert [e.turn for e in await stored(raw, prefix, "s")] == [f"t{i}" for i in range(8, 40)]
    assert [e.turn for e in await b.recent("s", 100)] == [f"t{i}" for i in range(8, 40)]


async def test_forget_removes_the_sessions_from_redis_and_l1(
    raw: redis.asyncio.Redis | RedisCluster, prefix: str, caches: list[ContextCache]
) -> None:
    a, b = caches
    sids = [f"alice-{i}" for i in range(6)]  # several keys: on different cluster nodes
    for sid in sids:
        await a.add(sid, "alice", ex("t1"))
    await b.add("bob-1", "bob", ex("t1"))
    await b.recent(sids[0], 4, user="alice")  # b has one of alice's sessions in L1 as well
    await a.add("alice-new", "alice", ex("t1"))  # one the caller does not list
    await a.forget(sids, "alice")
    assert await raw.exists(*(f"{prefix}:ctx:{sid}" for sid in sids)) == 0
    assert a.l1.get("alice-new") is None  # dropped from L1 by its user
    assert await stored(raw, prefix, "bob-1") != []
    await b.forget([], "alice")  # the broadcast: each worker drops the user's sessions
    assert b.l1.get(sids[0]) is None
    assert await b.recent(sids[0], 4) == []  # not in L1, L2 or (this test's) L3


@pytest.fixture
def node() -> Iterator[RedisNode]:
    """A Redis of this test's own, to stop and start."""
    with redis_node() as one:
        yield one


async def test_redis_stopped_mid_conversation(
    node: RedisNode, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(prefix="outage", redis_url=node.url, redis_cluster_nodes="")
    history: dict[str, list[Exchange]] = {}
    a, b = ContextCache(settings, DictL3(history)), ContextCache(settings, DictL3(history))
    try:
        for turn in ("t1", "t2"):
            await a.add("s", "alice", ex(turn))
            history.setdefault("s", []).append(ex(turn))  # the history writer's part
        node.stop()

        started = time.monotonic()
        assert [e.turn for e in await a.recent("s", 4)] == ["t1", "t2"]  # L1
        await a.add("s", "alice", ex("t3"))  # does not raise
        history["s"].append(ex("t3"))
        assert time.monotonic() - started < context_cache.TIMEOUT_S
        assert a.status == "degraded" and "read" in a.reason
        assert [e.turn for e in await b.recent("s", 4)] == ["t1", "t2", "t3"]  # L3
        assert b.status == "degraded"
        with pytest.raises(Unavailable):
            await a.forget(["other"], "nobody")

        started = time.monotonic()
        for i in range(20):  # Redis is not tried again for a while: turns cost nothing
            await b.add("s", "alice", ex(f"during-{i}"))
        assert time.monotonic() - started < 0.1
        warnings = [
            r for r in caplog.records if r.name == "morgan.context" and r.levelno == logging.WARNING
        ]
        assert len(warnings) == 2  # one per cache, not one per call

        node.start()
        deadline = time.monotonic() + context_cache.RETRY_S + 3
        while a.status != "ok":
            assert time.monotonic() < deadline, a.reason
            await a.add("s", "alice", ex("t4"))
            await asyncio.sleep(0.2)
        assert a.reason == ""
        async with redis.asyncio.from_url(node.url) as raw:
            # the restarted Redis was empty: the first write brought what L1 knew
            assert [e.turn for e in await stored(raw, "outage", "s")] == ["t1", "t2", "t3", "t4"]
        await asyncio.sleep(context_cache.RETRY_S)  # b failed less than that ago
        assert b.status == "degraded"
        assert await b.check() == "ok"  # a health check brings it back with no turn
    finally:
        await a.close()
        await b.close()


async def test_a_hanging_redis_costs_a_turn_at_most_the_timeout(node: RedisNode) -> None:
    settings = Settings(prefix="hang", redis_url=node.url, redis_cluster_nodes="")
    cache = ContextCache(settings, DictL3({"s": [ex("t1")]}))
    try:
        await cache.add("s", "alice", ex("t2"))  # connected while Redis answers
        cache.l1.drop(["s"])
        node.pause()
        started = time.monotonic()
        assert [e.turn for e in await cache.recent("s", 4)] == ["t1"]  # L3
        await cache.add("s", "alice", ex("t3"))
        assert time.monotonic() - started < context_cache.TIMEOUT_S + 0.5
        assert cache.status == "degraded"
    finally:
        node.resume()
        await cache.close()


async def test_a_cluster_node_killed_and_restarted() -> None:
    with redis_cluster(3) as nodes:
        settings = Backend(nodes, cluster=True).settings("nodekill")
        history = {f"s{i}": [ex("t1")] for i in range(6)}  # keys on every node
        a, b = ContextCache(settings, DictL3(history)), ContextCache(settings, DictL3(history))
        try:
            for sid in history:
                await a.add(sid, "alice", ex("t1"))
            nodes[0].kill()

            started = time.monotonic()
            for sid in history:
                assert [e.turn for e in await a.recent(sid, 4)] == ["t1"]  # L1
                await a.add(sid, "alice", ex("t2"))
                assert [e.turn for e in await b.recent(sid, 4)] in (["t1"], ["t1", "t2"])
            assert time.monotonic() - started < 2 * context_cache.TIMEOUT_S + 1
            assert a.status == b.status == "degraded"

            nodes[0].start()  # back with its slots (nodes.conf) and no data
            await asyncio.to_thread(wait_cluster_ok, nodes)
            deadline = time.monotonic() + context_cache.RETRY_S + 5
            while a.status != "ok" or b.status != "ok":
                assert time.monotonic() < deadline, (a.reason, b.reason)
                await asyncio.sleep(0.2)
                await a.check()
                await b.check()
            for sid in history:
                await a.add(sid, "alice", ex("t3"))
            fresh = ContextCache(settings, None)
            try:
                for sid in history:
                    got = [e.turn for e in await fresh.recent(sid, 4)]
                    assert got == ["t1", "t2", "t3"]  # t2 missed Redis; a's t3 brought it
            finally:
                await fresh.close()
        finally:
            await a.close()
            await b.close()
