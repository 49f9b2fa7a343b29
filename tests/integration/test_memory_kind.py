"""The memory kind against a real nats-server, with Qdrant's local mode in a folder: it
remembers what a user asked from ``reply.done`` and answers recall and forget requests."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from processors import memory
from schemas import ReplyDone, Subjects, Unavailable
from schemas.codec import USER_HEADER
from store.recall import Ask, decode, forget, over_bus, prompt_lines
from store.recall import recall as recall_from
from store.records import Memory
from streams import bus, definitions
from streams.settings import Settings
from tests.integration.bus_helpers import until
from tests.integration.workers import running


@pytest.fixture
def with_memory(settings: Settings, tmp_path: Path) -> Settings:
    """Local Qdrant in the test's folder; recall may take its time on a busy machine."""
    return settings.model_copy(
        update={"qdrant_path": str(tmp_path / "qdrant"), "memory_recall_timeout_s": 10.0}
    )


def asker(nc: Client, settings: Settings) -> Ask:
    return over_bus(nc, settings.prefix)


async def recall(nc: Client, settings: Settings, user: str, text: str, limit: int) -> list[Memory]:
    """What the LLM gets for ``user``'s ``text`` (store.recall over this connection)."""
    ask = asker(nc, settings)
    return await recall_from(ask, user, text, limit, settings.memory_recall_timeout_s)


async def reply_done(js: JetStreamContext, settings: Settings, user: str, asked: str) -> str:
    """A finished reply, as the LLM publishes it while handling ``user``'s turn; its
    session's id."""
    sid, turn = uuid.uuid4().hex, "t1"
    done = ReplyDone(sid, turn, "Ada is a lovely name.", sentences=1, asked=asked)
    subject = Subjects(settings.prefix).events(sid, done.TYPE)
    headers = {USER_HEADER: user} if user else None
    await bus.publish(js, subject, done, msg_id=f"{sid}.{turn}.done", headers=headers)
    return sid


async def test_a_user_recalls_what_they_said_and_forgets_it(
    with_memory: Settings, nc: Client, js: JetStreamContext
) -> None:
    async with running(memory.SPEC, with_memory) as worker:
        before = time.time()
        await reply_done(js, with_memory, "alice", "my sister is called Ada")
        await until(lambda: worker.handled == 1, timeout=30)

        [found] = await recall(nc, with_memory, "alice", "what is my sister's name?", 3)
        assert (found.text, found.reply) == ("my sister is called Ada", "Ada is a lovely name.")
        assert before <= found.at <= time.time()
        assert found.score > 0.5
        day = time.strftime("%Y-%m-%d", time.gmtime(found.at))
        assert prompt_lines([found])[0].startswith(f'- ({day}) you were told: "my sister')

        assert await recall(nc, with_memory, "bob", "what is my sister's name?", 3) == []
        assert await forget(asker(nc, with_memory), "alice") == 1
        assert await recall(nc, with_memory, "alice", "what is my sister's name?", 3) == []


async def test_a_reply_with_no_user_or_no_words_is_not_remembered(
    with_memory: Settings, nc: Client, js: JetStreamContext
) -> None:
    async with running(memory.SPEC, with_memory) as worker:
        await reply_done(js, with_memory, "", "my sister is called Ada")
        await reply_done(js, with_memory, "alice", "")
        await until(lambda: worker.handled == 2, timeout=30)
        assert await forget(asker(nc, with_memory), "alice") == 0
        assert worker.state.memory is not None
        assert await worker.state.memory.count("") == 0


async def test_a_bad_request_gets_an_error_answer(
    with_memory: Settings, nc: Client, js: JetStreamContext
) -> None:
    async with running(memory.SPEC, with_memory):
        subject = f"{with_memory.prefix}.svc.memory.recall"
        for body in (b"not json", b"[]", json.dumps({"user": "alice"}).encode()):
            answer = await nc.request(subject, body, timeout=10)
            assert answer.headers is not None
            assert answer.headers["Nats-Service-Error-Code"] == "bad_input"


async def test_with_no_memory_worker_recall_is_empty_and_forget_is_unavailable(
    with_memory: Settings, nc: Client
) -> None:
    assert await recall(nc, with_memory, "alice", "what is my sister's name?", 3) == []
    with pytest.raises(Unavailable):
        await forget(asker(nc, with_memory), "alice")


async def test_when_a_turn_ends_the_sessions_next_turn_gets_its_memories_stored(
    with_memory: Settings, js: JetStreamContext
) -> None:
    async with running(memory.SPEC, with_memory) as worker:
        first = await reply_done(js, with_memory, "alice", "my sister is called Ada")
        await until(lambda: worker.handled == 1, timeout=30)
        second = await reply_done(js, with_memory, "alice", "what is my sister's name?")
        await until(lambda: worker.handled == 2, timeout=30)
    kv = await definitions.key_value(js, with_memory, definitions.RECALLED)
    mine = decode((await kv.get(definitions.kv_key(first))).value)
    assert mine == []  # its own turn is in its context already
    [ada] = decode((await kv.get(definitions.kv_key(second))).value)
    assert (ada.text, ada.sid) == ("my sister is called Ada", first)
