"""End of turn: silence alone against Smart Turn v3.2, on espeak-ng clips.

    .venv/bin/python bench/end_of_turn.py

Builds a labelled set with espeak-ng in several voices and speeds: complete questions,
and sentences with a thinking pause in the middle ("I'd like to book a table for...
[700 ms] four people."), the speech before the pause ending either on a bare word
("...") or on a filler ("um,"). Silero VAD (processors/silero.py) hears each clip
window by window and processors/segmenter.py decides silence exactly as the VAD does;
then each policy decides when the turn ends:

- silence only, 300 / 500 / 1500 ms: the segmenter alone (``vad_silence_ms``);
- Smart Turn: the segmenter with its silence at the policy's maximum, and
  ``EndOfTurn.decide`` asked at every silent window; an end decided by the model comes
  after its compute time (the audio keeps coming while it runs).

It prints the false-cut rate (the turn ended before the speaker finished: inside the
pause), end of speech -> turn end p50/p95 for the complete questions (and for the
paused sentences that were not cut), and the model's time per call (features +
inference, 1 thread). End of speech is the last sample above an energy threshold.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from processors import silero
from processors.end_of_turn import COMPLETE, EndOfTurn, TurnModel, features, pcm_to_float
from processors.segmenter import WINDOW, Ended, Segmenter, SegmenterConfig, Started
from testbed.stats import pct

RATE = 16000
VOICES = ("en-us", "en-gb", "en+f3", "en+m3")
SPEEDS = (140, 175, 210)
"""Words per minute (espeak-ng's default is 175)."""
QUESTIONS = [
    "What is the weather like in Paris today?",
    "What time is it in Tokyo?",
    "Can you tell me a joke?",
    "How far away is the moon?",
    "Who wrote Pride and Prejudice?",
    "What is the capital of Australia?",
    "How do I make a cup of tea?",
    "When does the next train leave?",
    "Why is the sky blue?",
    "Can you set a timer for ten minutes?",
    "What should I cook for dinner tonight?",
    "How tall is Mount Everest?",
]
PAUSED = [
    ("I'd like to book a table for", 700, "four people."),
    ("My sister's name is", 800, "Ada."),
    ("Can you remind me to", 900, "call my mother tomorrow?"),
    ("I want to go to the", 700, "train station."),
    ("The thing I need most is", 800, "a good night's sleep."),
    ("Could you play some music by", 1000, "the Beatles?"),
    ("What is the capital of", 800, "Peru?"),
    ("Please add milk, eggs and", 900, "bread to the list."),
    ("How long does it take to drive to", 700, "Boston?"),
    ("Set an alarm for", 800, "seven tomorrow morning."),
    ("My favourite film is", 1000, "Casablanca."),
    ("Send a message to", 700, "my brother."),
]
"""(speech before the pause, pause in ms, the rest)."""
HESITATIONS = {"bare": "...", "filler": " um,"}
"""How the speech before the pause ends: a bare word, or a filler."""
LEAD_MS = 500
TAIL_MS = 2500
VOICED = 500
"""|sample| above this is speech, for trimming espeak's own silence and for 'end of speech'."""


def say(text: str, voice: str, wpm: int) -> bytes:
    """``text`` spoken by espeak-ng in ``voice`` at ``wpm`` as s16le mono 16 kHz, trimmed."""
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        subprocess.run(
            ["espeak-ng", "-v", voice, "-s", str(wpm), "-w", str(wav), text],
            check=True,
            capture_output=True,
        )
        raw = ["-r", str(RATE), "-c", "1", "-b", "16", "-e", "signed-integer", "-L", "-t", "raw"]
        # -D: no dither. sox dithers with random noise by default, and the model's answer
        # moves with a change that small (see room()): a clip would differ run to run.
        out = subprocess.run(["sox", "-D", str(wav), *raw, "-"], check=True, capture_output=True)
    samples = np.abs(np.frombuffer(out.stdout, dtype="<i2").astype(np.int32))
    voiced = np.nonzero(samples > VOICED)[0]
    if not voiced.size:
        return out.stdout
    return out.stdout[int(voiced[0]) * 2 : (int(voiced[-1]) + 1) * 2]


def quiet(ms: int) -> bytes:
    return bytes(2 * (RATE * ms // 1000))


def room(pcm: bytes, dbfs: float, seed: int) -> bytes:
    """``pcm`` with a steady noise floor at ``dbfs`` (RMS), as a microphone has.

    espeak-ng's silence is digital zeros, which no microphone sends. The floor is seeded,
    and say() does not dither, so a run is repeatable: on synthetic speech the model's
    answer moves with a change as small as sox's 1-bit dither.
    """
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float64)
    noise = np.random.default_rng(seed).normal(0.0, 32768 * 10 ** (dbfs / 20), samples.size)
    return np.clip(np.round(samples + noise), -32768, 32767).astype("<i2").tobytes()


@dataclass
class Clip:
    kind: str
    """'question', or 'pause/bare' and 'pause/filler'."""
    text: str
    voice: str
    wpm: int
    pcm: bytes
    speech_end: int
    """Sample after the last voiced sample of the clip: the speaker is done."""
    pause: tuple[int, int] | None = None
    """The thinking pause, samples [start, end), in a paused sentence."""
    probs: list[float] | None = None
    """Silero's speech probability of each 512-sample window."""


def build_clips(voices: tuple[str, ...], speeds: tuple[int, ...], dbfs: float) -> list[Clip]:
    clips: list[Clip] = []
    for voice in voices:
        for wpm in speeds:
            for text in QUESTIONS:
                speech = say(text, voice, wpm)
                pcm = room(quiet(LEAD_MS) + speech + quiet(TAIL_MS), dbfs, len(clips))
                end = (len(quiet(LEAD_MS)) + len(speech)) // 2
                clips.append(Clip("question", text, voice, wpm, pcm, end))
            for name, hesitation in HESITATIONS.items():
                for before, pause_ms, after in PAUSED:
                    head = quiet(LEAD_MS) + say(before + hesitation, voice, wpm)
                    gap = quiet(pause_ms)
                    tail = say(after, voice, wpm)
                    pcm = room(head + gap + tail + quiet(TAIL_MS), dbfs, len(clips))
                    text = f"{before}{hesitation} [{pause_ms} ms] {after}"
                    start = len(head) // 2
                    pause = (start, start + len(gap) // 2)
                    end = (len(head) + len(gap) + len(tail)) // 2
                    clips.append(Clip(f"pause/{name}", text, voice, wpm, pcm, end, pause))
    return clips


def hear(clips: list[Clip]) -> None:
    """Silero's probabilities for every clip, as the VAD processor computes them."""
    session = silero.load_session()
    for clip in clips:
        stream = silero.SileroStream(session)
        samples = np.frombuffer(clip.pcm, dtype="<i2").astype(np.float32) / 32768.0
        n = len(samples) // WINDOW
        clip.probs = [stream.probability(samples[i * WINDOW : (i + 1) * WINDOW]) for i in range(n)]


@dataclass(frozen=True)
class Outcome:
    end_ms: float | None
    """When the first turn end was decided, ms of clip audio (the window it was decided
    in), compute time not included."""
    p_first: float | None = None
    """The model's answer at the first pause it was asked about."""
    compute_ms: float = 0.0
    """The model's time for the call that ended the turn, which delays the end."""


def by_silence(clip: Clip, config: SegmenterConfig) -> Outcome:
    seg = Segmenter(config)
    for i, p in enumerate(clip.probs or []):
        event = seg.step(i * WINDOW, p)
        if isinstance(event, Ended):
            return Outcome(event.decided_at * 1000 / RATE)
    return Outcome(None)


class Scorer:
    """The model's P(complete), memoised per (clip, audio length) so that policies which
    ask the same question share one answer; times every real call."""

    def __init__(self, model: TurnModel) -> None:
        self.model = model
        self.memo: dict[tuple[int, int], tuple[float, float]] = {}
        self.times_ms: list[float] = []

    def for_clip(self, clip: Clip) -> tuple[Callable[[bytes], float], list[float]]:
        """A ``score`` for one clip's policy and the compute time of its latest call."""
        last = [0.0]

        def score(pcm: bytes) -> float:
            key = (id(clip), len(pcm))
            if key not in self.memo:
                began = time.perf_counter()
                p = self.model.probability(pcm)
                ms = (time.perf_counter() - began) * 1000
                self.times_ms.append(ms)
                self.memo[key] = (p, ms)
            p, last[0] = self.memo[key]
            return p

        return score, last


def by_model(
    clip: Clip, config: SegmenterConfig, scorer: Scorer, make: Callable[..., EndOfTurn]
) -> Outcome:
    """The VAD's silence decisions with ``EndOfTurn`` asked at every silent window."""
    score, last_ms = scorer.for_clip(clip)
    policy = make(score)
    seg = Segmenter(replace(config, silence_ms=int(policy.max_silence_ms)))
    start, speech_end, p_first = 0, 0, None
    for i, p in enumerate(clip.probs or []):
        offset, end = i * WINDOW, (i + 1) * WINDOW
        if p >= config.threshold:
            speech_end = end
        event = seg.step(offset, p)
        if isinstance(event, Started):
            start = event.start
            policy.reset()
        elif isinstance(event, Ended):
            return Outcome(event.decided_at * 1000 / RATE, p_first)
        if seg.in_speech and p < config.threshold - 0.15:  # silence, as the segmenter counts it
            asked = policy.asked
            decision = policy.decide(
                clip.pcm[start * 2 : end * 2], (end - speech_end) * 1000 / RATE
            )
            if p_first is None and decision.p is not None:
                p_first = decision.p
            if decision.end:
                compute = last_ms[0] if decision.reason == COMPLETE and policy.asked > asked else 0
                return Outcome(end * 1000 / RATE, p_first, compute)
    return Outcome(None, p_first)


@dataclass
class Row:
    name: str
    outcomes: list[tuple[Clip, Outcome]]

    def of(self, kind: str) -> list[tuple[Clip, Outcome]]:
        return [(c, o) for c, o in self.outcomes if c.kind.startswith(kind)]

    def cut(self, kind: str) -> tuple[int, int]:
        """(turns ended before the speaker finished, clips)."""
        rows = self.of(kind)
        early = sum(1 for c, o in rows if o.end_ms is not None and o.end_ms < _ms(c.speech_end))
        return early, len(rows)

    def latency(self, kind: str, compute: bool = True) -> list[float]:
        """End of speech -> turn end, ms, of the clips not cut early; with the model's
        compute time (as measured in this run), or audio time alone."""
        return [
            o.end_ms - _ms(c.speech_end) + (o.compute_ms if compute else 0.0)
            for c, o in self.of(kind)
            if o.end_ms is not None and o.end_ms >= _ms(c.speech_end)
        ]


def _ms(sample: int) -> float:
    return sample * 1000 / RATE


def _lat(values: list[float]) -> str:
    if not values:
        return f"{'-':>6} {'-':>6}"
    return f"{pct(values, 0.5):>6.0f} {pct(values, 0.95):>6.0f}"


def report(rows: list[Row]) -> None:
    head = (
        f"{'policy':<44} {'false cuts (pause)':>19} {'questions p50 p95 ms':>21} "
        f"{'(audio only)':>14} {'cut q':>7} {'paused p50 p95 ms':>18}"
    )
    print(head)
    print("-" * len(head))
    for row in rows:
        cut, n = row.cut("pause")
        qcut, qn = row.cut("question")
        print(
            f"{row.name:<44} {cut:>4}/{n:<4} {100 * cut / max(n, 1):>5.0f}%   "
            f"{_lat(row.latency('question')):>21} {_lat(row.latency('question', False)):>14}"
            f" {qcut:>3}/{qn:<3}{_lat(row.latency('pause')):>18}"
        )
    print(
        "questions p50 p95: end of speech -> turn end, the model's compute in this run "
        "included; (audio only): without it; cut q: questions ended before their end; "
        "paused: end of the whole sentence, for those not cut"
    )


def breakdown(row: Row, what: str, key: Callable[[Clip], str]) -> None:
    groups = sorted({key(c) for c, _ in row.outcomes})
    print(f"\n{row.name}, by {what}:")
    cols = f"{'false cuts (pause)':>19} {'q judged complete':>18} {'questions p50 p95':>18}"
    print(f"  {what:<12} {cols}")
    for g in groups:
        sub = Row(row.name, [(c, o) for c, o in row.outcomes if key(c) == g])
        cut, n = sub.cut("pause")
        q = sub.of("question")
        complete = sum(1 for _, o in q if o.p_first is not None and o.p_first >= 0.5)
        print(
            f"  {g:<12} {cut:>4}/{n:<4} {100 * cut / max(n, 1):>5.0f}%   "
            f"{complete:>4}/{len(q):<4} {100 * complete / max(len(q), 1):>4.0f}%   "
            f"{_lat(sub.latency('question')):>16}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--voices", default=",".join(VOICES))
    parser.add_argument("--speeds", default=",".join(map(str, SPEEDS)))
    parser.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads")
    parser.add_argument("--ask-after-ms", type=float, default=200.0)
    parser.add_argument("--max-silence-ms", type=float, default=1500.0)
    parser.add_argument("--threshold", type=float, default=0.5)
    parser.add_argument("--noise-dbfs", type=float, default=-60.0, help="the room's noise floor")
    args = parser.parse_args()
    voices = tuple(args.voices.split(","))
    speeds = tuple(int(s) for s in args.speeds.split(","))
    print("command: .venv/bin/python bench/end_of_turn.py " + " ".join(sys.argv[1:]))
    print(f"machine: {platform.node()} {platform.machine()} {platform.processor() or ''}")

    began = time.perf_counter()
    clips = build_clips(voices, speeds, args.noise_dbfs)
    hear(clips)
    kinds = {k: sum(1 for c in clips if c.kind == k) for k in dict.fromkeys(c.kind for c in clips)}
    print(
        f"clips: {kinds} ({len(voices)} voices x {len(speeds)} speeds, noise floor "
        f"{args.noise_dbfs:g} dBFS); "
        f"built and heard in {time.perf_counter() - began:.0f} s"
    )
    config = SegmenterConfig()
    scorer = Scorer(TurnModel.load(threads=args.threads))

    def policy(threshold: float, max_ms: float) -> Callable[..., EndOfTurn]:
        def make(score: Callable[[bytes], float]) -> EndOfTurn:
            return EndOfTurn(
                score, ask_after_ms=args.ask_after_ms, max_silence_ms=max_ms, threshold=threshold
            )

        return make

    rows = [
        Row(
            f"silence only {ms} ms",
            [(c, by_silence(c, replace(config, silence_ms=ms))) for c in clips],
        )
        for ms in (300, 500, int(args.max_silence_ms))
    ]
    main_name = (
        f"Smart Turn p>={args.threshold:g}, ask {args.ask_after_ms:g}, "
        f"max {args.max_silence_ms:g} ms"
    )
    variants = [
        (main_name, args.threshold, args.max_silence_ms),
        (f"Smart Turn p>=0.7, max {args.max_silence_ms:g} ms", 0.7, args.max_silence_ms),
        (f"Smart Turn p>=0.3, max {args.max_silence_ms:g} ms", 0.3, args.max_silence_ms),
        (f"Smart Turn p>={args.threshold:g}, max 1000 ms", args.threshold, 1000.0),
    ]
    for name, threshold, max_ms in variants:
        make = policy(threshold, max_ms)
        rows.append(Row(name, [(c, by_model(c, config, scorer, make)) for c in clips]))
    print()
    report(rows)
    model_row = rows[3]
    breakdown(model_row, "speed", lambda c: f"{c.wpm} wpm")
    breakdown(model_row, "voice", lambda c: c.voice)
    breakdown(model_row, "hesitation", lambda c: c.kind)
    times = scorer.times_ms
    print(
        f"\nmodel per call in the simulation (features + inference, {args.threads} thread): "
        f"p50 {pct(times, 0.5):.1f} ms, p95 {pct(times, 0.95):.1f} ms over {len(times)} calls"
    )
    alone(scorer.model, clips[0].pcm, args.threads)


def alone(model: TurnModel, pcm: bytes, threads: int, n: int = 60) -> None:
    """The model's cost back to back, features and inference apart (the input is always
    8 s, so the cost does not depend on the length of the turn)."""
    for _ in range(5):
        model.probability(pcm)
    feats, infer = [], []
    for _ in range(n):
        began = time.perf_counter()
        x = features(pcm_to_float(pcm))
        mid = time.perf_counter()
        model.run(x)
        feats.append((mid - began) * 1000)
        infer.append((time.perf_counter() - mid) * 1000)
    total = [f + i for f, i in zip(feats, infer, strict=True)]
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(
        f"model alone, {n} calls back to back ({threads} thread): features p50 "
        f"{pct(feats, 0.5):.1f} / p95 {pct(feats, 0.95):.1f} ms, inference p50 "
        f"{pct(infer, 0.5):.1f} / p95 {pct(infer, 0.95):.1f} ms, total p50 "
        f"{pct(total, 0.5):.1f} / p95 {pct(total, 0.95):.1f} ms; load average {load} "
        f"on {os.cpu_count()} cores"
    )


if __name__ == "__main__":
    main()
