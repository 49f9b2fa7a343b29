"""Speech-to-text: one utterance in, its transcript out.

Takes ``Utterance`` from ``<prefix>.work.stt.<tier>``. Emits
``<prefix>.events.<sid>.transcript``, then forwards the words as an ``LlmRequest``
(to the LLM, by the route table); an utterance with no words (noise) closes the turn
with ``reply.done`` instead. Output ids are built from (sid, turn), so a
redelivered utterance publishes nothing new (JetStream dedup window).
"""

from __future__ import annotations

import asyncio
import functools
import time
import zlib
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
    window_s: float
    """``settings.stt_window_s``: seconds of audio the encoder sees for an utterance of at
    most half of it (padded with silence); longer ones get Whisper's own 30 s."""
    beam_size: int
    """``settings.stt_beam_size``: Whisper's beam; 1: greedy."""


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
    language = "en" if english_only else None
    window, beam = settings.stt_window_s, settings.stt_beam_size
    model = SttModel(whisper, name, device, compute_type, language, window, beam)
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
    short = model.window_s < MAX_SECONDS and len(audio) <= model.window_s * RATE / 2
    if short and model.language:  # multilingual models detect on the 30 s way
        text, sure = short_window(model, audio)
        if sure:
            return text
    segments, _info = model.whisper.transcribe(
        audio,
        language=model.language,
        beam_size=model.beam_size,
        without_timestamps=True,
        condition_on_previous_text=False,
        vad_filter=False,
    )
    return "".join(segment.text for segment in segments).strip()


@functools.cache
def decoding(whisper: Any, language: str) -> tuple[Any, list[int], list[int]]:
    """(tokenizer, prompt without timestamps, suppressed tokens) as faster-whisper makes them."""
    from faster_whisper.tokenizer import Tokenizer
    from faster_whisper.transcribe import get_suppressed_tokens

    tokenizer = Tokenizer(
        whisper.hf_tokenizer, whisper.model.is_multilingual, "transcribe", language
    )
    prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
    return tokenizer, prompt, list(get_suppressed_tokens(tokenizer, (-1,)) or [])


def short_window(model: SttModel, audio: np.ndarray) -> tuple[str, bool]:
    """(text, sure): ``audio`` padded with silence to ``window_s``, decoded.

    Whisper was trained on audio padded with silence (faster-whisper pads the features with
    zeros instead). Not sure (maybe no speech, a repetition loop): the caller decodes the
    30 s way, which drops silence that the short window hears as "you".
    """
    assert model.language is not None
    tokenizer, prompt, suppress = decoding(model.whisper, model.language)
    samples = int(model.window_s * RATE)
    extractor = model.whisper.feature_extractor
    features = extractor(np.pad(audio, (0, samples - len(audio))))[
        :, : samples // extractor.hop_length
    ]
    cap = 16 + int(10 * len(audio) / RATE)  # tokens: far above speech's 3-5 a second
    [result] = model.whisper.model.generate(
        model.whisper.encode(features),
        [prompt],
        beam_size=model.beam_size,
        max_length=len(prompt) + cap,
        return_no_speech_prob=True,
        suppress_tokens=suppress,
    )
    tokens = result.sequences_ids[0]
    text = str(tokenizer.decode(tokens)).strip()
    raw = text.encode()
    looping = len(tokens) >= cap or len(raw) > 2.4 * len(zlib.compress(raw))
    return text, not looping and result.no_speech_prob <= 0.6


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
