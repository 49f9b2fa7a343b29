"""The dialog model: a user's words in, a streamed reply out, spoken sentence by sentence.

Takes ``LlmRequest`` from ``<prefix>.work.llm`` (durable ``llm``). Publishes

- ``<prefix>.events.<sid>.reply.delta``: each piece of text as the model writes it
  (id ``<sid>.<turn>.d<index>``);
- a ``TtsRequest`` per sentence (to TTS, by the route table), the first one possibly
  just its first clause, as soon as it is complete (id ``<sid>.<turn>.s<seq>``);
- ``<prefix>.events.<sid>.reply.done`` at the end (id ``<sid>.<turn>.done``),
  then stores the exchange in the session's dialog memory;
- or, when the turn is cancelled (barge-in), ``reply.cancelled`` instead of
  ``reply.done``, with nothing stored.

Decoding is greedy by default, so a redelivered request writes the same deltas
with the same ids and JetStream's dedup drops the repeats.
"""

from __future__ import annotations

import time
from contextlib import aclosing

from processors import dialog_memory, llm_backends
from processors.context import Context
from processors.dialog_memory import DialogMemory, Exchange
from processors.llm_backends import LlmBackend, Messages
from processors.sentences import SentenceSplitter
from processors.spec import Spec, WorkQueue
from schemas import (
    BadInput,
    LlmRequest,
    Message,
    ReplyCancelled,
    ReplyDelta,
    ReplyDone,
    TtsRequest,
)
from streams.settings import Settings


async def load(settings: Settings, tiers: tuple[str, ...]) -> LlmBackend:
    return await llm_backends.open_backend(settings)


def describe(backend: LlmBackend) -> str:
    return backend.describe()


def prompt(system: str, history: list[Exchange], text: str) -> Messages:
    """System prompt, earlier exchanges (oldest first), then the user's words."""
    messages = [{"role": "system", "content": system}] if system else []
    for exchange in history:
        messages.append({"role": "user", "content": exchange.user})
        messages.append({"role": "assistant", "content": exchange.assistant})
    messages.append({"role": "user", "content": text})
    return messages


async def messages_for(request: LlmRequest, memory: DialogMemory, settings: Settings) -> Messages:
    """The prompt for ``request``: its session's last ``llm_history_turns`` exchanges.

    The request's own turn is left out, so a redelivery (after the exchange was
    stored) sees the same prompt as the first delivery.
    """
    keep = settings.llm_history_turns
    earlier = [e for e in await memory.history(request.sid) if e.turn != request.turn]
    return prompt(settings.llm_system_prompt, earlier[-keep:] if keep else [], request.text)


def speakable(piece: str) -> bool:
    """Whether TTS has anything to say (``...`` or ``*`` alone does not)."""
    return any(c.isalnum() for c in piece)


async def handle(msg: Message, ctx: Context) -> None:
    assert isinstance(msg, LlmRequest)
    received = time.perf_counter()
    sid, turn = msg.sid, msg.turn
    if not msg.text.strip():
        raise BadInput("empty request: nothing to answer", code="empty_text")
    memory = DialogMemory(await dialog_memory.timed(ctx.key_value(dialog_memory.BUCKET), "open"))
    messages = await messages_for(msg, memory, ctx.settings)
    splitter = SentenceSplitter(ctx.settings.first_clause_words)
    reply: list[str] = []
    sentences = 0

    async def speak(pieces: list[str]) -> None:
        nonlocal sentences
        for piece in filter(speakable, pieces):
            llm_ms = (time.perf_counter() - received) * 1000.0
            request = TtsRequest(sid, turn, sentences, piece, llm_ms=llm_ms)
            await ctx.forward(request, msg_id=f"{sid}.{turn}.s{sentences}")
            sentences += 1

    def cancelled() -> bool:
        return ctx.cancelled(sid, turn)

    if not cancelled():
        backend: LlmBackend = ctx.state
        backend.settings = ctx.settings  # live config: temperature, max tokens, ...
        async with aclosing(backend.stream(messages, cancelled)) as deltas:
            async for delta in deltas:
                if cancelled():
                    break
                index = len(reply)
                await ctx.emit(ReplyDelta(sid, turn, index, delta), msg_id=f"{sid}.{turn}.d{index}")
                reply.append(delta)
                await speak(splitter.push(delta))
    if cancelled():
        await ctx.emit(ReplyCancelled(sid, turn), msg_id=f"{sid}.{turn}.cancelled")
        return
    await speak(splitter.flush())
    text = "".join(reply)
    await ctx.emit(ReplyDone(sid, turn, text, sentences), msg_id=f"{sid}.{turn}.done")
    await memory.save(sid, Exchange(turn, msg.text.strip(), text.strip()))


SPEC = Spec(
    kind="llm",
    input=WorkQueue(),
    accepts=(LlmRequest,),
    publishes=(ReplyDelta, TtsRequest, ReplyDone, ReplyCancelled),
    load=load,
    handle=handle,
    describe=describe,
)
