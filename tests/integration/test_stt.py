"""The stt processor against a real nats-server and the shipped tiny.en model."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses

import pytest
from nats.js import JetStreamContext

from processors import stt
from processors.runtime import Worker
from processors.spec import Spec
from schemas import (
    BadInput,
    ErrorEvent,
    LlmRequest,
    ReplyDone,
    Subjects,
    Transcript,
    Utterance,
)
from streams import bus, definitions
from streams.settings import Settings
from testbed.audio import silence, speak
from tests.integration.bus_helpers import stored, until
from tests.integration.workers import running

S = Subjects()


@pytest.fixture(scope="module")
def model() -> stt.SttModel:
    return stt.open_model(Settings.from_env().model_copy(update={"stt_model": ""}), gpu=False)


@pytest.fixture
def spec(model: stt.SttModel) -> Spec:
    """The real stt SPEC with the module's model instead of loading one per test."""

    async def preloaded(settings: Settings, tiers: tuple[str, ...]) -> stt.SttModel:
        return model

    return dataclasses.replace(stt.SPEC, load=preloaded)


async def settled(js: JetStreamContext, durable: str = "stt-cpu") -> bool:
    """Nothing waiting for or held by the consumer."""
    info = await js.consumer_info(definitions.WORK, durable)
    return bool(info.num_pending == 0 and info.num_ack_pending == 0)


def utterance(sid: str, pcm: bytes, rate: int = 16000, turn: str = "t1") -> Utterance:
    return Utterance(sid=sid, turn=turn, rate=rate, first_seq=1, last_seq=2, pcm=pcm)


def test_check_refuses_odd_byte_counts_and_audio_past_30_seconds() -> None:
    with pytest.raises(BadInput) as odd:
        stt.check(utterance("s", b"\x00\x00\x00"))
    with pytest.raises(BadInput) as long:
        stt.check(utterance("s", silence(30_100)))
    assert odd.value.code == long.value.code == "bad_audio"
    stt.check(utterance("s", silence(30_000)))


def test_describe_names_model_precision_and_device(model: stt.SttModel) -> None:
    assert stt.describe(model) == "faster-whisper tiny.en int8 cpu"
    assert model.language == "en"


async def test_stt_transcribes_speech_and_sends_one_llm_request(
    settings: Settings, js: JetStreamContext
) -> None:
    pcm = silence(200) + speak("what is the weather like today") + silence(300)
    async with running(stt.SPEC, settings):  # the real loader, once
        await bus.publish(js, S.work("stt", "cpu"), utterance("s1", pcm), msg_id="s1.t1.utt")
        await until(lambda: settled(js))
    [transcript] = await stored(js, definitions.EVENTS, S.events("s1", "transcript"))
    assert isinstance(transcript, Transcript) and transcript.turn == "t1"
    assert "weather" in transcript.text.lower()
    assert transcript.text == transcript.text.strip() and transcript.stt_ms > 0
    assert await stored(js, definitions.WORK, S.work("llm")) == [
        LlmRequest("s1", "t1", transcript.text)
    ]
    assert await stored(js, definitions.EVENTS, S.events("s1", "reply.done")) == []


async def test_stt_closes_the_turn_without_llm_request_when_it_hears_only_silence(
    settings: Settings, js: JetStreamContext, spec: Spec
) -> None:
    async with running(spec, settings):
        await bus.publish(js, S.work("stt", "cpu"), utterance("s2", silence(1500)))
        await until(lambda: settled(js))
    [transcript] = await stored(js, definitions.EVENTS, S.events("s2", "transcript"))
    assert isinstance(transcript, Transcript) and transcript.text == ""
    assert await stored(js, definitions.EVENTS, S.events("s2", "reply.done")) == [
        ReplyDone("s2", "t1", text="", sentences=0)
    ]
    assert await stored(js, definitions.WORK, S.work("llm")) == []


async def test_stt_terms_wrong_rate_with_bad_audio_error_and_serves_the_next_message(
    settings: Settings, js: JetStreamContext, spec: Spec
) -> None:
    async with running(spec, settings) as worker:
        await bus.publish(js, S.work("stt", "cpu"), utterance("s3", silence(500, 8000), 8000))
        await bus.publish(js, S.work("stt", "cpu"), utterance("s3", silence(500), turn="t2"))
        await until(lambda: settled(js))
        assert (worker.failed, worker.handled) == (1, 1)
    [error] = await stored(js, definitions.EVENTS, S.events("s3", "error"))
    assert isinstance(error, ErrorEvent)
    assert (error.code, error.turn, error.retryable) == ("bad_audio", "t1", False)
    assert "8000" in error.message
    [transcript] = await stored(js, definitions.EVENTS, S.events("s3", "transcript"))
    assert isinstance(transcript, Transcript) and transcript.turn == "t2"


async def test_stt_publishes_one_transcript_for_an_utterance_published_twice_with_one_id(
    settings: Settings, js: JetStreamContext, spec: Spec
) -> None:
    msg = utterance("s4", speak("hello there"))
    for _ in range(2):
        await bus.publish(js, S.work("stt", "cpu"), msg, msg_id="s4.t1.utt")
    async with running(spec, settings) as worker:
        await until(lambda: settled(js))
        assert worker.handled == 1
    assert len(await stored(js, definitions.EVENTS, S.events("s4", "transcript"))) == 1
    assert len(await stored(js, definitions.WORK, S.work("llm"))) == 1


async def test_stt_publishes_one_transcript_when_a_worker_dies_mid_message_and_another_redoes_it(
    settings: Settings, js: JetStreamContext, spec: Spec
) -> None:
    fast = settings.model_copy(update={"work_ack_wait_s": 2.0})  # the workers' consumers'
    first = Worker(spec, fast, ("cpu",))
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(first.serve(stop, ready))
    await asyncio.wait_for(ready.wait(), 30)
    await bus.publish(js, S.work("stt", "cpu"), utterance("s5", speak("good morning Morgan")))

    async def in_hand() -> bool:
        return bool(first.in_flight)

    await until(in_hand)
    task.cancel()  # dies without acking: no drain, no finishing
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    async with running(spec, fast) as second:
        await until(lambda: settled(js))
        assert second.handled == 1
    [transcript] = await stored(js, definitions.EVENTS, S.events("s5", "transcript"))
    assert isinstance(transcript, Transcript) and "morning" in transcript.text.lower()
    assert len(await stored(js, definitions.WORK, S.work("llm"))) == 1
