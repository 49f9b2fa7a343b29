"""The ``memory`` kind: long-term memory (docs/data.md).

It taps ``reply.done``: what the user asked is embedded (all-MiniLM-L6-v2, on CPU) and
kept in Qdrant with the reply, the session and the time, one point per turn (a
redelivery rewrites it). It answers two requests, through the worker's NATS micro
service:

- ``<prefix>.svc.memory.recall``: ``{"user", "text", "limit"}`` ->
  ``{"memories": [{"text", "reply", "at", "sid", "score"}]}``, the user's closest, only
  theirs;
- ``<prefix>.svc.memory.forget``: ``{"user"}`` -> ``{"deleted": n}``.

``recall``, ``forget`` and ``prompt_lines`` (from ``store.longterm``) are the client side,
for the LLM (the gateway, which may not import processors, uses ``store.longterm``).
With neither ``MORGAN_QDRANT_URL`` nor ``MORGAN_QDRANT_PATH`` there is no long-term
memory: the kind remembers nothing and recalls nothing.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

from nats.errors import Error as NatsError

from processors.context import Context, KvStore
from processors.spec import EventTap, Spec
from schemas import BadInput, Message, ReplyDone, Unavailable
from store import recall
from store.longterm import Embedder, LongTermMemory
from streams import definitions
from streams.settings import Settings

log = logging.getLogger("morgan.memory")
MOST = 20
"""Most memories one recall returns."""


@dataclass
class MemoryState:
    embedder: Embedder | None
    memory: LongTermMemory | None
    """None: no Qdrant configured (no long-term memory)."""


async def load(settings: Settings, tiers: tuple[str, ...]) -> MemoryState:
    memory = await LongTermMemory.open(settings)
    if memory is None:
        log.warning("no MORGAN_QDRANT_URL or MORGAN_QDRANT_PATH: long-term memory is off")
        return MemoryState(None, None)
    started = time.perf_counter()
    embedder = await Embedder.load()
    log.info("all-MiniLM-L6-v2 loaded in %.1f s", time.perf_counter() - started)
    return MemoryState(embedder, memory)


async def unload(state: MemoryState) -> None:
    if state.embedder is not None:
        state.embedder.close()
    if state.memory is not None:
        await state.memory.close()


def describe(state: MemoryState) -> str:
    if state.memory is None:
        return "off"
    return f"all-MiniLM-L6-v2 -> qdrant {state.memory.where}"


async def handle(msg: Message, ctx: Context) -> None:
    assert isinstance(msg, ReplyDone)
    state: MemoryState = ctx.state
    if not ctx.user or not msg.asked.strip() or state.memory is None or state.embedder is None:
        return
    [vector] = await state.embedder.embed([msg.asked])
    await state.memory.remember(
        ctx.user, msg.sid, msg.turn, msg.asked, msg.text, ctx.sent_at, vector
    )
    await prefetch(msg, ctx, state.memory, vector)


async def prefetch(
    msg: ReplyDone, ctx: Context, memory: LongTermMemory, vector: list[float]
) -> None:
    """The session's next turn gets the user's memories closest to this turn's words,
    found now (off that turn's path; the vector is already here): stored in
    ``MORGAN_RECALLED`` for the LLM. This turn's own memory is left out (it is in the
    session's context)."""
    limit = ctx.settings.memory_recall
    found = await memory.recall(ctx.user, vector, limit + 1) if limit else []
    others = [m for m in found if (m.sid, m.turn) != (msg.sid, msg.turn)][:limit]
    kv = await _bucket(ctx)
    try:
        await kv.put(definitions.kv_key(msg.sid), recall.encode(others))
    except (NatsError, TimeoutError) as exc:
        raise Unavailable(f"memory: storing the next turn's memories failed: {exc!r}") from exc


async def _bucket(ctx: Context) -> KvStore:
    try:
        return await ctx.key_value(definitions.RECALLED)
    except (NatsError, TimeoutError) as exc:
        raise Unavailable(f"memory: the {definitions.RECALLED} bucket: {exc!r}") from exc


def _request(body: bytes, *fields: str) -> dict[str, Any]:
    """The request's JSON object, with a non-empty string for each of ``fields``."""
    try:
        request = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadInput(f"not JSON: {exc}") from None
    if not isinstance(request, dict):
        raise BadInput("the request is not a JSON object")
    for name in fields:
        if not isinstance(request.get(name), str) or not request[name]:
            raise BadInput(f"{name!r} must be a non-empty string")
    return request


async def answer_recall(state: MemoryState, body: bytes) -> bytes:
    request = _request(body, "user", "text")
    limit = request.get("limit", 3)
    if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
        raise BadInput("'limit' must be a whole number, 0 or more")
    found = []
    if state.memory is not None and state.embedder is not None and limit:
        [vector] = await state.embedder.embed([request["text"]])
        found = await state.memory.recall(request["user"], vector, min(limit, MOST))
    return json.dumps({"memories": [asdict(m) for m in found]}).encode()


async def answer_forget(state: MemoryState, body: bytes) -> bytes:
    request = _request(body, "user")
    deleted = 0 if state.memory is None else await state.memory.forget(request["user"])
    return json.dumps({"deleted": deleted}).encode()


SPEC = Spec(
    kind="memory",
    input=EventTap(("reply.done",)),
    accepts=(ReplyDone,),
    publishes=(),
    load=load,
    handle=handle,
    unload=unload,
    describe=describe,
    max_deliver=-1,  # EVENTS is the write queue: a Qdrant outage loses nothing
    endpoints={"recall": answer_recall, "forget": answer_forget},
    buckets={definitions.RECALLED: "write"},
)
