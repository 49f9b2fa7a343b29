"""Speech-to-text: one utterance in, its transcript out.

Takes ``Utterance`` from ``<prefix>.work.stt.<tier>``. Emits
``<prefix>.events.<sid>.transcript``, then forwards the words as an ``LlmRequest``
(to the LLM, by the route table); an utterance with no words (noise) closes the turn
with ``reply.done`` instead. Output ids are built from (sid, turn), so a
redelivered utterance publishes nothing new (JetStream dedup window).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from processors import hardware, models
from processors.context import Context
from processors.spec import Spec, WorkQueue
from schemas import BadInput, LlmRequest, Message, ReplyDone, Transcript, Utterance
from streams.settings import Settings

RATE = 16000
"""The only input rate Whisper takes, Hertz."""
MAX_SECONDS = 30.0
"""Whisper's window; the VAD cuts utterances well before it."""


@dataclass(frozen=True)
class SttModel:
    whisper: Any
    """faster_whisper.WhisperModel"""
    name: str
    device: str
    compute_type: str
    language: str | None
    """``en`` for English-only models, None (detect) for multilingual ones."""


def cpu_threads() -> int:
    """Threads for CTranslate2: the cores this process may use, at most 4."""
    return max(1, min(4, len(hardware.usable_cores())))


def open_model(settings: Settings, gpu: bool) -> SttModel:
    """Load faster-whisper from ``settings.stt_model`` or the shipped tiny.en (blocking)."""
    from faster_whisper import WhisperModel  # heavy: only where the model is loaded

    source = settings.stt_model or str(models.whisper_model_dir())
    device, compute_type = ("cuda", "float16") if gpu else ("cpu", "int8")
    whisper = WhisperModel(
        source,
        device=device,
        compute_type=compute_type,
        cpu_threads=settings.stt_threads or cpu_threads(),
        local_files_only=True,
    )
    english_only = not whisper.model.is_multilingual
    name = settings.stt_model or "tiny.en"
    model = SttModel(whisper, name, device, compute_type, "en" if english_only else None)
    transcribe(model, bytes(RATE))  # warm up: the first real utterance is not slower
    return model


async def load(settings: Settings, tiers: tuple[str, ...]) -> SttModel:
    gpu = "gpu" in tiers and hardware.detect().cuda_devices > 0
    return await asyncio.to_thread(open_model, settings, gpu)


def describe(model: SttModel) -> str:
    return f"faster-whisper {model.name} {model.compute_type} {model.device}"


def check(utt: Utterance) -> None:
    """Refuse audio Whisper cannot take: raise BadInput(code="bad_audio")."""
    if utt.rate != RATE:
        raise BadInput(f"utterance rate {utt.rate} Hz, need {RATE}", code="bad_audio")
    if len(utt.pcm) % 2:
        raise BadInput("utterance PCM has an odd byte count (need s16le)", code="bad_audio")
    seconds = len(utt.pcm) / 2 / RATE
    if seconds > MAX_SECONDS:
        raise BadInput(f"utterance is {seconds:.1f} s, at most {MAX_SECONDS:.0f}", code="bad_audio")


def transcribe(model: SttModel, pcm: bytes) -> str:
    """Blocking: s16le mono 16 kHz PCM -> text (stripped)."""
    if not pcm:
        return ""
    audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    segments, _info = model.whisper.transcribe(
        audio,
        language=model.language,
        beam_size=1,
        without_timestamps=True,
        condition_on_previous_text=False,
        vad_filter=False,
    )
    return "".join(segment.text for segment in segments).strip()


async def handle(msg: Message, ctx: Context) -> None:
    assert isinstance(msg, Utterance)
    check(msg)
    started = time.perf_counter()
    text = await asyncio.to_thread(transcribe, ctx.state, msg.pcm)
    stt_ms = (time.perf_counter() - started) * 1000.0
    sid, turn = msg.sid, msg.turn
    await ctx.emit(Transcript(sid, turn, text, stt_ms=stt_ms), msg_id=f"{sid}.{turn}.transcript")
    if text:
        await ctx.forward(LlmRequest(sid, turn, text), msg_id=f"{sid}.{turn}.llm")
    else:  # noise: nothing to answer, but the client's turn must close
        await ctx.emit(ReplyDone(sid, turn, text="", sentences=0), msg_id=f"{sid}.{turn}.done")


SPEC = Spec(
    kind="stt",
    input=WorkQueue(tiered=True),
    accepts=(Utterance,),
    publishes=(Transcript, LlmRequest, ReplyDone),
    load=load,
    handle=handle,
    describe=describe,
)
