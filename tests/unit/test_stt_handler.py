"""The stt kind's handler with the real tiny.en model and no NATS (processors.harness)."""

from __future__ import annotations

import pytest

from processors import stt
from processors.harness import MemoryContext
from schemas import BadInput, LlmRequest, ReplyDone, Transcript, Utterance
from streams.routes import Routes
from streams.settings import Settings
from testbed.audio import silence, speak


@pytest.fixture(scope="module")
def model() -> stt.SttModel:
    return stt.open_model(Settings(stt_model=""), gpu=False)


@pytest.fixture(scope="module")
def question() -> bytes:
    return silence(200) + speak("what is the weather like today") + silence(300)


def utterance(pcm: bytes, *, rate: int = 16000, turn: str = "t1") -> Utterance:
    return Utterance("s1", turn, rate=rate, first_seq=1, last_seq=9, pcm=pcm)


async def test_speech_becomes_a_transcript_event_and_one_llm_request_to_the_llm(
    model: stt.SttModel, question: bytes
) -> None:
    ctx = MemoryContext.of(stt.SPEC, state=model)
    await ctx.handle(utterance(question))
    [transcript] = ctx.emitted_of(Transcript)
    assert (transcript.sid, transcript.turn) == ("s1", "t1")
    assert "weather" in transcript.text.lower() and transcript.stt_ms > 0
    assert ctx.forwarded == [("llm", LlmRequest("s1", "t1", transcript.text))]
    assert ctx.ids == ["s1.t1.transcript", "s1.t1.llm"]


async def test_a_redelivered_utterance_publishes_under_the_same_ids(
    model: stt.SttModel, question: bytes
) -> None:
    ctx = MemoryContext.of(stt.SPEC, state=model)
    for _ in range(2):
        await ctx.handle(utterance(question))
    assert ctx.ids == ["s1.t1.transcript", "s1.t1.llm"] * 2  # JetStream drops the second pair
    first, second = ctx.emitted_of(Transcript)
    assert first.text == second.text


async def test_silence_gives_an_empty_transcript_and_closes_the_turn_without_asking_the_llm(
    model: stt.SttModel,
) -> None:
    ctx = MemoryContext.of(stt.SPEC, state=model)
    await ctx.handle(utterance(silence(1500)))
    assert [t.text for t in ctx.emitted_of(Transcript)] == [""]
    assert ctx.emitted_of(ReplyDone) == [ReplyDone("s1", "t1", text="", sentences=0)]
    assert ctx.forwarded == []
    assert ctx.ids == ["s1.t1.transcript", "s1.t1.done"]


@pytest.mark.parametrize(
    ("pcm", "rate"),
    [(silence(500, 8000), 8000), (b"\x00\x00\x00", 16000), (silence(30_100), 16000)],
    ids=["8kHz", "odd-bytes", "over-30s"],
)
async def test_audio_whisper_cannot_take_is_refused_as_bad_audio_and_publishes_nothing(
    model: stt.SttModel, pcm: bytes, rate: int
) -> None:
    ctx = MemoryContext.of(stt.SPEC, state=model)
    with pytest.raises(BadInput) as refused:
        await ctx.handle(utterance(pcm, rate=rate))
    assert refused.value.code == "bad_audio" and not refused.value.retryable
    assert (ctx.emitted, ctx.forwarded) == ([], [])


async def test_an_inserted_stage_gets_what_stt_heard_instead_of_the_llm(
    model: stt.SttModel, question: bytes
) -> None:
    routes = Routes.parse("stt:llm.request=redact")
    ctx = MemoryContext(stt.SPEC, Settings(), model, routes=routes)
    await ctx.handle(utterance(question))
    [(kind, request)] = ctx.forwarded
    assert kind == "redact" and isinstance(request, LlmRequest)
    assert ctx.emitted_of(Transcript)[0].text == request.text
