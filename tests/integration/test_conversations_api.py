"""A user's conversations and memory over HTTP, on real stores: PostgreSQL (a database
of the test's own), Redis (127.0.0.1:6379, keys under the test's prefix), Qdrant local
mode (through a real memory worker) and a real nats-server.

Two users: alice (two keys) and bob. Each sees, continues and forgets only their own.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import pytest
import pytest_asyncio
import redis.asyncio
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError

from gateway.server import RunningGateway
from processors import memory
from processors.runtime import Worker
from schemas import ReplyDone, Subjects
from schemas.codec import USER_HEADER
from store.context_cache import ContextCache
from store.history import History
from store.records import Exchange
from streams import bus, definitions
from streams.settings import Settings
from tests.integration.bus_helpers import until
from tests.integration.gateway_helpers import open_client, serving
from tests.integration.workers import running

REDIS = "redis://127.0.0.1:6379/0"
KEYS = "alice:alice-key-1,alice:alice-key-2,bob:bob-key"
ALICE, ALICE_2, BOB = (
    {"Authorization": "Bearer alice-key-1"},
    {"Authorization": "Bearer alice-key-2"},
    {"Authorization": "Bearer bob-key"},
)


@dataclass
class World:
    settings: Settings
    gateway: RunningGateway
    history: History
    cache: ContextCache
    memory: Worker
    sids: dict[str, list[str]]
    """user -> their session ids, oldest first."""

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(base_url=self.gateway.url, timeout=10)


@pytest.fixture
def stores(settings: Settings, postgres_dsn: str, tmp_path: Path) -> Settings:
    return settings.model_copy(
        update={
            "prefix": "t" + uuid.uuid4().hex[:10],  # this test's Redis keys
            "api_keys": KEYS,
            "database_url": postgres_dsn,
            "redis_url": REDIS,
            "qdrant_path": str(tmp_path / "qdrant"),
            "memory_recall_timeout_s": 10.0,
        }
    )


async def remembered(js: JetStreamContext, settings: Settings, user: str, sid: str) -> None:
    """A finished turn of ``user``, as the LLM publishes it (the memory worker takes it)."""
    done = ReplyDone(sid, "t1", "Noted.", sentences=1, asked=f"{user} likes tea")
    subject = Subjects(settings.prefix).events(sid, done.TYPE)
    await bus.publish(js, subject, done, msg_id=f"{sid}.t1.done", headers={USER_HEADER: user})


@pytest_asyncio.fixture
async def world(stores: Settings, js: JetStreamContext) -> AsyncIterator[World]:
    history = await History.open(stores.database_url)
    cache = ContextCache(stores, None)
    sids: dict[str, list[str]] = {"alice": [], "bob": []}
    now = time.time() - 100
    for n, user in enumerate(["alice", "bob", "alice"]):
        sid = uuid.uuid4().hex
        sids[user].append(sid)
        at = now + 10 * n
        await history.record_user(sid, "t1", user, f"hello from {user} {n}", typed=True, at=at)
        await history.record_reply(sid, "t1", user, "Hi!", cancelled=False, at=at + 1)
        await cache.add(sid, user, Exchange("t1", f"hello from {user} {n}", "Hi!", at + 1))
    async with running(memory.SPEC, stores) as worker:
        for user, theirs in sids.items():
            for sid in theirs:
                await remembered(js, stores, user, sid)
        await until(lambda: worker.handled == 3, timeout=60)
        async with serving(stores) as gw:
            yield World(stores, gw, history, cache, worker, sids)
    raw = redis.asyncio.from_url(REDIS)
    try:
        keys = [k async for k in raw.scan_iter(f"{stores.prefix}:*")]
        if keys:
            await raw.delete(*keys)
    finally:
        await raw.aclose()
        await cache.close()
        await history.close()


async def rows(dsn: str, user: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        query = "SELECT count(*) FROM messages m JOIN sessions s ON s.id = m.session_id"
        return int(await conn.fetchval(query + " WHERE s.user_id = $1", user))
    finally:
        await conn.close()


async def redis_keys(settings: Settings, sids: list[str]) -> int:
    raw = redis.asyncio.from_url(REDIS)
    try:
        return int(await raw.exists(*(f"{settings.prefix}:ctx:{sid}" for sid in sids)))
    finally:
        await raw.aclose()


async def recalled(js: JetStreamContext, settings: Settings, sids: list[str]) -> int:
    """How many of the sessions have memories stored for their next turn."""
    kv = await definitions.key_value(js, settings, definitions.RECALLED)
    found = 0
    for sid in sids:
        try:
            await kv.get(definitions.kv_key(sid))
            found += 1
        except KeyNotFoundError:
            pass
    return found


async def vectors(world: World, user: str) -> int:
    assert world.memory.state.memory is not None
    return int(await world.memory.state.memory.count(user))


async def test_each_user_lists_only_their_own_conversations_newest_first_in_pages(
    world: World,
) -> None:
    async with world.client() as http:
        page = (await http.get("/api/conversations", headers=ALICE)).json()
        assert [c["id"] for c in page["conversations"]] == world.sids["alice"][::-1]
        assert page["next"] is None
        assert page["conversations"][0]["title"] == "hello from alice 2"
        first = (await http.get("/api/conversations?limit=1", headers=ALICE_2)).json()
        assert [c["id"] for c in first["conversations"]] == [world.sids["alice"][1]]
        second = await http.get(f"/api/conversations?limit=1&before={first['next']}", headers=ALICE)
        assert [c["id"] for c in second.json()["conversations"]] == [world.sids["alice"][0]]
        theirs = (await http.get("/api/conversations", headers=BOB)).json()["conversations"]
        assert [c["id"] for c in theirs] == world.sids["bob"]


async def test_a_conversation_reads_with_its_messages_and_is_unknown_to_another_user(
    world: World,
) -> None:
    sid = world.sids["alice"][0]
    async with world.client() as http:
        found = (await http.get(f"/api/conversations/{sid}", headers=ALICE)).json()
        assert [(m["role"], m["text"]) for m in found["messages"]] == [
            ("user", "hello from alice 0"),
            ("assistant", "Hi!"),
        ]
        assert found["messages"][0]["input"] == "text"
        refused = await http.get(f"/api/conversations/{sid}", headers=BOB)
        assert refused.status_code == 404 and refused.json()["error"] == "unknown_conversation"
        anonymous = await http.get(f"/api/conversations/{sid}")
        assert anonymous.status_code == 401


async def test_a_conversation_is_continued_by_voice_with_a_reissued_resume_token(
    world: World,
) -> None:
    sid = world.sids["alice"][0]
    async with world.client() as http:
        refused = await http.post(f"/api/conversations/{sid}/resume", headers=BOB)
        assert refused.status_code == 404
        grant = (await http.post(f"/api/conversations/{sid}/resume", headers=ALICE_2)).json()
    assert grant["session_id"] == sid
    ws = await open_client(world.gateway, additional_headers=ALICE)
    try:
        ready = await ws.start(session_id=sid, resume_token=grant["resume_token"])
        assert ready["session_id"] == sid and ready.get("resumed") is True
    finally:
        await ws.conn.close()


async def test_deleting_a_conversation_removes_its_history_and_cached_context(
    world: World,
) -> None:
    sid = world.sids["alice"][0]
    async with world.client() as http:
        assert (await http.delete(f"/api/conversations/{sid}", headers=BOB)).status_code == 404
        assert await redis_keys(world.settings, [sid]) == 1
        assert (await http.delete(f"/api/conversations/{sid}", headers=ALICE)).status_code == 204
        assert (await http.get(f"/api/conversations/{sid}", headers=ALICE)).status_code == 404
    assert await redis_keys(world.settings, [sid]) == 0
    assert await rows(world.settings.database_url, "alice") == 2  # the other conversation


async def test_forgetting_a_user_empties_history_cache_and_vectors_of_that_user_only(
    world: World, js: JetStreamContext
) -> None:
    alice, bob = world.sids["alice"], world.sids["bob"]
    assert await recalled(js, world.settings, alice) == 2
    assert (await rows(world.settings.database_url, "alice"), await vectors(world, "alice")) == (
        4,
        2,
    )
    async with world.client() as http:
        refused = await http.delete("/api/users/alice/memory", headers=BOB)
        assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
        gone = await http.delete("/api/users/me/memory", headers=ALICE)
        assert gone.status_code == 200, gone.text
        assert gone.json() == {"user": "alice", "conversations": 2, "memories": 2}
        left = (await http.get("/api/conversations", headers=ALICE)).json()
        assert left["conversations"] == []
    assert await rows(world.settings.database_url, "alice") == 0
    assert await redis_keys(world.settings, alice) == 0
    assert await vectors(world, "alice") == 0
    assert await recalled(js, world.settings, alice) == 0
    assert await rows(world.settings.database_url, "bob") == 2  # bob keeps everything
    assert await recalled(js, world.settings, bob) == 1
    assert await redis_keys(world.settings, bob) == 1
    assert await vectors(world, "bob") == 1


async def test_health_reports_each_store_and_degraded_while_redis_is_unreachable(
    world: World, stores: Settings
) -> None:
    async with world.client() as http:
        health = (await http.get("/health")).json()
    assert health["status"] == "ok"
    assert health["stores"] == {"postgres": "ok", "redis": "ok"}
    away = {"redis_url": "redis://127.0.0.1:1/0"}  # nothing listens there
    async with serving(stores, **away) as gw, httpx.AsyncClient(base_url=gw.url) as http:
        answer = await http.get("/health")
    assert answer.status_code == 200
    assert answer.json()["status"] == "degraded"
    assert "Redis" in answer.json()["stores"]["redis"]


async def test_without_a_database_the_conversation_routes_say_no_history(
    settings: Settings, js: JetStreamContext
) -> None:
    async with serving(settings) as gw, httpx.AsyncClient(base_url=gw.url) as http:
        answer = await http.get("/api/conversations")
        health = (await http.get("/health")).json()
    assert answer.status_code == 503 and answer.json()["error"] == "no_history"
    assert health["stores"] == {"postgres": "none", "redis": "none"}


async def test_the_openapi_schema_lists_the_conversation_routes(
    settings: Settings, js: JetStreamContext
) -> None:
    async with serving(settings) as gw, httpx.AsyncClient(base_url=gw.url) as http:
        schema = (await http.get("/openapi.json")).json()
    paths = schema["paths"]
    assert set(paths["/api/conversations"]) == {"get"}
    assert set(paths["/api/conversations/{sid}"]) == {"get", "delete"}
    assert set(paths["/api/conversations/{sid}/resume"]) == {"post"}
    assert set(paths["/api/users/{user}/memory"]) == {"delete"}
    limit = next(
        p for p in paths["/api/conversations"]["get"]["parameters"] if p["name"] == "limit"
    )
    assert limit["schema"]["maximum"] == 100


async def test_a_malformed_page_size_is_a_clear_422(world: World) -> None:
    async with world.client() as http:
        answer = await http.get("/api/conversations?limit=lots", headers=ALICE)
    assert answer.status_code == 422 and answer.json()["error"] == "bad_request"
    assert "limit" in answer.json()["message"]
