"""LongTermMemory on qdrant-client's local mode in a folder: per user, idempotent, forgettable."""

from __future__ import annotations

import math
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio

from schemas import Unavailable
from store.longterm import DIMENSIONS, LongTermMemory
from store.recall import prompt_lines
from store.records import Memory
from streams.settings import Settings


def toward(*axes: float) -> list[float]:
    """A unit vector with the given weights on the first axes."""
    vector = [*axes, *[0.0] * (DIMENSIONS - len(axes))]
    norm = math.hypot(*vector)
    return [x / norm for x in vector]


SISTER = toward(1.0)
SISTER_QUERY = toward(0.9, 0.1)
WEATHER = toward(0.0, 1.0)


def local(tmp_path: Path) -> Settings:
    return Settings(qdrant_path=str(tmp_path / "qdrant"), prefix="lt")


@pytest_asyncio.fixture
async def memory(tmp_path: Path) -> AsyncIterator[LongTermMemory]:
    opened = await LongTermMemory.open(local(tmp_path))
    assert opened is not None
    try:
        yield opened
    finally:
        await opened.close()


async def test_a_user_recalls_their_memories_closest_first(memory: LongTermMemory) -> None:
    await memory.remember("alice", "s1", "t1", "it rains", "take an umbrella", 100.0, WEATHER)
    await memory.remember("alice", "s1", "t2", "my sister is Ada", "nice name", 200.0, SISTER)
    found = await memory.recall("alice", SISTER_QUERY, 5)
    assert [m.text for m in found] == ["my sister is Ada", "it rains"]
    first = found[0]
    assert (first.reply, first.at, first.sid) == ("nice name", 200.0, "s1")
    assert first.score > found[1].score
    assert await memory.recall("alice", SISTER_QUERY, 1) == [found[0]]
    assert await memory.recall("alice", SISTER_QUERY, 0) == []


async def test_another_user_never_sees_them(memory: LongTermMemory) -> None:
    await memory.remember("alice", "s1", "t1", "my sister is Ada", "nice name", 1.0, SISTER)
    await memory.remember("bob", "s2", "t1", "it rains", "umbrella", 2.0, WEATHER)
    assert [m.text for m in await memory.recall("bob", SISTER_QUERY, 5)] == ["it rains"]
    assert await memory.recall("carol", SISTER_QUERY, 5) == []


async def test_a_redelivered_turn_rewrites_its_point_and_adds_none(
    memory: LongTermMemory,
) -> None:
    for _ in range(3):
        await memory.remember("alice", "s1", "t1", "my sister is Ada", "nice", 1.0, SISTER)
    await memory.remember("alice", "s1", "t2", "my sister is Ada", "again", 2.0, SISTER)
    assert await memory.count("alice") == 2


async def test_forget_deletes_only_that_users_memories(memory: LongTermMemory) -> None:
    await memory.remember("alice", "s1", "t1", "my sister is Ada", "nice", 1.0, SISTER)
    await memory.remember("alice", "s1", "t2", "it rains", "umbrella", 2.0, WEATHER)
    await memory.remember("bob", "s2", "t1", "my sister is Eve", "nice", 3.0, SISTER)
    assert await memory.forget("alice") == 2
    assert await memory.count("alice") == 0
    assert await memory.recall("alice", SISTER_QUERY, 5) == []
    assert await memory.count("bob") == 1
    assert await memory.forget("alice") == 0


async def test_memories_outlive_the_process_that_wrote_them(tmp_path: Path) -> None:
    first = await LongTermMemory.open(local(tmp_path))
    assert first is not None
    await first.remember("alice", "s1", "t1", "my sister is Ada", "nice", 1.0, SISTER)
    await first.close()
    again = await LongTermMemory.open(local(tmp_path))
    assert again is not None
    try:
        assert [m.text for m in await again.recall("alice", SISTER_QUERY, 3)] == [
            "my sister is Ada"
        ]
    finally:
        await again.close()


async def test_no_url_and_no_path_is_no_long_term_memory() -> None:
    assert await LongTermMemory.open(Settings(qdrant_url="", qdrant_path="")) is None


async def test_a_qdrant_server_that_does_not_answer_is_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    memory = await LongTermMemory.open(Settings(qdrant_url=f"http://127.0.0.1:{port}"))
    assert memory is not None
    try:
        with pytest.raises(Unavailable) as raised:
            await memory.remember("alice", "s1", "t1", "hi", "hello", 1.0, SISTER)
        assert raised.value.retryable
        with pytest.raises(Unavailable):
            await memory.recall("alice", SISTER, 3)
    finally:
        await memory.close()


def test_prompt_lines_give_each_memory_its_date() -> None:
    at = 1_796_083_200.0  # 2026-12-01 00:00 UTC
    lines = prompt_lines([Memory("my sister is called Ada", "Nice name!", at, "s1", 0.8)])
    assert lines == [
        '- (2026-12-01) you were told: "my sister is called Ada" (you answered: "Nice name!")'
    ]
    assert prompt_lines([Memory("x" * 500, "", at, "s1")])[0].endswith('…"')
