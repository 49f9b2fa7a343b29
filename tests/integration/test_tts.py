"""The tts processor against a real nats-server and the shipped Piper voice."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from processors import tts
from processors.runtime import Worker
from processors.spec import Spec
from schemas import AudioChunk, Cancel, ErrorEvent, Subjects, TtsRequest
from streams import bus, definitions
from streams.settings import Settings
from testbed.audio import transcribe
from tests.integration.bus_helpers import stored, until
from tests.integration.workers import running

S = Subjects()
LONG = (
    "Here is a longer answer so that the synthesis takes a while. "
    "It has several sentences, each of them spoken in turn. "
    "The voice reads every word slowly and clearly. "
    "Then it stops, and the audio is complete."
)


@pytest.fixture(scope="module")
def voice() -> tts.TtsVoice:
    return tts.open_voice(Settings.from_env().model_copy(update={"tts_voice": ""}), gpu=False)


@pytest.fixture
def spec(voice: tts.TtsVoice) -> Spec:
    """The real tts SPEC with the module's voice instead of loading one per test."""

    async def preloaded(settings: Settings, tiers: tuple[str, ...]) -> tts.TtsVoice:
        return voice

    return dataclasses.replace(tts.SPEC, load=preloaded)


async def settled(js: JetStreamContext) -> bool:
    """Nothing waiting for or held by the tts-cpu consumer."""
    info = await js.consumer_info(definitions.WORK, "tts-cpu")
    return bool(info.num_pending == 0 and info.num_ack_pending == 0)


async def chunks(js: JetStreamContext, sid: str) -> list[AudioChunk]:
    out = await stored(js, definitions.AUDIO, S.audio_out(sid))
    assert all(isinstance(c, AudioChunk) for c in out)
    return [c for c in out if isinstance(c, AudioChunk)]


def test_split_cuts_pcm_into_chunks_of_the_given_length() -> None:
    pcm = bytes(2 * 2500)  # 2500 samples at 1000 Hz = 2.5 s
    assert [len(p) for p in tts.split(pcm, 1000, 1000)] == [2000, 2000, 1000]
    assert tts.split(b"", 22050, 500) == [b""]


def test_voice_answers_to_empty_its_name_and_its_path_only(voice: tts.TtsVoice) -> None:
    assert voice.name == "en_US-joe-medium" and voice.rate == 22050
    assert voice.answers_to("") and voice.answers_to(voice.name)
    assert voice.answers_to(str(voice.path))
    assert not voice.answers_to("en_GB-alba-medium")
    assert tts.describe(voice) == "piper en_US-joe-medium cpu"


async def test_tts_publishes_ordered_chunks_that_say_the_sentence(
    settings: Settings, js: JetStreamContext
) -> None:
    text = "The weather today is sunny and warm."
    request = TtsRequest("a1", "t1", seq=3, text=text, voice="en_US-joe-medium")
    async with running(tts.SPEC, settings):  # the real loader, once
        await bus.publish(js, S.work("tts", "cpu"), request, msg_id="a1.t1.3")
        await until(lambda: settled(js))
    got = await chunks(js, "a1")
    assert len(got) >= 3  # about 2.5 s of audio in 500 ms pieces
    assert [(c.turn, c.seq, c.chunk) for c in got] == [("t1", 3, i) for i in range(len(got))]
    assert [c.last for c in got] == [False] * (len(got) - 1) + [True]
    assert {c.rate for c in got} == {22050}
    assert got[0].tts_ms > 0 and all(c.tts_ms == 0 for c in got[1:])
    assert all(len(c.pcm) == 22050 for c in got[:-1])  # 500 ms of s16le
    heard = transcribe(b"".join(c.pcm for c in got), rate=22050).lower()
    assert {"weather", "today", "sunny", "warm"} <= set(heard.replace(".", "").split())


async def test_tts_sends_one_empty_last_chunk_for_text_without_sound(
    settings: Settings, js: JetStreamContext, spec: Spec
) -> None:
    async with running(spec, settings):
        await bus.publish(js, S.work("tts", "cpu"), TtsRequest("a2", "t1", seq=0, text="..."))
        await until(lambda: settled(js))
    assert [(c.chunk, c.last, c.pcm) for c in await chunks(js, "a2")] == [(0, True, b"")]


async def test_tts_publishes_nothing_for_a_turn_cancelled_before_it_starts(
    settings: Settings, nc: Client, js: JetStreamContext, spec: Spec
) -> None:
    async with running(spec, settings) as worker:
        await bus.publish_core(nc, S.control("a3"), Cancel("a3", "t1"))

        async def noted() -> bool:
            return ("a3", "t1") in worker.signals.cancelled

        await until(noted)
        await bus.publish(js, S.work("tts", "cpu"), TtsRequest("a3", "t1", seq=0, text="Hello."))
        await bus.publish(js, S.work("tts", "cpu"), TtsRequest("a3", "t2", seq=0, text="Hi."))
        await until(lambda: settled(js))
        assert worker.handled == 2
    assert {c.turn for c in await chunks(js, "a3")} == {"t2"}


async def test_tts_stops_publishing_when_the_turn_is_cancelled_during_synthesis(
    settings: Settings, nc: Client, js: JetStreamContext, spec: Spec
) -> None:
    async with running(spec, settings) as worker:
        await bus.publish(js, S.work("tts", "cpu"), TtsRequest("a4", "t1", seq=0, text=LONG))

        async def in_hand() -> bool:
            return bool(worker.in_flight)

        await until(in_hand)
        await bus.publish_core(nc, S.control("a4"), Cancel("a4", "t1"))
        await until(lambda: settled(js))
        assert worker.handled == 1
    assert await chunks(js, "a4") == []


async def test_tts_terms_an_unknown_voice_with_an_error_event(
    settings: Settings, js: JetStreamContext, spec: Spec
) -> None:
    request = TtsRequest("a5", "t1", seq=0, text="Hello.", voice="en_GB-nobody-low")
    async with running(spec, settings) as worker:
        await bus.publish(js, S.work("tts", "cpu"), request)
        await until(lambda: settled(js))
        assert worker.failed == 1
    [error] = await stored(js, definitions.EVENTS, S.events("a5", "error"))
    assert isinstance(error, ErrorEvent)
    assert (error.code, error.turn) == ("unknown_voice", "t1")
    assert "en_GB-nobody-low" in error.message
    assert await chunks(js, "a5") == []


async def test_tts_finishes_and_acks_the_sentence_in_hand_when_told_to_stop(
    settings: Settings, js: JetStreamContext, spec: Spec
) -> None:
    worker = Worker(spec, settings, ("cpu",))
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(worker.serve(stop, ready))
    await asyncio.wait_for(ready.wait(), 30)
    await bus.publish(js, S.work("tts", "cpu"), TtsRequest("a6", "t1", seq=0, text=LONG))

    async def in_hand() -> bool:
        return bool(worker.in_flight)

    await until(in_hand)
    stop.set()
    await asyncio.wait_for(task, 60)
    assert worker.handled == 1
    await until(lambda: settled(js), timeout=5)  # acked: neither pending nor redelivered
    got = await chunks(js, "a6")
    assert got and got[-1].last and [c.chunk for c in got] == list(range(len(got)))
