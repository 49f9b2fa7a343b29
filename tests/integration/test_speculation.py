"""Speculative turns through the real pipeline: VAD, STT, LLM and TTS workers with their
real models against a real nats-server. A pause starts the turn's work; the client sees
it only once the pause is the end, and never sees an attempt whose speech went on."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from typing import TypeVar

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from processors import llm, metrics, stt, tts, vad
from processors.runtime import Worker
from schemas import (
    Abandon,
    AudioChunk,
    Cancel,
    Message,
    Release,
    ReplyCancelled,
    ReplyDelta,
    ReplyDone,
    SpeechStarted,
    SpeechStopped,
    Transcript,
)
from schemas.codec import SPECULATIVE_HEADER, TYPE_HEADER
from streams.settings import Settings
from testbed.audio import silence, speak
from tests.integration.bus_helpers import Inbox, stream_inbox
from tests.integration.test_vad import Mic
from tests.integration.workers import running

M = TypeVar("M", bound=Message)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"vad_speculate_ms": 150, "vad_silence_ms": 600, "llm_max_tokens": 24}
    )


@dataclass
class Heard:
    """What one session's client and an operator on its control subject would see."""

    events: Inbox
    audio: Inbox
    control: Inbox
    llm: Worker

    def __post_init__(self) -> None:
        self.seen: list[Message] = []
        """Every event so far, in order."""

    async def next(self, cls: type[M], turn: str = "", timeout: float = 120.0) -> M:
        """Wait for an event of ``cls`` (of ``turn``), keeping all in ``seen``."""
        while True:
            msg: Message = await self.events.next(timeout=timeout)
            self.seen.append(msg)
            if isinstance(msg, cls) and (not turn or getattr(msg, "turn", "") == turn):
                return msg

    async def reply_of(self, turn: str) -> ReplyDone | ReplyCancelled:
        """Wait for the turn's reply to end; then a little longer for strays."""
        end = await self.next(ReplyDone | ReplyCancelled, turn)  # type: ignore[arg-type]
        self.seen += await self.events.quiet_for(1.5)
        return end

    async def controls(self) -> list[Message]:
        """Control messages of the session so far."""
        return await self.control.quiet_for(0)

    def of(self, cls: type[Message], turn: str = "") -> list[Message]:
        return [m for m in self.seen if isinstance(m, cls) and (not turn or m.turn == turn)]  # type: ignore[attr-defined]


@asynccontextmanager
async def pipeline(
    settings: Settings, js: JetStreamContext, nc: Client, mic: Mic, *, stt_too: bool = True
) -> AsyncIterator[Heard]:
    async with AsyncExitStack() as stack:
        events = await stack.enter_async_context(stream_inbox(js, mic.subjects.events(mic.sid)))
        audio = await stack.enter_async_context(stream_inbox(js, mic.subjects.audio_out(mic.sid)))
        control = Inbox()
        await nc.subscribe(mic.subjects.control(mic.sid), cb=control.on_msg)
        await stack.enter_async_context(running(vad.SPEC, settings))
        if stt_too:
            await stack.enter_async_context(running(stt.SPEC, settings))
        answering = await stack.enter_async_context(running(llm.SPEC, settings))
        await stack.enter_async_context(running(tts.SPEC, settings))
        yield Heard(events, audio, control, answering)


def marks_after_speech_started(heard: Heard) -> set[str | None]:
    """The ``Morgan-Speculative`` marks on the session's events after speech_started."""
    types = [h.get(TYPE_HEADER) for h in heard.events.headers]
    return {
        h.get(SPECULATIVE_HEADER)
        for h, t in zip(heard.events.headers, types, strict=True)
        if t != SpeechStarted.TYPE
    }


def audio_in_order(chunks: list[Message], turn: str, sentences: int) -> None:
    """Every sentence's chunks, each once, ending in a ``last`` one."""
    mine = [c for c in chunks if isinstance(c, AudioChunk) and c.turn == turn]
    keys = sorted((c.seq, c.chunk) for c in mine)
    assert len(keys) == len(set(keys)), "a chunk came twice"
    assert {seq for seq, _ in keys} == set(range(sentences))
    for seq in range(sentences):
        parts = sorted((c for c in mine if c.seq == seq), key=lambda c: c.chunk)
        assert [c.chunk for c in parts] == list(range(len(parts))) and parts[-1].last


@pytest.mark.parametrize(
    ("speculate_ms", "silence_ms", "turn_model"),
    [(150, 600, False), (150, 200, False), (150, 1500, True)],
    ids=["speculation-ready-at-the-end", "confirmed-while-stt-still-runs", "model-ends-it"],
)
async def test_a_confirmed_speculation_gives_one_transcript_one_reply_and_its_audio_in_order(
    settings: Settings,
    js: JetStreamContext,
    nc: Client,
    speculate_ms: int,
    silence_ms: int,
    turn_model: bool,
) -> None:
    settings = settings.model_copy(
        update={
            "vad_speculate_ms": speculate_ms,
            "vad_silence_ms": silence_ms,
            "vad_turn_model": turn_model,
            "vad_turn_max_silence_ms": silence_ms,
        }
    )
    mic = Mic(js, settings)
    async with pipeline(settings, js, nc, mic) as heard:
        await mic.claim()
        await mic.send(silence(400) + speak("what is the capital of france") + silence(1500))
        done = await heard.reply_of("u1")
        chunks = await heard.audio.quiet_for(2.0)
    assert isinstance(done, ReplyDone) and done.sentences > 0
    [transcript] = heard.of(Transcript)
    assert isinstance(transcript, Transcript) and "france" in transcript.text.lower()
    assert len(heard.of(ReplyDone)) == 1 and not heard.of(ReplyCancelled)
    order = [type(m) for m in heard.seen]
    assert order.index(SpeechStopped) < order.index(Transcript) < order.index(ReplyDelta)
    audio_in_order(chunks, "u1", done.sentences)
    releases = [m for m in await heard.controls() if isinstance(m, Release)]
    [attempt] = {r.attempt for r in releases if r.kind == "vad"}
    # It went the speculative way: what reached the client carries the confirmed attempt.
    assert marks_after_speech_started(heard) == {attempt}
    if silence_ms == 200:  # the end came ~50 ms after the pause; STT took longer
        assert transcript.stt_ms > silence_ms - speculate_ms


async def test_speech_that_goes_on_after_a_pause_abandons_the_speculation_everywhere(
    settings: Settings, js: JetStreamContext, nc: Client
) -> None:
    mic = Mic(js, settings)
    wasted_before = metrics.SPECULATED.labels("stt", "wasted")._value.get()
    first, rest = speak("i would like to book a table for"), speak("four people tonight")
    async with pipeline(settings, js, nc, mic) as heard:
        await mic.claim()
        # espeak ends each phrase with ~0.4 s of silence: a pause, not an end (0.6 s)
        await mic.send(silence(400) + first + rest + silence(1500))
        done = await heard.reply_of("u1")
        await heard.audio.quiet_for(1.0)
        context = await heard.llm.state.context.recent(mic.sid, 10)
    controls = await heard.controls()
    abandoned = {c.attempt for c in controls if isinstance(c, Abandon)}
    confirmed = {c.attempt for c in controls if isinstance(c, Release) and c.kind == "vad"}
    assert abandoned and len(confirmed) == 1 and not abandoned & confirmed
    [transcript] = heard.of(Transcript)
    assert isinstance(transcript, Transcript) and "people" in transcript.text.lower()
    assert isinstance(done, ReplyDone) and len(heard.of(ReplyDone)) == 1
    assert (
        not marks_after_speech_started(heard) & abandoned
    )  # nothing of an abandoned attempt reached EVENTS
    assert [e.user for e in context] == [transcript.text.strip()]  # nor the LLM's context
    assert metrics.SPECULATED.labels("stt", "wasted")._value.get() > wasted_before


async def test_a_worker_that_starts_after_the_turn_was_confirmed_learns_it_from_events(
    settings: Settings, js: JetStreamContext, nc: Client
) -> None:
    """STT is down while the VAD speculates and confirms (a restart): the worker that
    takes the speculative utterance later missed the control message and asks EVENTS."""
    mic = Mic(js, settings)
    async with pipeline(settings, js, nc, mic, stt_too=False) as heard:
        await mic.claim()
        await mic.send(silence(400) + speak("what is the capital of france") + silence(1500))
        stopped = await heard.next(SpeechStopped, timeout=60)
        await heard.control.next(Release, timeout=10)
        async with running(stt.SPEC, settings):
            done = await heard.reply_of(stopped.turn)
    assert isinstance(done, ReplyDone)
    [transcript] = heard.of(Transcript)
    assert "france" in transcript.text.lower()  # type: ignore[attr-defined]


async def test_speech_during_the_reply_of_a_confirmed_speculation_barges_in(
    settings: Settings, js: JetStreamContext, nc: Client
) -> None:
    mic = Mic(js, settings)
    question = speak("tell me a long story about a brave little fox")
    async with pipeline(settings, js, nc, mic) as heard:
        await mic.claim()
        await mic.send(silence(400) + question + silence(900))
        first = await heard.next(Transcript, timeout=60)
        await mic.send(speak("stop please") + silence(1500))
        cancel = await heard.control.next(Cancel, timeout=60)
        while (second := await heard.next(Transcript)).turn == first.turn:
            pass
        await heard.reply_of(second.turn)
    assert cancel.turn == first.turn and cancel.reason == "barge-in"
    assert (
        len(heard.of(Transcript, first.turn)) == 1 and len(heard.of(Transcript, second.turn)) == 1
    )
    assert len(heard.of(ReplyDone, second.turn)) == 1
