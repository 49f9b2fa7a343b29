"""MemoryContext checks a handler as the runtime does: what it takes, what it publishes."""

from __future__ import annotations

from typing import Any

import pytest
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from processors.context import Context
from processors.harness import MemoryContext, MemoryKv
from processors.spec import Spec, WorkQueue
from schemas import LlmRequest, Message, MessageError, MorganError, ReplyDone, Transcript, Utterance
from streams.routes import Routes
from streams.settings import Settings


async def nothing(settings: Settings, tiers: tuple[str, ...]) -> Any:
    return None


async def says_done(msg: Message, ctx: Context) -> None:
    """Emits a transcript (declared) and then a reply.done (not declared)."""
    assert isinstance(msg, LlmRequest)
    await ctx.emit(Transcript(msg.sid, msg.turn, msg.text), msg_id="a")
    await ctx.emit(ReplyDone(msg.sid, msg.turn, msg.text, 0), msg_id="b")


async def passes_on(msg: Message, ctx: Context) -> None:
    await ctx.forward(msg, msg_id="c")


ECHO = Spec(
    kind="echo",
    input=WorkQueue(),
    accepts=(LlmRequest,),
    publishes=(Transcript, LlmRequest),
    load=nothing,
    handle=says_done,
)


async def test_publishing_a_type_the_kind_does_not_declare_raises_undeclared() -> None:
    ctx = MemoryContext.of(ECHO)
    with pytest.raises(MorganError) as refused:
        await ctx.handle(LlmRequest("s1", "t1", "hi"))
    assert refused.value.code == "undeclared" and not refused.value.retryable
    assert "reply.done" in str(refused.value)
    assert ctx.emitted == [Transcript("s1", "t1", "hi")]  # what was declared went out


async def test_control_messages_are_checked_against_the_declaration_too() -> None:
    ctx = MemoryContext.of(ECHO)
    with pytest.raises(MorganError) as refused:
        await ctx.control(ReplyDone("s1", "t1", "", 0))
    assert refused.value.code == "undeclared"
    assert ctx.controls == [] and ctx.ids == []


async def test_a_message_the_kind_does_not_accept_is_refused_before_the_handler() -> None:
    ctx = MemoryContext.of(ECHO)
    with pytest.raises(MessageError, match="stt.utterance"):
        await ctx.handle(Utterance("s1", "t1"))
    assert ctx.emitted == []


async def test_forwarded_work_goes_where_the_route_table_says() -> None:
    relay = Spec(
        kind="relay",
        input=WorkQueue(),
        accepts=(LlmRequest,),
        publishes=(LlmRequest,),
        load=nothing,
        handle=passes_on,
    )
    default = MemoryContext.of(relay)
    inserted = MemoryContext(relay, Settings(), routes=Routes.parse("relay:llm.request=redact"))
    for ctx in (default, inserted):
        await ctx.handle(LlmRequest("s1", "t1", "hi"))
    assert default.forwarded == [("llm", LlmRequest("s1", "t1", "hi"))]
    assert inserted.forwarded == [("redact", LlmRequest("s1", "t1", "hi"))]


async def test_memory_kv_updates_only_from_the_revision_it_last_read() -> None:
    kv = MemoryKv()
    with pytest.raises(KeyNotFoundError):
        await kv.get("k")
    first = await kv.update("k", b"1", last=0)
    with pytest.raises(KeyWrongLastSequenceError):
        await kv.update("k", b"2", last=0)  # 0: only when the key does not exist yet
    second = await kv.update("k", b"2", last=first)
    assert (await kv.get("k")).value == b"2" and second > first
