"""The tts kind's handler with the real Piper voice and no NATS (processors.harness)."""

from __future__ import annotations

import pytest

from processors import tts
from processors.harness import MemoryContext
from schemas import BadInput, TtsRequest
from streams.settings import Settings
from testbed.audio import transcribe


@pytest.fixture(scope="module")
def voice() -> tts.TtsVoice:
    return tts.open_voice(Settings(tts_voice=""), False)


def context(voice: tts.TtsVoice, chunk_ms: int = 200) -> MemoryContext:
    return MemoryContext.of(tts.SPEC, state=voice, settings=Settings(tts_chunk_ms=chunk_ms))


async def test_a_sentence_becomes_ordered_audio_chunks_with_only_the_last_flagged(
    voice: tts.TtsVoice,
) -> None:
    ctx = context(voice)
    await ctx.handle(TtsRequest("s1", "t1", 3, "The kitchen lights are on now."))
    chunks = ctx.audio
    assert len(chunks) >= 3  # over a second of speech in 200 ms pieces
    assert [c.chunk for c in chunks] == list(range(len(chunks)))
    assert [c.last for c in chunks] == [False] * (len(chunks) - 1) + [True]
    assert {(c.sid, c.turn, c.seq, c.rate) for c in chunks} == {("s1", "t1", 3, voice.rate)}
    assert ctx.ids == [f"s1.t1.3.{i}" for i in range(len(chunks))]
    piece = voice.rate * 200 // 1000 * 2
    assert all(len(c.pcm) == piece for c in chunks[:-1]) and 0 < len(chunks[-1].pcm) <= piece
    assert chunks[0].tts_ms > 0 and all(c.tts_ms == 0 for c in chunks[1:])
    heard = transcribe(b"".join(c.pcm for c in chunks), voice.rate).lower()
    assert "kitchen" in heard and "lights" in heard


async def test_a_request_for_the_voice_by_name_is_spoken(voice: tts.TtsVoice) -> None:
    ctx = context(voice)
    await ctx.handle(TtsRequest("s1", "t1", 0, "Hello.", voice=voice.name))
    assert ctx.audio and ctx.audio[-1].last


async def test_a_cancelled_turn_is_not_spoken(voice: tts.TtsVoice) -> None:
    ctx = context(voice)
    ctx.cancelled_turns.add(("s1", "t1"))
    await ctx.handle(TtsRequest("s1", "t1", 0, "You will not hear this."))
    await ctx.handle(TtsRequest("s1", "t2", 0, "But this."))  # the next turn is
    assert {c.turn for c in ctx.audio} == {"t2"}


async def test_an_ended_session_is_not_spoken(voice: tts.TtsVoice) -> None:
    ctx = context(voice)
    ctx.ended_sessions.add("s1")
    await ctx.handle(TtsRequest("s1", "t1", 0, "Nobody is listening."))
    assert ctx.audio == [] and ctx.ids == []


async def test_an_unknown_voice_is_refused_and_nothing_is_sent(voice: tts.TtsVoice) -> None:
    ctx = context(voice)
    with pytest.raises(BadInput) as refused:
        await ctx.handle(TtsRequest("s1", "t1", 0, "Hello.", voice="en_GB-nobody-low"))
    assert refused.value.code == "unknown_voice" and not refused.value.retryable
    assert "en_GB-nobody-low" in str(refused.value)
    assert ctx.audio == []
