"""What the state layer (docs/data.md) costs, on real servers, in one run.

Four measurements, printed side by side in one table:

1. Prompt building (``llm.messages_for``) for a session with 8 earlier exchanges, with
   the context cache warm in L1 (no Redis), warm in L2 (Redis configured: every read goes
   to Redis by design, store/context_cache.py), and cold (L1 and L2 empty: PostgreSQL).
2. History write throughput: E events (transcript + reply.done pairs, with the message
   ids and ``Morgan-User`` headers the real processors publish) waiting in EVENTS, then
   written by 1 and by 2 history workers (child processes ``python -m processors
   history``, each on a fresh database and a fresh nats-server); events/s and the ratio.
3. Memory search: ``LongTermMemory.recall`` in Qdrant's local mode with 1k and 100k
   memories of one user plus as many of other users (so the user filter rejects half).
   Bulk points are random normalized 384-d vectors (embedding 100k sentences on these
   CPUs would take far longer than the bench), a few are real sentences; the query is
   embedded for real, and the embedding is timed on its own and together with the
   search. Also the memory kind's ``recall`` endpoint over NATS at 1k (a real memory
   worker, child process).
4. Turn latency the state layer adds: ``processors.llm.handle`` (through
   ``MemoryContext``) with an instant scripted backend, request -> first ``TtsRequest``
   and -> handle returns, without the state layer (L1 only, recall off), with the
   context cache only (Redis L2 + PostgreSQL L3, recall off), and with all of it (plus
   recall over NATS from the memory worker with 1k memories, which the handler waits
   for at most ``memory_recall_timeout_s``, as in use). The three alternate turn by turn,
   so drift of the machine hits all alike; a turn starts once the memory worker has
   answered the previous turn's recall (turns come seconds apart in use). Prints the
   added p95 against the target (< 5 ms at p95 with a warm cache); nothing is asserted.

Servers: PostgreSQL ``--postgres`` (default testbed.postgres.ADMIN_DSN, a temp database
per use, dropped after), Redis ``--redis`` (keys under a unique prefix, deleted after),
nats-server started here (streams.embedded) in a temp dir, Qdrant local mode in a temp
dir (in /dev/shm when there is one: only the untimed bulk load writes there; local mode
searches in memory).

    .venv/bin/python bench/state.py            # the full run (about 10 minutes)
    .venv/bin/python bench/state.py --quick    # small N, 10k instead of 100k
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import asyncpg
import numpy as np
import redis.asyncio
from nats.aio.client import Client
from nats.js import JetStreamContext
from qdrant_client import models

from processors import llm
from processors.harness import MemoryContext
from processors.llm_backends import Messages, StopCheck
from schemas import LlmRequest, ReplyDone, Subjects, Transcript, TtsRequest, Unavailable
from schemas.codec import USER_HEADER, WORKER_HEADER
from store.context_cache import ContextCache
from store.history import History
from store.longterm import DIMENSIONS, Embedder, LongTermMemory, point_id
from store.records import Exchange
from streams import bus, definitions, embedded
from streams.settings import Settings
from testbed.postgres import ADMIN_DSN, reachable, temp_database
from testbed.stats import pct

ROOT = Path(__file__).resolve().parents[1]
USER = "alice"
EARLIER = 8
"""Earlier exchanges of every session the prompt is built for."""
TARGET_ADDED_P95_MS = 5.0
QUERY = "when is my sister's wedding again?"
REAL_MEMORIES = [
    "my sister Ada is getting married on the fourteenth of June",
    "I am allergic to peanuts",
    "remind me to water the tomatoes every evening",
    "my dog is called Biscuit and he is a beagle",
    "I started learning the cello last winter",
    "we are driving to the lake house for the holidays",
    "my favourite dish is mushroom risotto",
    "the car needs its tyres changed before October",
]
QUESTIONS = [
    "what is the weather like tomorrow?",
    "can you remind me what my sister is planning?",
    "how long should I boil an egg?",
    "tell me something about beagles",
    "what should I cook tonight?",
]


def ms(seconds: float) -> float:
    return seconds * 1000.0


class Table:
    """Rows on stdout, printed as they come (a long run shows its progress)."""

    def add(self, line: str = "") -> None:
        print(line, flush=True)

    def section(self, title: str, columns: str) -> None:
        self.add()
        self.add(f"{title:<64}{columns}")

    def latency(self, name: str, values: list[float]) -> None:
        """A row of N, p50 and p95 (milliseconds)."""
        p50, p95 = pct(values, 0.5), pct(values, 0.95)
        self.add(f"  {name:<62}{len(values):>6} {p50:>9.2f} {p95:>9.2f}")


def note(text: str) -> None:
    """Progress, on stderr: not part of the table."""
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)


# --- an LLM that answers at once ---


class Instant:
    """An LlmBackend writing the same deltas at once, every time; keeps the last prompt."""

    DELTAS = ("Sure, ", "tomorrow looks ", "sunny and mild. ", "Anything ", "else?")

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.last: Messages = []

    def describe(self) -> str:
        return "instant (scripted)"

    async def aclose(self) -> None:
        """Nothing to release."""

    async def stream(self, messages: Messages, should_stop: StopCheck) -> AsyncGenerator[str, None]:
        self.last = messages
        for delta in self.DELTAS:
            if should_stop():
                return
            yield delta


# --- child processes ---


class Child:
    """``python -m processors KIND`` with exactly the given MORGAN_* settings; its log is
    read on a thread (kept for errors) so it never blocks."""

    def __init__(self, kind: str, settings: dict[str, str]) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MORGAN_", "CONSUL_"))}
        env.update(settings)
        env.update({"PYTHONPATH": str(ROOT), "MORGAN_TIERS": "cpu", "MORGAN_LOG_FORMAT": "text"})
        self.kind = kind
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "processors", kind],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.log: list[bytes] = []
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log = [*self.log[-200:], line]
            if b" ready on " in line:
                self._ready.set()

    async def ready(self, timeout: float = 300.0) -> None:
        deadline = time.monotonic() + timeout
        while not self._ready.is_set():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = b"".join(self.log[-30:]).decode(errors="replace")
                raise RuntimeError(f"{self.kind} worker did not start:\n{tail}")
            await asyncio.sleep(0.05)

    def pause(self) -> None:
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        self.proc.send_signal(signal.SIGCONT)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


# --- helpers over the stores ---


async def seed(history: History, sid: str, count: int = EARLIER) -> list[Exchange]:
    """``count`` finished turns of ``sid`` (USER's) in the history; their exchanges."""
    at = time.time() - 3600
    out = []
    for k in range(count):
        asked = f"earlier question number {k}: what did we say about the garden and the roses?"
        said = f"Earlier answer {k}: the roses want sun in the morning and water twice a week."
        await history.record_user(sid, f"e{k}", USER, asked, typed=True, at=at + 10 * k)
        await history.record_reply(
            sid, f"e{k}", USER, said, cancelled=False, at=at + 10 * k + 2, llm_ms=300.0
        )
        out.append(Exchange(f"e{k}", asked, said, at + 10 * k + 2))
    return out


def context_of(settings: Settings, cache: ContextCache) -> MemoryContext:
    state = llm.LlmState(Instant(settings), cache)
    return MemoryContext.of(llm.SPEC, state=state, settings=settings, user=USER)


async def drop_redis_keys(url: str, prefix: str) -> int:
    client = redis.asyncio.from_url(url)
    try:
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*", count=500)]
        for key in keys:
            await client.delete(key)
        return len(keys)
    finally:
        await client.aclose()


# --- 1. prompt building ---


@dataclass
class PromptCase:
    name: str
    sid: str
    ctx: MemoryContext
    cold: bool

    async def reset(self) -> None:
        """A cold read: the session leaves L1 and L2 (not timed)."""
        if self.cold:
            cache: ContextCache = self.ctx.state.context
            cache.l1.drop([self.sid])
            if cache.l2 is not None:
                await cache.l2.delete([self.sid])


async def prompt_building(table: Table, dsn: str, redis_url: str, prefix: str, n: int) -> None:
    note("1. prompt building")
    plain = Settings(prefix=prefix, database_url=dsn, llm_history_turns=EARLIER)
    shared = plain.model_copy(update={"redis_url": redis_url})
    history = await History.open(dsn)
    cases: list[PromptCase] = []
    exchanges: list[Exchange] = []
    try:
        for name, settings, cold in (
            ("warm L1 (no Redis: L1 answers)", plain, False),
            ("warm L2 (Redis up: every read goes to Redis)", shared, False),
            ("cold, no Redis (L1 empty -> PostgreSQL)", plain, True),
            ("cold, Redis up (L1 + L2 empty -> PostgreSQL, fills L2)", shared, True),
        ):
            sid = f"prompt-{uuid.uuid4().hex[:12]}"
            exchanges = await seed(history, sid)
            cases.append(
                PromptCase(name, sid, context_of(settings, ContextCache(settings, history)), cold)
            )
        times: dict[str, list[float]] = {case.name: [] for case in cases}
        warmup = 5  # connections, the Lua script, first queries
        for i in range(n + warmup):  # alternate: drift of the machine hits every case alike
            for case in cases:
                await case.reset()
                request = LlmRequest(case.sid, f"now{i}", "and what about the tulips?")
                started = time.perf_counter()
                messages = await llm.messages_for(request, case.ctx.state.context, case.ctx)
                took = time.perf_counter() - started
                if len(messages) != 2 * EARLIER + 2:  # system, 8 exchanges, the question
                    raise RuntimeError(f"{case.name}: a prompt of {len(messages)} messages")
                if i >= warmup:
                    times[case.name].append(ms(took))
        baseline = []
        for _ in range(n):
            started = time.perf_counter()
            llm.prompt(plain.llm_system_prompt, exchanges, "and what about the tulips?")
            baseline.append(ms(time.perf_counter() - started))
        table.section(
            f"1. prompt building (llm.messages_for, {EARLIER} earlier exchanges)",
            "     N    p50 ms    p95 ms",
        )
        table.latency("llm.prompt alone (exchanges in hand, no reads)", baseline)
        for case in cases:
            table.latency(case.name, times[case.name])
    finally:
        for case in cases:
            await case.ctx.state.context.close()
        await history.close()


# --- 2. history write throughput ---


async def publish_events(js: JetStreamContext, prefix: str, sessions: int, turns: int) -> int:
    """``turns`` turns of each of ``sessions`` sessions (10 users), as STT and the LLM
    publish them: the transcript, then the reply; sessions interleaved. Events published."""
    subjects = Subjects(prefix)

    async def turn(k: int, n: int) -> None:
        sid, t, user = f"hist-{k}", f"t{n}", f"user{k % 10}"
        question = f"question {n} of session {k}: how tall do sunflowers grow in a summer?"
        await bus.publish(
            js,
            subjects.events(sid, Transcript.TYPE),
            Transcript(sid, t, question, stt_ms=40.0),
            msg_id=f"{sid}.{t}.transcript",
            headers={USER_HEADER: user, WORKER_HEADER: "stt@bench:1"},
        )
        answer = "Sunflowers often grow two to three metres tall in one summer, some more."
        await bus.publish(
            js,
            subjects.events(sid, ReplyDone.TYPE),
            ReplyDone(sid, t, answer, sentences=1, llm_ms=300.0, first_ms=90.0, asked=question),
            msg_id=f"{sid}.{t}.done",
            headers={USER_HEADER: user, WORKER_HEADER: "llm@bench:2"},
        )

    for n in range(turns):
        await asyncio.gather(*(turn(k, n) for k in range(sessions)))
    return 2 * sessions * turns


@dataclass
class Throughput:
    workers: int
    events: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.events / self.seconds


async def history_throughput(
    tmp: Path, admin_dsn: str, prefix: str, workers: int, sessions: int, turns: int
) -> Throughput:
    """Events waiting in EVENTS, ``workers`` history workers (paused while the events
    are published, so all start together): seconds until every row exists."""
    note(f"2. history throughput, {workers} worker(s)")
    async with AsyncExitStack() as stack:
        dsn = await stack.enter_async_context(temp_database(admin_dsn))
        await (await History.open(dsn)).close()  # the schema, before any worker starts
        run = f"{workers}-{uuid.uuid4().hex[:8]}"  # a fresh server and store for each run
        store = tmp / f"nats-history-{run}"
        srv = await stack.enter_async_context(await embedded.start(store_dir=store))
        settings = Settings(nats_url=srv.url, prefix=prefix, data_dir=tmp / f"data-{run}")
        nc = await bus.connect(settings, "bench-state")
        stack.push_async_callback(nc.close)
        js = nc.jetstream()
        await definitions.apply(js, settings)
        env = {
            "MORGAN_NATS_URL": srv.url,
            "MORGAN_PREFIX": prefix,
            "MORGAN_DATA_DIR": str(settings.data_dir),
            "MORGAN_DATABASE_URL": dsn,
        }
        children = [Child("history", env) for _ in range(workers)]
        for child in children:
            stack.callback(child.stop)
        await asyncio.gather(*(child.ready() for child in children))
        for child in children:
            child.pause()
        await asyncio.sleep(1.5)  # each worker's last pull request (1 s) expires
        events = await publish_events(js, prefix, sessions, turns)
        conn = await asyncpg.connect(dsn)
        stack.push_async_callback(conn.close)
        started = time.perf_counter()
        for child in children:
            child.resume()
        deadline = time.monotonic() + 600
        while int(await conn.fetchval("SELECT count(*) FROM messages")) < events:
            if time.monotonic() > deadline:
                raise RuntimeError("the history workers did not write every event in 600 s")
            await asyncio.sleep(0.02)
        seconds = time.perf_counter() - started
        turns_written = int(await conn.fetchval("SELECT count(*) FROM turns"))
        done = int(await conn.fetchval("SELECT count(*) FROM turns WHERE outcome = 'done'"))
        if turns_written != events // 2 or done != events // 2:
            raise RuntimeError(f"{turns_written} turns, {done} answered, of {events // 2}")
        return Throughput(workers, events, seconds)


async def history_section(
    table: Table, tmp: Path, admin_dsn: str, prefix: str, events: int
) -> None:
    sessions = 50
    turns = max(1, events // (2 * sessions))
    runs = []  # 1, 2, 2, 1 workers: a drift in the machine's load weighs on both alike
    for workers in (1, 2, 2, 1):
        runs.append(await history_throughput(tmp, admin_dsn, prefix, workers, sessions, turns))
    table.section(
        f"2. history writes ({runs[0].events} events of {sessions} sessions waiting in EVENTS)",
        "  events   seconds  events/s",
    )
    for run in runs:
        name = f"{run.workers} history worker(s), child processes, until every row exists"
        table.add(f"  {name:<62}{run.events:>8} {run.seconds:>9.2f} {run.rate:>9.0f}")
    rate = {w: sum(r.rate for r in runs if r.workers == w) / 2 for w in (1, 2)}
    ratio = rate[2] / rate[1]
    label = "ratio 2 workers / 1 worker (mean of both runs each)"
    table.add(f"  {label:<62}{'':>8} {'':>9} {ratio:>8.2f}x")


# --- 3. memory search ---


def random_vectors(rng: np.random.Generator, count: int) -> np.ndarray:
    v = rng.standard_normal((count, DIMENSIONS)).astype(np.float32)
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v


async def fill(memory: LongTermMemory, embedder: Embedder, size: int, seed: int) -> None:
    """``size`` memories of USER (a few real sentences, the rest random vectors) and
    ``size`` of 9 other users, in batches (not timed)."""
    rng = np.random.default_rng(seed)
    now = time.time()
    real = await embedder.embed(REAL_MEMORIES)
    batch = 1000
    for start in range(0, 2 * size, batch):
        count = min(batch, 2 * size - start)
        vectors = random_vectors(rng, count)
        points = []
        for j in range(count):
            i = start + j
            mine = i < size
            user = USER if mine else f"other{i % 9}"
            sid, turn = f"mem-{user}-{i // 20}", f"t{i % 20}"
            text = f"something {user} said, number {i}"
            vector = vectors[j].tolist()
            if mine and i < len(real):
                text, vector = REAL_MEMORIES[i], real[i]
            payload: dict[str, object] = {"user": user, "sid": sid, "turn": turn}
            payload |= {"text": text, "reply": "Noted.", "at": now - 60 * i}
            points.append(
                models.PointStruct(id=point_id(sid, turn), vector=vector, payload=payload)
            )
        await memory.client.upsert(memory.collection, points=points)
    if await memory.count(USER) != size:
        raise RuntimeError(f"{await memory.count(USER)} memories of {USER}, not {size}")


async def searches(
    memory: LongTermMemory,
    embedder: Embedder,
    size: int,
    n: int,
    seed: int,
    query: list[float],
    queries: list[str],
) -> tuple[list[float], list[float]]:
    """Fill ``memory``; then ``n`` searches with the real query, and ``n`` embeddings of
    a new query each followed by its search."""
    note(f"3. memory search: storing {size} + {size} memories")
    loading = time.perf_counter()
    await fill(memory, embedder, size, seed)
    loaded = time.perf_counter() - loading
    note(f"3. memory search: {2 * size} points stored in {loaded:.0f} s; searching")
    found = await memory.recall(USER, query, 3)
    if not found or "married" not in found[0].text:
        raise RuntimeError(f"the real memory was not found first: {found}")
    if any(not m.sid.startswith(f"mem-{USER}-") for m in found):
        raise RuntimeError(f"another user's memory came back: {found}")
    search = await timed(n, lambda i: memory.recall(USER, query, 3))

    async def both(i: int) -> None:
        [vector] = await embedder.embed([queries[i % len(queries)]])
        await memory.recall(USER, vector, 3)

    return search, await timed(n, both)


async def timed(n: int, op: Callable[[int], Awaitable[object]]) -> list[float]:
    out = []
    for i in range(n):
        started = time.perf_counter()
        await op(i)
        out.append(ms(time.perf_counter() - started))
    return out


async def memory_search(
    table: Table, qdrant: Path, prefix: str, embedder: Embedder, sizes: list[tuple[int, int]]
) -> Path:
    """Rows for each (size, N); returns the folder of the first (smallest) collection,
    closed, for the memory worker."""
    queries = [f"{q} ({i})" for i in range(8) for q in QUESTIONS]
    embed_times = await timed(sizes[0][1], lambda i: embedder.embed([queries[i % len(queries)]]))
    [query] = await embedder.embed([QUERY])
    table.section(
        "3. memory search (LongTermMemory.recall, Qdrant local mode, limit 3)",
        "     N    p50 ms    p95 ms",
    )
    table.add("   (stored: random normalized vectors + 8 real sentences; the query: real)")
    table.latency("embed one query (all-MiniLM-L6-v2, CPU, in this process)", embed_times)
    first = qdrant / f"memories-{sizes[0][0]}"
    for k, (size, n) in enumerate(sizes):
        path = qdrant / f"memories-{size}"
        memory = await LongTermMemory.open(Settings(prefix=prefix, qdrant_path=str(path)))
        assert memory is not None
        try:
            search, together = await searches(memory, embedder, size, n, k, query, queries)
        finally:
            await memory.close()
        label = f"{size // 1000}k"
        table.latency(f"search, {label} of the user's + {label} of 9 others'", search)
        table.latency(f"embed + search ({label}), measured together: a recall's work", together)
        if path != first:
            await asyncio.to_thread(shutil.rmtree, path, True)
    return first


# --- 3b and 4: the memory worker over NATS, and the turn ---


async def recall_over_nats(table: Table, nc: Client, prefix: str, n: int) -> None:
    async def ask(i: int) -> None:
        body = json.dumps({"user": USER, "text": f"{QUERY} ({i})", "limit": 3}).encode()
        answer = json.loads(await bus.ask(nc, prefix, "memory", "recall", body, 10.0))
        if len(answer["memories"]) != 3:
            raise RuntimeError(f"recall answered {answer}")

    await timed(5, ask)  # warm up
    table.latency(
        "recall over NATS (the memory kind's endpoint, 1k): all of it", await timed(n, ask)
    )


class Recall:
    """The memory kind's recall over NATS for the LLM's handler, as ``BusContext.ask``
    does it: no answer within ``memory_recall_timeout_s`` is ``Unavailable`` (the prompt
    goes without memories). The request itself is left to finish, and ``settle`` waits
    for it after the turn (not timed): turns come seconds apart in use, so the memory
    worker is not still busy with the previous turn's recall when the next one starts."""

    def __init__(self, nc: Client, prefix: str, timeout: float) -> None:
        self.nc, self.prefix, self.timeout = nc, prefix, timeout
        self.pending: list[asyncio.Task[bytes]] = []

    async def __call__(self, body: bytes) -> bytes:
        task = asyncio.create_task(bus.ask(self.nc, self.prefix, "memory", "recall", body, 30))
        self.pending.append(task)
        try:
            return await asyncio.wait_for(asyncio.shield(task), self.timeout)
        except TimeoutError as exc:
            raise Unavailable("memory.recall: no answer (TimeoutError)") from exc

    async def settle(self) -> None:
        await asyncio.gather(*self.pending, return_exceptions=True)
        self.pending.clear()


@dataclass
class TurnCase:
    name: str
    ctx: MemoryContext
    recall: Recall | None
    first_tts: list[float]
    returned: list[float]
    recalled: int = 0

    async def turn(self, i: int, text: str, measure: bool) -> None:
        ctx = self.ctx
        ctx.emitted.clear()
        ctx.forwarded.clear()
        ctx.ids.clear()
        request = LlmRequest(ctx.state.sid, f"t{i}", text)
        started = time.perf_counter()
        await ctx.handle(request)
        took = time.perf_counter() - started
        first = next(m for _, m in ctx.forwarded if isinstance(m, TtsRequest))
        if measure:
            self.first_tts.append(first.llm_ms)
            self.returned.append(ms(took))
            backend: Instant = ctx.state.backend
            system = " ".join(m["content"] for m in backend.last if m["role"] == "system")
            self.recalled += "From earlier conversations" in system
        if self.recall is not None:
            await self.recall.settle()


@dataclass
class TurnState(llm.LlmState):
    sid: str = ""


async def turn_latency(
    table: Table, dsn: str, redis_url: str, prefix: str, nc: Client, qdrant: Path, n: int
) -> None:
    note("4. turn latency")
    bare = Settings(prefix=prefix)
    cached = bare.model_copy(update={"redis_url": redis_url, "database_url": dsn})
    full = cached.model_copy(update={"qdrant_path": str(qdrant)})  # says: memory is on
    history = await History.open(dsn)
    cases: list[TurnCase] = []
    lazy: list[History] = []
    try:
        recalled = await definitions.key_value(nc.jetstream(), full, definitions.RECALLED)
        for name, settings in (
            ("without (L1 only, no recall)", bare),
            ("cache only (Redis L2 + PG L3, no recall)", cached),
            ("with, first turn (L2 + L3 + recall asked, 1k)", full),
            ("with, later turn (L2 + L3 + memories stored)", full),
        ):
            sid = f"turn-{uuid.uuid4().hex[:12]}"
            exchanges = await seed(history, sid)
            l3 = History.lazy(settings.read_url) if settings.database_url else None
            lazy += [l3] if l3 is not None else []
            cache = ContextCache(settings, l3)
            if l3 is None:
                cache.l1.put(sid, USER, exchanges)  # this worker answered them
            state = TurnState(Instant(settings), cache, sid=sid)
            ctx = MemoryContext.of(llm.SPEC, state=state, settings=settings, user=USER)
            recall = None
            if settings.qdrant_path:
                recall = Recall(nc, prefix, settings.memory_recall_timeout_s)
                ctx.answers[("memory", "recall")] = recall
            if "stored" in name:  # what the memory kind stored when the last turn ended
                body = json.dumps({"user": USER, "text": QUESTIONS[0], "limit": 3}).encode()
                found = json.loads(await bus.ask(nc, prefix, "memory", "recall", body, 60))
                await recalled.put(definitions.kv_key(sid), json.dumps(found["memories"]).encode())
                ctx.buckets[definitions.RECALLED] = recalled  # the real bucket: a real read
            cases.append(TurnCase(name, ctx, recall, [], []))
        warmup = 5
        for i in range(n + warmup):  # alternate, in turn orders that rotate
            text = QUESTIONS[i % len(QUESTIONS)]
            k = i % len(cases)
            for case in cases[k:] + cases[:k]:
                await case.turn(i, text, i >= warmup)
        table.section(
            "4. turn latency: llm.handle, instant backend (MemoryContext)",
            "     N    p50 ms    p95 ms",
        )
        table.add(
            "   (turns alternate between the four; recall: the memory worker over NATS;"
            " stored memories: a NATS KV read)"
        )
        for case in cases:
            table.latency(f"{case.name}: -> first TtsRequest", case.first_tts)
        for case in cases:
            table.latency(f"{case.name}: -> handle returns", case.returned)
        without, cache_only, first_turn, later_turn = cases
        labels = {
            id(cache_only): "the cache alone",
            id(later_turn): "the whole state layer, a later turn (warm)",
            id(first_turn): "the whole state layer, a session's first turn (recall asked)",
        }
        for case in (cache_only, later_turn, first_turn):
            added = pct(case.first_tts, 0.95) - pct(without.first_tts, 0.95)
            at_p50 = pct(case.first_tts, 0.5) - pct(without.first_tts, 0.5)
            met = "met" if added < TARGET_ADDED_P95_MS else "NOT met"
            label = labels[id(case)]
            table.add(
                f"  added to the first TtsRequest by {label}: p95 {added:.2f} ms "
                f"(p50 {at_p50:.2f} ms); target < {TARGET_ADDED_P95_MS:.0f} ms at p95: {met}, "
                f"{added / TARGET_ADDED_P95_MS:.2f}x the budget"
            )
        table.add(
            f"  turns whose prompt had memories: first turns (recall answered within "
            f"{full.memory_recall_timeout_s * 1000:.0f} ms) {first_turn.recalled} of {n}, "
            f"later turns {later_turn.recalled} of {n}"
        )
    finally:
        for case in cases:
            await case.ctx.state.context.close()
        for l3 in [*lazy, history]:
            await l3.close()


# --- the run ---


async def run(args: argparse.Namespace) -> None:
    task = asyncio.current_task()
    assert task is not None
    # SIGTERM (as from ``timeout``) unwinds like Ctrl-C: workers, servers, keys, databases
    # and folders are cleaned up on the way out.
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    quick: bool = args.quick
    n = args.n or (30 if quick else 300)
    events = args.events or (400 if quick else 2000)
    big = args.big or (10_000 if quick else 100_000)
    big_n = args.big_n or (5 if quick else 20)
    if not await reachable(args.postgres):
        raise SystemExit(f"PostgreSQL does not answer at {args.postgres}")
    probe = redis.asyncio.from_url(args.redis)
    try:
        await probe.ping()
    finally:
        await probe.aclose()
    prefix = f"benchstate{uuid.uuid4().hex[:10]}"
    load = os.getloadavg()
    table = Table()
    table.add(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores, "
        f"python {platform.python_version()}; load average at start "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    table.add(f"N = {n} per latency row (search at {big // 1000}k: {big_n}); key prefix {prefix}")
    shm = Path("/dev/shm")
    async with AsyncExitStack() as stack:
        stack.push_async_callback(drop_redis_keys, args.redis, prefix)
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-state-")))
        qdrant = Path(
            stack.enter_context(
                tempfile.TemporaryDirectory(
                    prefix="bench-state-qdrant-", dir=shm if shm.is_dir() else None
                )
            )
        )
        dsn = await stack.enter_async_context(temp_database(args.postgres))
        await (await History.open(dsn)).close()
        await prompt_building(table, dsn, args.redis, prefix, n)
        await history_section(table, tmp, args.postgres, prefix, events)
        note("3. loading all-MiniLM-L6-v2")
        embedder = await Embedder.load()
        stack.callback(embedder.close)
        small = await memory_search(table, qdrant, prefix, embedder, [(1000, n), (big, big_n)])
        note("3. starting nats-server and a memory worker over the 1k memories")
        srv = await stack.enter_async_context(await embedded.start(store_dir=tmp / "nats"))
        settings = Settings(nats_url=srv.url, prefix=prefix, data_dir=tmp / "data")
        nc = await bus.connect(settings, "bench-state")
        stack.push_async_callback(nc.close)
        await definitions.apply(nc.jetstream(), settings)
        worker = Child(
            "memory",
            {
                "MORGAN_NATS_URL": srv.url,
                "MORGAN_PREFIX": prefix,
                "MORGAN_DATA_DIR": str(tmp / "data-memory"),
                "MORGAN_QDRANT_PATH": str(small),
            },
        )
        stack.callback(worker.stop)
        await worker.ready()
        await recall_over_nats(table, nc, prefix, n)
        await turn_latency(table, dsn, args.redis, prefix, nc, small, n)
    load = os.getloadavg()
    table.add(f"load average at the end {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--quick", action="store_true", help="small N, 10k memories: a smoke run")
    p.add_argument("--n", type=int, default=0, help="samples per latency row (300)")
    p.add_argument("--events", type=int, default=0, help="history events (2000)")
    p.add_argument("--big", type=int, default=0, help="the larger memory count (100000)")
    p.add_argument("--big-n", type=int, default=0, help="searches at the larger count (20)")
    p.add_argument("--postgres", default=ADMIN_DSN, help="a server where databases can be made")
    p.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = p.parse_args()
    logging.getLogger("morgan.bus").setLevel(logging.ERROR)  # "disconnected" on close
    warnings.filterwarnings("ignore", message="Local mode is not recommended")
    try:
        asyncio.run(run(args))
    except (asyncio.CancelledError, KeyboardInterrupt):
        print("bench/state.py: stopped early; what it started is cleaned up", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
