"""Whisper's window on short utterances: time and words per decoding configuration.

    .venv/bin/python bench/stt_window.py [--core 0] [--rounds 2] [--show]

faster-whisper pads every utterance to a 30 s window before the encoder. This speaks 40
short questions (20 texts, 4 espeak-ng voices and speeds, 1-4 s), loads tiny.en pinned to
one core (one thread, as bench/stt_alone.py), and transcribes each utterance with every
configuration in turn (the order rotates per utterance, so load falls on all alike).
Per configuration it prints the time per utterance (p50/p95, and current's over this
one's), the words it got wrong against the text spoken (word edit distance: lowercase,
no punctuation, numbers as words) and how many of them stt redid the 30 s way.
``current`` is the call processors/stt.py made before issue 12; ``window_s N`` is
stt.transcribe now. ``--show`` prints every transcript that differs from the text spoken.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from processors import hardware
from streams.settings import Settings

if TYPE_CHECKING:  # imported after pinning: numpy makes threads
    from processors.stt import SttModel

TEXTS = [
    "what is the capital of france",
    "tell me a fun fact about cats",
    "how far away is the moon",
    "name a famous painter",
    "what time is it",
    "turn off the kitchen lights",
    "how do i boil an egg",
    "who wrote hamlet",
    "set a timer for ten minutes",
    "is it going to rain tomorrow",
    "play some jazz music",
    "how tall is mount everest",
    "what is two plus two",
    "remind me to call my mother",
    "why is the sky blue",
    "translate hello into spanish",
    "what should i cook for dinner",
    "how many legs does a spider have",
    "tell me a joke",
    "what day is it today",
]
VOICES = [("en-us", 150), ("en-gb", 170), ("en-us+f3", 130), ("en-us", 200)]
"""espeak-ng voice and words per minute; each text is spoken by two of them."""
NUMBERS = "zero one two three four five six seven eight nine ten eleven twelve".split()

Config = Callable[[bytes], tuple[str, bool]]
"""PCM -> (text, whether the short window was not sure of it: stt redoes it the 30 s way)."""


def voiced(text: str, voice: str, wpm: int) -> bytes:
    """testbed.audio.speak with a voice and a speed, and no dither (the same bytes each run)."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        espeak = ["espeak-ng", "-v", voice, "-s", str(wpm), "-w", str(wav), text]
        subprocess.run(espeak, check=True, capture_output=True)
        raw = ["-r", "16000", "-c", "1", "-b", "16", "-e", "signed-integer", "-L", "-t", "raw"]
        out = subprocess.run(["sox", str(wav), *raw, "-D", "-"], check=True, capture_output=True)
    return out.stdout


def words(text: str) -> list[str]:
    """Lowercase words without punctuation; Whisper's digits 0-12 as words."""
    found = re.findall(r"[a-z0-9']+", text.lower().replace("-", " "))
    return [NUMBERS[int(w)] if w.isdigit() and int(w) < len(NUMBERS) else w for w in found]


def errors(said: list[str], heard: list[str]) -> int:
    """Word edit distance (substitutions + deletions + insertions)."""
    row = list(range(len(heard) + 1))
    for i, a in enumerate(said, 1):
        diagonal, row[0] = row[0], i
        for j, b in enumerate(heard, 1):
            diagonal, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, diagonal + (a != b))
    return row[-1]


class Counted:
    """A WhisperModel that counts its ``transcribe`` calls: stt's 30 s way."""

    def __init__(self, whisper: Any) -> None:
        self.whisper, self.calls = whisper, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.whisper, name)

    def transcribe(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.whisper.transcribe(*args, **kwargs)


def configs(model: SttModel) -> dict[str, Config]:
    import numpy as np

    from processors import stt

    def faster_whisper(**changes: Any) -> Config:  # stt.transcribe before issue 12, changed
        options: dict[str, Any] = dict(
            language="en",
            beam_size=1,
            without_timestamps=True,
            condition_on_previous_text=False,
            vad_filter=False,
        )
        options.update(changes)

        def run(pcm: bytes) -> tuple[str, bool]:
            audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
            segments, _ = model.whisper.transcribe(audio, **options)
            return "".join(s.text for s in segments).strip(), False

        return run

    def padded(seconds: float) -> Config:  # short_window's text, even when not sure
        def run(pcm: bytes) -> tuple[str, bool]:
            audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
            text, sure = stt.short_window(short, audio)
            return text, not sure

        short = dataclasses.replace(model, window_s=seconds, beam_size=1)
        return run

    def window(seconds: float, beam: int = 1) -> Config:  # stt.transcribe now
        def run(pcm: bytes) -> tuple[str, bool]:
            calls = whisper.calls
            return stt.transcribe(short, pcm), whisper.calls > calls

        whisper = Counted(model.whisper)
        short = dataclasses.replace(model, whisper=whisper, window_s=seconds, beam_size=beam)
        return run

    return {
        "current": faster_whisper(),
        "temperature fallback off": faster_whisper(temperature=0.0),
        "beam_size 5": faster_whisper(beam_size=5),
        "with timestamps": faster_whisper(without_timestamps=False),
        "chunk_length 10": faster_whisper(chunk_length=10),
        "silence-padded 30 s": padded(30.0),
        "window_s 15": window(15.0),
        "window_s 10": window(10.0),
        "window_s 8": window(8.0),
        "window_s 15, beam_size 5": window(15.0, 5),
        "window_s 10, beam_size 5": window(10.0, 5),
    }


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main(core: int, rounds: int, show: bool) -> None:
    hardware.pin(frozenset({core}))  # before numpy and CTranslate2 make their threads
    from processors import stt
    from testbed.audio import silence

    spoken = [(t, VOICES[(2 * i + k) % len(VOICES)]) for i, t in enumerate(TEXTS) for k in (0, 1)]
    pcms = [silence(300) + voiced(t, *v) + silence(300) for t, v in spoken]
    seconds = sorted(len(p) / 2 / stt.RATE for p in pcms)
    model = stt.open_model(Settings(), gpu=False)
    runs = configs(model)
    names = list(runs)
    for name in names:  # warm each path once
        runs[name](pcms[0])
    times: dict[str, list[float]] = {n: [] for n in names}
    heard: dict[str, list[str]] = {n: [] for n in names}
    unsure = dict.fromkeys(names, 0)
    for r in range(rounds):
        for i, pcm in enumerate(pcms):
            shift = (i + r) % len(names)
            for name in names[shift:] + names[:shift]:
                started = time.perf_counter()
                text, doubt = runs[name](pcm)
                times[name].append(time.perf_counter() - started)
                if r == 0:
                    heard[name].append(text)
                    unsure[name] += doubt
    said = [words(t) for t, _ in spoken]
    total = sum(len(w) for w in said)
    wrong = {n: sum(map(errors, said, map(words, heard[n]))) for n in names}
    print(f"utterances: {len(pcms)} ({seconds[0]:.1f}-{seconds[-1]:.1f} s of audio, {total} words)")
    print(f"timed: {rounds} round(s), 1 thread on core {core}; x: current's time / this one's")
    print(f"{'configuration':28} {'p50 ms':>6} {'p95 ms':>6} {'x p50':>6} {'x p95':>6}", end="")
    print(f" {'wrong':>5} {'WER':>5} {'vs current':>10} {'30 s redo':>9}")
    base = percentile(times["current"], 0.5), percentile(times["current"], 0.95)
    for n in names:
        p50, p95 = percentile(times[n], 0.5), percentile(times[n], 0.95)
        print(
            f"{n:28} {p50 * 1e3:6.0f} {p95 * 1e3:6.0f} {base[0] / p50:5.2f}x {base[1] / p95:5.2f}x",
            end="",
        )
        delta = wrong[n] - wrong["current"]
        print(f" {wrong[n]:5d} {wrong[n] / total:5.3f} {delta:+10d} {unsure[n]:9d}")
    for n in names if show else []:
        for (t, v), h in zip(spoken, heard[n], strict=True):
            if words(h) != words(t):
                print(f"{n} | {v[0]} {v[1]} | {t} | {h[:120]}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--core", type=int, default=0, help="the one core to run on")
    parser.add_argument("--rounds", type=int, default=2, help="times each utterance is timed")
    parser.add_argument("--show", action="store_true", help="print the transcripts that differ")
    args = parser.parse_args()
    main(args.core, args.rounds, args.show)
