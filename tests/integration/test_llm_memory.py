"""Long-term memory end to end on a real nats-server: a fact told in one session is in
the prompt of the same user's next session (found by a real Qdrant search through the
memory worker), never in another user's, and gone once the user is forgotten.

The fact is told through the real LLM worker (SmolLM2), whose ``reply.done`` the real
memory worker embeds; the later prompt is built by ``llm.messages_for`` as the LLM
builds it for a new session, asking the memory kind over NATS.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from processors import llm, memory
from processors.harness import MemoryContext
from schemas import LlmRequest, Subjects
from schemas.codec import USER_HEADER
from store import recall
from store.context_cache import ContextCache
from streams import bus, definitions
from streams.settings import Settings
from tests.integration.bus_helpers import until
from tests.integration.workers import running

FACT = "My sister is called Ada."


@pytest.fixture
def with_memory(settings: Settings, tmp_path: Path) -> Settings:
    return settings.model_copy(
        update={
            "qdrant_path": str(tmp_path / "qdrant"),
            "memory_recall_timeout_s": 10.0,  # a busy 2-core machine
            "llm_max_tokens": 16,
            "memory_recall": 3,
        }
    )


async def prompt_for(
    nc: Client, settings: Settings, user: str, sid: str, text: str, *, ask: bool = True
) -> str:
    """The system part of the prompt the LLM builds for ``user``'s turn in ``sid``, with
    the real KV buckets; the memory kind is asked over NATS when ``ask``, else never."""
    ctx = MemoryContext.of(llm.SPEC, settings=settings, user=user)
    js = nc.jetstream()
    recalled = await definitions.key_value(js, settings, definitions.RECALLED)
    ctx.buckets[definitions.RECALLED] = recalled
    asking = recall.over_bus(nc, settings.prefix)

    async def answer(body: bytes) -> bytes:
        return await asking("memory", "recall", body, settings.memory_recall_timeout_s)

    if ask:
        ctx.answers[("memory", "recall")] = answer
    messages = await llm.messages_for(
        LlmRequest(sid, "t1", text), ContextCache(settings, None), ctx
    )
    return "\n".join(str(m["content"]) for m in messages if m["role"] == "system")


async def test_a_fact_told_in_one_session_is_recalled_in_the_next_for_that_user_only(
    with_memory: Settings, nc: Client, js: JetStreamContext
) -> None:
    async with running(memory.SPEC, with_memory) as remembering, running(llm.SPEC, with_memory):
        told = LlmRequest("first-session", "t1", FACT)
        subject = Subjects(with_memory.prefix).work("llm")
        await bus.publish(js, subject, told, msg_id="first.t1.llm", headers={USER_HEADER: "alice"})
        await until(lambda: remembering.handled == 1, timeout=120)

        question = "What is my sister's name?"
        alice = await prompt_for(nc, with_memory, "alice", "second-session", question)
        assert FACT in alice and "you were told" in alice
        bob = await prompt_for(nc, with_memory, "bob", "bobs-session", question)
        assert "Ada" not in bob and bob == with_memory.llm_system_prompt

        # alice asks in a second session: when that turn ends, the memory kind stores the
        # memories for the session's next turn, which then needs no recall at all
        asked = LlmRequest("second-session", "t1", question)
        headers = {USER_HEADER: "alice"}
        await bus.publish(js, subject, asked, msg_id="second.t1.llm", headers=headers)
        await until(lambda: remembering.handled == 2, timeout=120)
        stored = await prompt_for(
            nc, with_memory, "alice", "second-session", "And her age?", ask=False
        )
        assert FACT in stored

        assert await recall.forget(recall.over_bus(nc, with_memory.prefix), "alice") == 2
        forgotten = await prompt_for(nc, with_memory, "alice", "third-session", question)
        assert "Ada" not in forgotten
