"""The dialog model: a user's words in, a streamed reply out, spoken sentence by sentence.

Takes ``LlmRequest`` from ``<prefix>.work.llm`` (durable ``llm``). Publishes

- ``<prefix>.events.<sid>.reply.delta``: each piece of text as the model writes it
  (id ``<sid>.<turn>.d<index>``);
- a ``TtsRequest`` per sentence (to TTS, by the route table), the first one possibly
  just its first clause, as soon as it is complete (id ``<sid>.<turn>.s<seq>``);
- ``<prefix>.events.<sid>.reply.done`` at the end (id ``<sid>.<turn>.done``),
  then stores the exchange in the context cache (L1 and L2, docs/data.md);
- or, when the turn is cancelled (barge-in), ``reply.cancelled`` instead of
  ``reply.done``, and stores only what was sent to be spoken.

The prompt is the system prompt, the user's long-term memories (those the memory kind
stored for the session when its last turn ended; for a session's first turn, asked of
the memory kind, waiting at most ``memory_recall_timeout_s``; both while the context
cache is read), the session's last exchanges, then the user's words.

Decoding is greedy by default, so a redelivered request writes the same deltas
with the same ids and JetStream's dedup drops the repeats.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from contextlib import aclosing
from dataclasses import dataclass

from nats.errors import Error as NatsError
from nats.js.errors import KeyNotFoundError

from processors import llm_backends
from processors.context import Context
from processors.llm_backends import LlmBackend, Messages
from processors.sentences import SentenceSplitter
from processors.spec import Spec, WorkQueue
from schemas import (
    BadInput,
    Forget,
    LlmRequest,
    Message,
    ReplyCancelled,
    ReplyDelta,
    ReplyDone,
    TtsRequest,
    Unavailable,
)
from store import recall
from store.context_cache import ContextCache
from store.history import History
from store.records import Exchange, Memory
from streams import definitions
from streams.settings import Settings

log = logging.getLogger("morgan.llm")


@dataclass
class LlmState:
    backend: LlmBackend
    context: ContextCache
    """The sessions' recent exchanges: L1 here, L2 Redis, L3 the history (docs/data.md)."""


async def load(settings: Settings, tiers: tuple[str, ...]) -> LlmState:
    backend = await llm_backends.open_backend(settings)
    l3 = History.lazy(settings.read_url) if settings.database_url else None
    return LlmState(backend, ContextCache(settings, l3))


async def unload(state: LlmState) -> None:
    await state.context.close()
    await state.backend.aclose()


def describe(state: LlmState) -> str:
    return f"{state.backend.describe()}; context {state.context.describe()}"


async def health(state: LlmState) -> str:
    """Why the worker is degraded ("" = it is not): its context cache's Redis."""
    ok = await state.context.check() == "ok"
    return "" if ok else f"context cache: {state.context.reason}"


def on_control(message: Message, state: LlmState) -> None:
    """A forgotten user's sessions (or one deleted conversation) leave this worker's L1
    at once."""
    if isinstance(message, Forget):
        if message.sid:
            state.context.l1.drop([message.sid])
        else:
            state.context.l1.drop_user(message.user)


def prompt(
    system: str, history: list[Exchange], text: str, memories: Sequence[Memory] = ()
) -> Messages:
    """System prompt, the user's memories (dated) in a second system message, earlier
    exchanges (oldest first), then the user's words.

    The first message stays the same from turn to turn, so the local model evaluates it
    once and keeps it cached (``LocalBackend``); memories change with every turn.
    """
    messages = [{"role": "system", "content": system}] if system else []
    if memories:
        remembered = "\n".join(recall.prompt_lines(memories))
        messages.append(
            {
                "role": "system",
                "content": f"From earlier conversations with this user:\n{remembered}",
            }
        )
    for exchange in history:
        if exchange.assistant:  # a turn cancelled before a word was spoken is left out
            messages.append({"role": "user", "content": exchange.user})
            messages.append({"role": "assistant", "content": exchange.assistant})
    messages.append({"role": "user", "content": text})
    return messages


async def messages_for(request: LlmRequest, context: ContextCache, ctx: Context) -> Messages:
    """The prompt for ``request``: its session's last ``llm_history_turns`` exchanges and,
    when long-term memory is on, the user's closest memories (both read at once).

    The request's own turn is left out, so a redelivery (after the exchange was
    stored) sees the same prompt as the first delivery.
    """
    settings = ctx.settings
    keep = settings.llm_history_turns
    limit = settings.memory_recall if settings.long_term_memory else 0
    recent, memories = await asyncio.gather(
        _recent(context, request, ctx.user, keep + 1) if keep else _nothing(),
        _memories(ctx, request, limit),
    )
    earlier = [e for e in recent if e.turn != request.turn]
    return prompt(
        settings.llm_system_prompt, earlier[-keep:] if keep else [], request.text, memories
    )


async def _recent(
    context: ContextCache, request: LlmRequest, user: str, limit: int
) -> list[Exchange]:
    """The session's last exchanges; none when the cache misses and the history database
    is unreachable (the turn is answered without them rather than held up)."""
    try:
        return await context.recent(request.sid, limit, user=user)
    except Unavailable as exc:
        log.warning("llm: no context for session %s: %s", request.sid, exc)
        return []


async def _nothing() -> list[Exchange]:
    return []


async def _memories(ctx: Context, request: LlmRequest, limit: int) -> list[Memory]:
    """The user's memories for this turn: those the memory kind stored for the session
    when its last turn ended (a KV read), else (a session's first turn) asked of it now,
    waiting at most ``memory_recall_timeout_s``."""
    if not (limit and ctx.user):
        return []
    try:
        kv = await ctx.key_value(definitions.RECALLED)
        entry = await kv.get(definitions.kv_key(request.sid))
        return recall.decode(entry.value)[:limit]
    except KeyNotFoundError:
        pass  # the session's first turn: nothing found for it yet
    except (NatsError, TimeoutError) as exc:
        log.info("llm: stored memories unreadable (%r); asking the memory kind", exc)
    timeout = ctx.settings.memory_recall_timeout_s
    return await recall.recall(ctx.ask, ctx.user, request.text, limit, timeout)


def speakable(piece: str) -> bool:
    """Whether TTS has anything to say (``...`` or ``*`` alone does not)."""
    return any(c.isalnum() for c in piece)


async def handle(msg: Message, ctx: Context) -> None:
    assert isinstance(msg, LlmRequest)
    received = time.perf_counter()
    sid, turn = msg.sid, msg.turn
    if not msg.text.strip():
        raise BadInput("empty request: nothing to answer", code="empty_text")
    state: LlmState = ctx.state
    messages = await messages_for(msg, state.context, ctx)
    splitter = SentenceSplitter(ctx.settings.first_clause_words)
    reply: list[str] = []
    spoken: list[str] = []
    first_ms = 0.0

    async def speak(pieces: list[str]) -> None:
        nonlocal first_ms
        for piece in filter(speakable, pieces):
            llm_ms = (time.perf_counter() - received) * 1000.0
            first_ms = first_ms or llm_ms
            request = TtsRequest(sid, turn, len(spoken), piece, llm_ms=llm_ms)
            await ctx.forward(request, msg_id=f"{sid}.{turn}.s{len(spoken)}")
            spoken.append(piece)

    def cancelled() -> bool:
        return ctx.cancelled(sid, turn)

    if not cancelled():
        backend = state.backend
        backend.settings = ctx.settings  # live config: temperature, max tokens, ...
        async with aclosing(backend.stream(messages, cancelled)) as deltas:
            async for delta in deltas:
                if cancelled():
                    break
                index = len(reply)
                await ctx.emit(ReplyDelta(sid, turn, index, delta), msg_id=f"{sid}.{turn}.d{index}")
                reply.append(delta)
                await speak(splitter.push(delta))
    asked = msg.text.strip()
    if cancelled():
        said = " ".join(p.strip() for p in spoken)
        event = ReplyCancelled(sid, turn, spoken=said)
        await ctx.emit(event, msg_id=f"{sid}.{turn}.cancelled")
        if await ctx.settled():  # an abandoned speculation leaves no trace
            await state.context.add(sid, ctx.user, Exchange(turn, asked, said, time.time(), True))
        return
    await speak(splitter.flush())
    text = "".join(reply)
    llm_ms = (time.perf_counter() - received) * 1000.0
    done = ReplyDone(sid, turn, text, len(spoken), llm_ms=llm_ms, first_ms=first_ms, asked=asked)
    await ctx.emit(done, msg_id=f"{sid}.{turn}.done")
    if await ctx.settled():
        await state.context.add(sid, ctx.user, Exchange(turn, asked, text.strip(), time.time()))


SPEC = Spec(
    kind="llm",
    input=WorkQueue(),
    accepts=(LlmRequest,),
    publishes=(ReplyDelta, TtsRequest, ReplyDone, ReplyCancelled),
    load=load,
    handle=handle,
    unload=unload,
    describe=describe,
    health=health,
    on_control=on_control,
    buckets={definitions.RECALLED: "read"},
    asks=("memory.recall",),
)
