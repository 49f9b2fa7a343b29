"""The data layer through outages, on a real ``morgan up``: 20 typed turns while the
history's PostgreSQL (a server of the test's own) is stopped and started again, and
the context cache's Redis (also the test's own) likewise.

Nothing accepted is lost: every turn is in the history exactly once afterwards, the
replies never stop, ``/health`` says ``degraded`` while Redis is away and ``ok`` again
by itself, and no Morgan process restarts.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from store.history import History
from testbed.morgan_process import MorganUp, VoiceClient
from testbed.postgres import PgServer
from testbed.redis_nodes import RedisNode

pytestmark = pytest.mark.system

TURNS = 20
STOP_DB, START_DB = 5, 15
"""PostgreSQL is stopped after this turn and started again after that one."""
STOP_REDIS, START_REDIS = 8, 12
TURN_S = 120.0


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """Outside pytest's folders: the embedded servers run as another user (docs/data.md)."""
    folder = Path(tempfile.mkdtemp(prefix="morgan-outage-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


async def health(http: httpx.AsyncClient) -> dict[str, object]:
    answer: dict[str, object] = (await http.get("/health")).json()
    return answer


async def until_store(http: httpx.AsyncClient, store: str, ok: bool, timeout: float = 30.0) -> None:
    """Until ``/health`` says ``store`` is ok (or is not), and the whole is degraded while
    any store is not."""
    deadline = time.monotonic() + timeout
    while True:
        answer = await health(http)
        stores = answer["stores"]
        assert isinstance(stores, dict)
        if (stores[store] == "ok") == ok:
            whole_ok = all(state == "ok" for state in stores.values())
            assert answer["status"] == ("ok" if whole_ok else "degraded"), answer
            return
        assert time.monotonic() < deadline, f"/health: {answer}"
        await asyncio.sleep(0.5)


async def test_twenty_typed_turns_through_database_and_redis_outages_are_each_recorded_once(
    data_dir: Path,
) -> None:
    redis_dir = Path(tempfile.mkdtemp(prefix="morgan-redis-"))
    async with PgServer() as pg:
        redis = RedisNode(redis_dir)
        redis.start()
        up = MorganUp(
            data_dir,
            MORGAN_KINDS="vad,llm,tts,history",
            MORGAN_DATABASE_URL=pg.dsn(),
            MORGAN_REDIS_URL=redis.url,
            MORGAN_LLM_MAX_TOKENS="24",
        )
        try:
            up.wait_ready()
            client = await VoiceClient.open(up.url)
            async with httpx.AsyncClient(base_url=up.url, timeout=10) as http:
                assert (await health(http))["status"] == "ok"
                for n in range(1, TURNS + 1):
                    await client.ws.send(
                        json.dumps({"type": "text", "text": f"Say the number {n}."})
                    )
                    await client.wait_for(
                        lambda n=n: sum(t.done is not None for t in client.turns.values()) == n,
                        TURN_S,
                    )
                    if n == STOP_DB:
                        await pg.stop()
                        await until_store(http, "postgres", ok=False)
                    if n == STOP_REDIS:
                        redis.stop()
                        await until_store(http, "redis", ok=False)
                        stores = (await health(http))["stores"]
                        assert isinstance(stores, dict) and "Redis" in stores["redis"]
                    if n == START_REDIS:
                        redis.start()
                        await until_store(http, "redis", ok=True)  # by itself: no restart
                    if n == START_DB:
                        await pg.start()
                        await until_store(http, "postgres", ok=True)
                assert (await health(http))["status"] == "ok"
            await client.close()

            history = await History.open(pg.dsn(), migrate=False)
            try:
                deadline = time.monotonic() + 90
                while True:
                    found = await history.conversation("local", client.sid)
                    turns = [m.turn for m in found.messages] if found else []
                    if len(set(turns)) == TURNS and len(turns) == 2 * TURNS:
                        break
                    assert time.monotonic() < deadline, f"history has {len(turns)} messages"
                    await asyncio.sleep(1)
            finally:
                await history.close()
            assert found is not None
            assert sorted(set(turns)) == sorted(client.turns)  # each turn, once per role
            for message in found.messages:
                assert message.text.strip(), message
            assert "restarting" not in up.log(), up.log()[-3000:]
        finally:
            code = up.stop()
            redis.stop()
            shutil.rmtree(redis_dir, ignore_errors=True)
        assert code == 0, up.log()[-3000:]
        assert up.violations() == [], "a role lacks a permission it needs"
