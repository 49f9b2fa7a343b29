"""The llm kind's handler with no NATS (processors.harness).

The model is the handler's dependency, not what is tested here: most tests give it a
scripted backend that writes given deltas, so what the handler makes of them is exact.
One test runs the real local SmolLM2 backend through the kind's own loader. The context
cache is its L1 alone (no Redis or database configured); the memory kind's recall is
answered through ``MemoryContext.answers``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, Callable

import pytest

from processors import llm
from processors.harness import MemoryContext
from processors.llm_backends import Messages, StopCheck
from schemas import (
    BadInput,
    Forget,
    LlmRequest,
    ReplyCancelled,
    ReplyDelta,
    ReplyDone,
    TtsRequest,
    Unavailable,
)
from store.context_cache import ContextCache
from store.records import Exchange
from streams.settings import Settings

SETTINGS = Settings(llm_system_prompt="Be brief.", first_clause_words=6, llm_history_turns=4)


class Scripted:
    """An LlmBackend that writes the given replies, one per stream(), and keeps each prompt."""

    def __init__(self, *replies: list[str]) -> None:
        self.settings = SETTINGS
        self.replies = list(replies)
        self.prompts: list[Messages] = []
        self.after_delta: Callable[[int], None] = lambda written: None
        """Called after each delta is taken, with how many were taken so far."""

    def describe(self) -> str:
        return "scripted"

    async def aclose(self) -> None:
        """Nothing to release."""

    async def stream(self, messages: Messages, should_stop: StopCheck) -> AsyncGenerator[str, None]:
        self.prompts.append(messages)
        for written, delta in enumerate(self.replies.pop(0), start=1):
            if should_stop():
                return
            yield delta
            self.after_delta(written)


def context(backend: Scripted, settings: Settings = SETTINGS, user: str = "ann") -> MemoryContext:
    state = llm.LlmState(backend, ContextCache(settings, None))
    return MemoryContext.of(llm.SPEC, state=state, settings=settings, user=user)


async def history(ctx: MemoryContext, sid: str) -> list[tuple[str, str, str, bool]]:
    """The session's exchanges in the context cache, without their times."""
    found = await ctx.state.context.recent(sid, 32)
    return [(e.turn, e.user, e.assistant, e.cancelled) for e in found]


async def test_deltas_become_reply_deltas_sentences_go_to_tts_as_written_then_done() -> None:
    ctx = context(Scripted(["Sure, ", "I can ", "help with that. ", "Ask me ", "anything!"]))
    await ctx.handle(LlmRequest("s1", "t1", "Can you help?"))
    assert [d.text for d in ctx.emitted_of(ReplyDelta)] == [
        "Sure, ",
        "I can ",
        "help with that. ",
        "Ask me ",
        "anything!",
    ]
    assert [d.index for d in ctx.emitted_of(ReplyDelta)] == [0, 1, 2, 3, 4]
    assert [(kind, r.seq, r.text) for kind, r in ctx.forwarded if isinstance(r, TtsRequest)] == [
        ("tts", 0, "Sure,"),  # the first clause, before the rest is written
        ("tts", 1, "I can help with that."),
        ("tts", 2, "Ask me anything!"),
    ]
    [done] = ctx.emitted_of(ReplyDone)
    assert (done.text, done.sentences, done.asked) == (
        "Sure, I can help with that. Ask me anything!",
        3,
        "Can you help?",
    )
    assert 0 < done.first_ms <= done.llm_ms
    # the order of everything published: each sentence as soon as its last delta is out
    assert ctx.ids == [
        "s1.t1.d0",
        "s1.t1.s0",
        "s1.t1.d1",
        "s1.t1.d2",
        "s1.t1.s1",
        "s1.t1.d3",
        "s1.t1.d4",
        "s1.t1.s2",
        "s1.t1.done",
    ]


async def test_pieces_without_words_are_not_sent_to_tts() -> None:
    ctx = context(Scripted(["Hello.\n", "...\n", "Bye."]))
    await ctx.handle(LlmRequest("s1", "t1", "Hi"))
    assert [r.text for _, r in ctx.forwarded if isinstance(r, TtsRequest)] == ["Hello.", "Bye."]
    assert ctx.emitted_of(ReplyDone)[0].sentences == 2


async def test_the_exchange_is_saved_and_the_next_turn_prompt_holds_it() -> None:
    backend = Scripted(["Hello, Zed."], ["Your name is Zed."])
    ctx = context(backend)
    await ctx.handle(LlmRequest("s1", "t1", "My name is Zed."))
    assert await history(ctx, "s1") == [("t1", "My name is Zed.", "Hello, Zed.", False)]
    await ctx.handle(LlmRequest("s1", "t2", "What is my name?"))
    assert backend.prompts == [
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "My name is Zed."},
        ],
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "My name is Zed."},
            {"role": "assistant", "content": "Hello, Zed."},
            {"role": "user", "content": "What is my name?"},
        ],
    ]
    assert [e[0] for e in await history(ctx, "s1")] == ["t1", "t2"]
    assert await history(ctx, "other") == []


async def test_a_redelivered_turn_is_stored_once_and_its_prompt_leaves_out_its_own_exchange() -> (
    None
):
    backend = Scripted(["Hi!"], ["Hi!"])
    ctx = context(backend)
    for _ in range(2):
        await ctx.handle(LlmRequest("s1", "t1", "Hello"))
    assert backend.prompts[0] == backend.prompts[1]
    assert await history(ctx, "s1") == [("t1", "Hello", "Hi!", False)]


async def test_a_turn_cancelled_mid_reply_keeps_only_what_was_sent_to_be_spoken() -> None:
    backend = Scripted(["One. ", "Two. ", "Three. ", "Four."], ["Five."])
    ctx = context(backend)

    def barge_in(written: int) -> None:
        if written == 2:
            ctx.cancelled_turns.add(("s1", "t1"))

    backend.after_delta = barge_in
    await ctx.handle(LlmRequest("s1", "t1", "Count"))
    assert [d.text for d in ctx.emitted_of(ReplyDelta)] == ["One. ", "Two. "]
    assert ctx.emitted[-1] == ReplyCancelled("s1", "t1", spoken="One. Two.")
    assert ctx.emitted_of(ReplyDone) == []
    assert await history(ctx, "s1") == [("t1", "Count", "One. Two.", True)]
    backend.after_delta = lambda written: None
    await ctx.handle(LlmRequest("s1", "t2", "Go on"))
    assert backend.prompts[1][1:] == [
        {"role": "user", "content": "Count"},
        {"role": "assistant", "content": "One. Two."},
        {"role": "user", "content": "Go on"},
    ]


async def test_a_turn_cancelled_before_it_starts_never_asks_the_model() -> None:
    backend = Scripted(["Never written."])
    ctx = context(backend)
    ctx.cancelled_turns.add(("s1", "t1"))
    await ctx.handle(LlmRequest("s1", "t1", "Hello"))
    assert backend.prompts == []
    assert ctx.emitted == [ReplyCancelled("s1", "t1")] and ctx.forwarded == []
    assert await history(ctx, "s1") == [("t1", "Hello", "", True)]
    assert ctx.ids == ["s1.t1.cancelled"]


@pytest.mark.parametrize("text", ["", "   ", "\n\t"])
async def test_a_request_without_words_is_refused_as_empty_text(text: str) -> None:
    backend = Scripted(["Never written."])
    ctx = context(backend)
    with pytest.raises(BadInput) as refused:
        await ctx.handle(LlmRequest("s1", "t1", text))
    assert refused.value.code == "empty_text" and not refused.value.retryable
    assert (backend.prompts, ctx.emitted, ctx.forwarded) == ([], [], [])


async def test_the_real_local_model_loaded_by_the_kind_answers_and_speaks_its_whole_reply() -> None:
    settings = SETTINGS.model_copy(update={"llm_max_tokens": 12})
    state = await llm.SPEC.load(settings, ("cpu",))
    try:
        assert llm.describe(state).startswith("llama.cpp ")
        assert llm.describe(state).endswith("context L1")
        ctx = MemoryContext.of(llm.SPEC, state=state, settings=settings)
        await ctx.handle(LlmRequest("s1", "t1", "What is the capital of France?"))
    finally:
        state.backend.llama.close()
    [done] = ctx.emitted_of(ReplyDone)
    deltas = ctx.emitted_of(ReplyDelta)
    spoken = [r for _, r in ctx.forwarded if isinstance(r, TtsRequest)]
    assert done.text.strip() and "".join(d.text for d in deltas) == done.text
    assert [r.seq for r in spoken] == list(range(done.sentences)) and spoken
    assert " ".join(r.text for r in spoken).split() == done.text.split()
    assert await history(ctx, "s1") == [
        ("t1", "What is the capital of France?", done.text.strip(), False)
    ]


async def test_the_prompt_holds_the_user_memories_with_their_dates_from_the_memory_kind() -> None:
    backend = Scripted(["Ada."])
    settings = SETTINGS.model_copy(update={"qdrant_path": "/nowhere", "memory_recall": 2})
    ctx = context(backend, settings, user="ann")
    asked: list[dict[str, object]] = []

    async def recall(body: bytes) -> bytes:
        asked.append(json.loads(body))
        memory = {"text": "my sister is called Ada", "reply": "Nice.", "at": 1764547200.0}
        return json.dumps({"memories": [memory | {"sid": "old", "score": 0.8}]}).encode()

    ctx.answers[("memory", "recall")] = recall
    await ctx.handle(LlmRequest("s1", "t1", "What is my sister called?"))
    assert asked == [{"user": "ann", "text": "What is my sister called?", "limit": 2}]
    first, remembered = backend.prompts[0][0], backend.prompts[0][1]
    assert first == {"role": "system", "content": "Be brief."}  # the same every turn: cached
    assert remembered["role"] == "system" and "my sister is called Ada" in remembered["content"]
    assert "2025-12-01" in remembered["content"]


async def test_without_an_answer_from_the_memory_kind_the_turn_is_answered_without_memories() -> (
    None
):
    backend = Scripted(["Hello."])
    settings = SETTINGS.model_copy(update={"qdrant_path": "/nowhere"})
    ctx = context(backend, settings)  # no ("memory", "recall") answer: no worker runs
    await ctx.handle(LlmRequest("s1", "t1", "Hi"))
    assert backend.prompts[0] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    assert ctx.emitted_of(ReplyDone)[0].text == "Hello."


async def test_a_forgotten_user_leaves_the_worker_l1_at_once() -> None:
    ctx = context(Scripted(["Hello."], ["Hello again."]), user="ann")
    await ctx.handle(LlmRequest("s1", "t1", "Hi"))
    assert await history(ctx, "s1")
    assert llm.SPEC.on_control is not None
    await ctx.handle(LlmRequest("s2", "t1", "Hi"))
    llm.SPEC.on_control(Forget("ann", "s1"), ctx.state)  # one deleted conversation
    assert await history(ctx, "s1") == [] and await history(ctx, "s2")
    llm.SPEC.on_control(Forget("ann"), ctx.state)  # the whole user
    assert await history(ctx, "s2") == []


class UnreachableHistory:
    """An L3 whose database is away."""

    async def exchanges(self, sid: str, limit: int) -> list[Exchange]:
        raise Unavailable("history database: connection refused")


async def test_with_the_history_database_away_a_cold_session_is_answered_without_context() -> None:
    backend = Scripted(["Hello."])
    state = llm.LlmState(backend, ContextCache(SETTINGS, UnreachableHistory()))
    ctx = MemoryContext.of(llm.SPEC, state=state, settings=SETTINGS)
    await ctx.handle(LlmRequest("s1", "t1", "Hi"))
    assert backend.prompts[0][1:] == [{"role": "user", "content": "Hi"}]
    assert ctx.emitted_of(ReplyDone)[0].text == "Hello."
