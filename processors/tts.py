"""Text-to-speech: one sentence in, its audio out in ordered chunks.

Takes ``TtsRequest`` from ``<prefix>.work.tts.<tier>``. Publishes
``AudioChunk``s (about ``settings.tts_chunk_ms`` each) to
``<prefix>.audio.out.<sid>`` with ids ``<sid>.<turn>.<seq>.<chunk>``, so a
redelivered request adds nothing. A cancelled turn publishes nothing more;
a sentence with no sound still sends one empty ``last`` chunk so the gateway
knows it is complete.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from processors import models
from processors.context import Context
from processors.spec import Spec, WorkQueue
from schemas import AudioChunk, BadInput, Message, TtsRequest
from streams.settings import Settings


@dataclass(frozen=True)
class TtsVoice:
    piper: Any
    """piper.PiperVoice"""
    path: Path
    rate: int
    """Output sample rate, Hertz."""
    cuda: bool

    @property
    def name(self) -> str:
        """The voice's name: its model file's stem, e.g. ``en_US-joe-medium``."""
        return self.path.name.removesuffix(".onnx")

    def answers_to(self, voice: str) -> bool:
        """Whether a request's ``voice`` field means this voice (empty = default)."""
        return voice in ("", self.name, str(self.path))


def open_voice(settings: Settings, gpu: bool) -> TtsVoice:
    """Load the Piper voice from ``settings.tts_voice`` or the shipped one (blocking)."""
    import onnxruntime  # heavy: only where the voice is loaded
    from piper import PiperVoice

    path = Path(settings.tts_voice) if settings.tts_voice else models.piper_voice_path()
    cuda = gpu and "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    piper = PiperVoice.load(path, use_cuda=cuda)
    return TtsVoice(piper, path, int(piper.config.sample_rate), cuda)


async def load(settings: Settings, tiers: tuple[str, ...]) -> TtsVoice:
    return await asyncio.to_thread(open_voice, settings, "gpu" in tiers)


def describe(voice: TtsVoice) -> str:
    return f"piper {voice.name} {'cuda' if voice.cuda else 'cpu'}"


def synthesize(voice: TtsVoice, text: str) -> bytes:
    """Blocking: text -> s16le mono PCM at ``voice.rate`` (empty if it has no sound)."""
    return b"".join(chunk.audio_int16_bytes for chunk in voice.piper.synthesize(text))


def split(pcm: bytes, rate: int, chunk_ms: int) -> list[bytes]:
    """Cut PCM into pieces of ``chunk_ms`` (the last may be shorter); always >= 1 piece."""
    size = max(2, rate * chunk_ms // 1000 * 2)
    return [pcm[i : i + size] for i in range(0, len(pcm), size)] or [b""]


async def handle(msg: Message, ctx: Context) -> None:
    assert isinstance(msg, TtsRequest)
    voice: TtsVoice = ctx.state
    if not voice.answers_to(msg.voice):
        raise BadInput(f"unknown voice {msg.voice!r}; have {voice.name!r}", code="unknown_voice")
    sid, turn, seq = msg.sid, msg.turn, msg.seq
    if ctx.cancelled(sid, turn) or ctx.session_ended(sid):
        return
    started = time.perf_counter()
    pcm = await asyncio.to_thread(synthesize, voice, msg.text)
    tts_ms = (time.perf_counter() - started) * 1000.0
    pieces = split(pcm, voice.rate, ctx.settings.tts_chunk_ms)
    for i, piece in enumerate(pieces):
        if ctx.cancelled(sid, turn) or ctx.session_ended(sid):
            return
        chunk = AudioChunk(
            sid,
            turn,
            seq,
            chunk=i,
            last=i == len(pieces) - 1,
            rate=voice.rate,
            tts_ms=tts_ms if i == 0 else 0.0,
            pcm=piece,
        )
        await ctx.send_audio(chunk, msg_id=f"{sid}.{turn}.{seq}.{i}")


SPEC = Spec(
    kind="tts",
    input=WorkQueue(tiered=True),
    accepts=(TtsRequest,),
    publishes=(AudioChunk,),
    load=load,
    handle=handle,
    describe=describe,
)
