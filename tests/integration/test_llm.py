"""The llm processor with the local backend (SmolLM2-135M in process) on a real nats-server."""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from processors import llm, llm_backends
from processors.runtime import Worker
from processors.spec import Spec
from schemas import (
    Cancel,
    ErrorEvent,
    LlmRequest,
    Message,
    ReplyCancelled,
    ReplyDelta,
    ReplyDone,
    Subjects,
    TtsRequest,
)
from store.context_cache import ContextCache
from store.records import Exchange
from streams import bus, definitions
from streams.config_source import ensure_bucket
from streams.settings import Settings
from tests.integration.bus_helpers import stored, stored_with_times, stream_inbox, until
from tests.integration.workers import ChildWorker, gpu_tier_taker, running

S = Subjects()
STORY = "Tell me a long story about a brave dragon and a little girl."


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Short ack wait, so a killed worker's request comes back within seconds."""
    return settings.model_copy(update={"work_ack_wait_s": 3.0, "llm_max_tokens": 60})


@pytest.fixture(scope="module")
def model() -> Iterator[llm_backends.LocalBackend]:
    backend = llm_backends.LocalBackend.open(Settings())
    yield backend
    backend.llama.close()


def spec_for(model: llm_backends.LocalBackend, settings: Settings) -> Spec:
    """The real llm SPEC, sharing the module's model, with ``settings``' limits."""

    async def preloaded(s: Settings, tiers: tuple[str, ...]) -> llm.LlmState:
        backend = llm_backends.LocalBackend(model.llama, model.path, s)
        return llm.LlmState(backend, ContextCache(s, None))

    return dataclasses.replace(llm.SPEC, load=preloaded)


async def remembered(worker: Worker, sid: str) -> list[tuple[str, str, str]]:
    """The session's exchanges in the worker's context cache, without their times."""
    found = await worker.state.context.recent(sid, 32)
    return [(e.turn, e.user, e.assistant) for e in found]


async def events(js: JetStreamContext, sid: str, kind: str) -> list[Message]:
    return await stored(js, definitions.EVENTS, S.events(sid, kind))


async def settled(js: JetStreamContext) -> bool:
    info = await js.consumer_info(definitions.WORK, "llm")
    return bool(info.num_pending == 0 and info.num_ack_pending == 0)


async def request(js: JetStreamContext, sid: str, turn: str, text: str) -> None:
    await bus.publish(js, S.work("llm"), LlmRequest(sid, turn, text), msg_id=f"{sid}.{turn}.llm")


async def test_reply_streams_deltas_and_sends_each_sentence_to_tts_before_done(
    settings: Settings, js: JetStreamContext, model: llm_backends.LocalBackend
) -> None:
    async with running(spec_for(model, settings), settings):
        await request(js, "s1", "t1", "What can you do for me?")
        await until(lambda: settled(js))
    deltas = await stored_with_times(js, definitions.EVENTS, S.events("s1", "reply.delta"))
    [(done_at, done)] = await stored_with_times(
        js, definitions.EVENTS, S.events("s1", "reply.done")
    )
    tts = await stored_with_times(js, definitions.WORK, S.work("tts", "cpu"))
    assert isinstance(done, ReplyDone) and done.turn == "t1"
    assert len(deltas) >= 1 and all(at <= done_at for at, _ in deltas)
    texts = [d.text for _, d in deltas if isinstance(d, ReplyDelta)]
    assert [d.index for _, d in deltas if isinstance(d, ReplyDelta)] == list(range(len(deltas)))
    assert "".join(texts) == done.text and done.text.strip()
    requests = [r for _, r in tts if isinstance(r, TtsRequest)]
    assert done.sentences == len(requests) >= 1
    assert [r.seq for r in requests] == list(range(len(requests)))
    assert tts[0][0] < done_at  # speech can start before the reply is finished
    assert " ".join(r.text for r in requests).split() == done.text.split()
    assert 0 < requests[0].llm_ms <= requests[-1].llm_ms


async def test_cancel_mid_stream_stops_generation_and_emits_reply_cancelled(
    settings: Settings, nc: Client, js: JetStreamContext, model: llm_backends.LocalBackend
) -> None:
    settings = settings.model_copy(update={"llm_max_tokens": 400})
    async with (
        running(spec_for(model, settings), settings) as worker,
        stream_inbox(js, S.events("s2")) as inbox,
    ):
        await request(js, "s2", "t1", STORY)
        await inbox.next(ReplyDelta)
        await bus.publish_core(nc, S.control("s2"), Cancel("s2", "t1"))
        cancelled = await inbox.next(ReplyCancelled, timeout=30)
        await until(lambda: settled(js))
        assert (worker.handled, worker.failed) == (1, 0)
        tts = await stored(js, definitions.WORK, S.work("tts", "cpu"))
        spoken = [r.text for r in tts if isinstance(r, TtsRequest)]
        assert await remembered(worker, "s2") == [("t1", STORY, cancelled.spoken)]
    assert cancelled.reason == "barge-in"
    assert cancelled.spoken == " ".join(t.strip() for t in spoken)  # what TTS was given
    assert await events(js, "s2", "reply.done") == []
    assert len(await events(js, "s2", "reply.delta")) < 100  # stopped well before 400 tokens


async def test_second_turn_is_answered_from_the_first_exchange_in_the_context_cache(
    settings: Settings, js: JetStreamContext, model: llm_backends.LocalBackend
) -> None:
    async with running(spec_for(model, settings), settings) as worker:
        await request(js, "s3", "t1", "My name is Zed.")
        await until(lambda: settled(js))
        [first] = await events(js, "s3", "reply.done")
        assert isinstance(first, ReplyDone) and first.asked == "My name is Zed."
        assert await remembered(worker, "s3") == [("t1", "My name is Zed.", first.text.strip())]
        await request(js, "s3", "t2", "What is my name?")
        await until(lambda: settled(js))
        assert [turn for turn, _, _ in await remembered(worker, "s3")] == ["t1", "t2"]


async def test_sentences_go_to_the_gpu_tier_while_a_gpu_tts_worker_pulls(
    settings: Settings, js: JetStreamContext, nc: Client, model: llm_backends.LocalBackend
) -> None:
    async with (
        gpu_tier_taker(nc, js, settings, "tts") as taken,
        running(spec_for(model, settings), settings),
    ):
        await request(js, "s5", "t1", "Say hello.")
        await until(lambda: settled(js))
        [done] = await events(js, "s5", "reply.done")
        assert isinstance(done, ReplyDone) and done.sentences >= 1

        async def all_taken() -> bool:
            return len(taken) == done.sentences

        await until(all_taken)
    assert [r.seq for r in taken if isinstance(r, TtsRequest)] == list(range(done.sentences))
    assert await stored(js, definitions.WORK, S.work("tts", "cpu")) == []


async def test_empty_request_is_refused_with_an_error_event(
    settings: Settings, js: JetStreamContext, model: llm_backends.LocalBackend
) -> None:
    async with running(spec_for(model, settings), settings) as worker:
        await request(js, "s6", "t1", "   ")
        await until(lambda: settled(js))
        assert worker.failed == 1
    [error] = await events(js, "s6", "error")
    assert isinstance(error, ErrorEvent) and (error.code, error.turn) == ("empty_text", "t1")


async def test_request_redelivered_after_its_worker_is_killed_yields_one_reply(
    settings: Settings, js: JetStreamContext, model: llm_backends.LocalBackend
) -> None:
    settings = settings.model_copy(update={"llm_max_tokens": 200})
    child = ChildWorker("llm", settings)
    try:
        await child.wait_ready()
        await request(js, "s7", "t1", STORY)

        async def streaming() -> bool:
            return len(await events(js, "s7", "reply.delta")) >= 3

        await until(streaming)
    finally:
        child.kill()
    deltas_at_kill = len(await events(js, "s7", "reply.delta"))
    assert await events(js, "s7", "reply.done") == []
    async with running(spec_for(model, settings), settings) as worker:
        await until(lambda: settled(js))
        assert worker.handled == 1
    [done] = await events(js, "s7", "reply.done")
    deltas = [d for d in await events(js, "s7", "reply.delta") if isinstance(d, ReplyDelta)]
    tts = await stored(js, definitions.WORK, S.work("tts", "cpu"))
    assert isinstance(done, ReplyDone)
    assert deltas_at_kill < len(deltas)
    assert [d.index for d in deltas] == list(range(len(deltas)))  # no duplicates
    assert "".join(d.text for d in deltas) == done.text
    assert [r.seq for r in tts if isinstance(r, TtsRequest)] == list(range(done.sentences))


async def test_local_reply_does_not_depend_on_what_the_model_answered_before(
    model: llm_backends.LocalBackend,
) -> None:
    settings = Settings(llm_max_tokens=40)
    system = settings.llm_system_prompt
    messages = llm.prompt(system, [Exchange("t1", "Hi!", "Hello!")], "Tell me about the moon.")
    fresh = llm_backends.LocalBackend.open(settings)
    try:
        expected = [d async for d in fresh.stream(messages, lambda: False)]
    finally:
        fresh.llama.close()
    used = llm_backends.LocalBackend(model.llama, model.path, settings)
    for other in ("What is a cat?", "Tell me about the moon and the sun."):
        assert [d async for d in used.stream(llm.prompt(system, [], other), lambda: False)]
        assert [d async for d in used.stream(messages, lambda: False)] == expected


async def test_local_backend_reads_max_tokens_from_its_current_settings(
    model: llm_backends.LocalBackend,
) -> None:
    backend = llm_backends.LocalBackend(model.llama, model.path, Settings(llm_max_tokens=40))
    messages = llm.prompt("", [], STORY)
    long = [d async for d in backend.stream(messages, lambda: False)]
    backend.settings = backend.settings.model_copy(update={"llm_max_tokens": 4})
    short = [d async for d in backend.stream(messages, lambda: False)]
    assert len(long) > 4 >= len(short) > 0


async def test_a_live_config_change_of_max_tokens_limits_the_next_reply(
    settings: Settings, js: JetStreamContext, model: llm_backends.LocalBackend
) -> None:
    async with running(spec_for(model, settings), settings) as worker:
        await request(js, "live1", "t1", STORY)
        await until(lambda: settled(js))
        kv = await ensure_bucket(js, settings)
        await kv.put("llm", json.dumps({"llm_max_tokens": 4}).encode())
        await until(lambda: worker.settings.llm_max_tokens == 4)
        await request(js, "live2", "t1", STORY)
        await until(lambda: settled(js))
    long, short = await events(js, "live1", "reply.delta"), await events(js, "live2", "reply.delta")
    assert len(long) > 4 >= len(short) > 0


async def test_local_backend_first_token_and_first_sentence_latency(
    model: llm_backends.LocalBackend,
) -> None:
    """Not a pass/fail benchmark: prints the numbers (run with -s) and checks sanity."""
    from processors.sentences import SentenceSplitter

    settings = Settings()
    messages = llm.prompt(settings.llm_system_prompt, [], "What is the weather usually like?")
    firsts: list[tuple[float, float]] = []
    for _ in range(3):
        started, first_token, first_sentence = time.perf_counter(), 0.0, 0.0
        splitter = SentenceSplitter(settings.first_clause_words)
        stream: AsyncIterator[str] = model.stream(messages, lambda: False)
        async for delta in stream:
            now = time.perf_counter() - started
            first_token = first_token or now
            if splitter.push(delta) and not first_sentence:
                first_sentence = now
        first_sentence = first_sentence or time.perf_counter() - started
        firsts.append((first_token, first_sentence))
    token_ms = sorted(1000 * t for t, _ in firsts)[1]
    sentence_ms = sorted(1000 * s for _, s in firsts)[1]
    print(f"\nlocal SmolLM2-135M: first token {token_ms:.0f} ms, first piece {sentence_ms:.0f} ms")
    assert 0 < token_ms <= sentence_ms


def test_pieces_without_letters_or_digits_are_not_spoken() -> None:
    assert [p for p in ["...", "Hi.", "*", "42!", "—", "Ça va?"] if llm.speakable(p)] == [
        "Hi.",
        "42!",
        "Ça va?",
    ]


def test_local_model_is_the_shipped_smollm2_unless_llm_model_names_a_gguf_file(
    tmp_path: Path,
) -> None:
    shipped = llm_backends.local_model_path(Settings(llm_model="qwen2.5:0.5b"))  # an Ollama name
    assert shipped.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and shipped.is_file()
    mine = tmp_path / "mine.gguf"
    mine.write_bytes(b"GGUF")
    assert llm_backends.local_model_path(Settings(llm_model=str(mine))) == mine
    with pytest.raises(FileNotFoundError):
        llm_backends.local_model_path(Settings(llm_model=str(tmp_path / "missing.gguf")))
