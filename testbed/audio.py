"""Real speech for tests: espeak-ng + sox make it, faster-whisper hears it.

speak(text, rate=16000) -> s16le mono PCM bytes
steady_turn(text) -> the same, trimmed, without dither, over a seeded noise floor
silence(ms, rate) -> that many milliseconds of zeros
resample(pcm, src_rate, dst_rate) -> PCM at the new rate (linear interpolation)
transcribe(pcm, rate=16000) -> what tiny.en hears (model loaded once per process)
"""

from __future__ import annotations

import functools
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from faster_whisper import WhisperModel

from processors import models

QUESTIONS = [
    "what is the capital of france",
    "tell me a fun fact about cats",
    "how far away is the moon",
    "name a famous painter",
]
"""Short questions with short answers, spoken by ``speak`` in system tests and benchmarks."""


def speak(text: str, rate: int = 16000, *, dither: bool = True) -> bytes:
    """``text`` spoken by espeak-ng (en-us, 150 wpm) as s16le mono PCM at ``rate``; sox
    dithers the conversion with random noise unless ``dither`` is False."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        subprocess.run(
            ["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(wav), text],
            check=True,
            capture_output=True,
        )
        raw = ["-r", str(rate), "-c", "1", "-b", "16", "-e", "signed-integer", "-L", "-t", "raw"]
        flags = [] if dither else ["-D"]
        out = subprocess.run(["sox", *flags, str(wav), *raw, "-"], check=True, capture_output=True)
    return out.stdout


def silence(ms: int, rate: int = 16000) -> bytes:
    return bytes(2 * (rate * ms // 1000))


def resample(pcm: bytes, src_rate: int, dst_rate: int) -> bytes:
    """s16le mono PCM from ``src_rate`` to ``dst_rate`` by linear interpolation."""
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    if src_rate == dst_rate or samples.size == 0:
        return pcm
    count = int(round(samples.size * dst_rate / src_rate))
    at = np.arange(count) * (src_rate / dst_rate)
    out = np.interp(at, np.arange(samples.size), samples)
    return bytes(np.clip(np.round(out), -32768, 32767).astype("<i2").tobytes())


@functools.cache
def whisper() -> Any:
    """The shipped tiny.en on CPU, loaded once per test process."""
    return WhisperModel(
        str(models.whisper_model_dir()), device="cpu", compute_type="int8", local_files_only=True
    )


def transcribe(pcm: bytes, rate: int = 16000) -> str:
    """What faster-whisper tiny.en hears in s16le mono PCM (any rate)."""
    audio = np.frombuffer(resample(pcm, rate, 16000), dtype="<i2").astype(np.float32) / 32768.0
    segments, _ = whisper().transcribe(
        audio, language="en", beam_size=1, without_timestamps=True, vad_filter=False
    )
    return str("".join(s.text for s in segments)).strip()


def steady_turn(text: str) -> bytes:
    """``text`` by espeak-ng (en-us, 150 wpm, as ``speak``) as the VAD would
    hand it to the policy: 300 ms before the speech, 200 ms of silence after it (espeak's
    own trimmed), over a quiet room's noise floor (-60 dBFS, seeded).

    Not ``speak()`` itself: its sox call dithers with random noise, and on synthetic
    speech the model's answer moves with such a 1-bit change ("What is the capital of
    Australia?" 0.63-0.96 over 8 calls, over this noise floor), so the clip must be the
    same on every run: sox -D, a seeded floor. The floor because no microphone sends
    espeak's digital zeros.
    """
    samples = np.frombuffer(speak(text, dither=False), dtype="<i2").astype(np.float64)
    voiced = np.nonzero(np.abs(samples) > 500)[0]
    speech = samples[voiced[0] : voiced[-1] + 1]
    clip = np.concatenate([np.zeros(16 * 300), speech, np.zeros(16 * 200)])
    clip += np.random.default_rng(0).normal(0.0, 32768 * 10 ** (-60 / 20), clip.size)
    return np.clip(np.round(clip), -32768, 32767).astype("<i2").tobytes()
