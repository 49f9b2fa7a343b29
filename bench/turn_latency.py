"""Turn latency of the whole voice loop, broken down by stage, on this machine.

Starts ``morgan up`` (real models), speaks N espeak-ng questions over a WebSocket at
real-time pace, and listens on the bus (core NATS, as an operator would with
``nats sub``) to time each stage. Prints p50/p95 of end-of-speech -> first reply
audio byte at the client, the stages, the ratio of that total to the models' own
compute measured in the same run, and the per-frame bus overhead.

    .venv/bin/python bench/turn_latency.py --turns 8

``--before COMMIT`` compares against another commit in the same run: it checks the
commit out (git worktree) and alternates rounds of ``morgan up`` from each tree, with
the same questions, and prints both and the ratio now/before.

``--ab`` compares speculative turns (``MORGAN_VAD_SPECULATE_MS``) with plain ones at two
end-of-turn silences (``MORGAN_VAD_SILENCE_MS``) in the same run: four configurations
(off-300, off-500, on-500, on-300) and speculation with the end-of-turn model (on-model:
``MORGAN_VAD_TURN_MODEL``, at most 1500 ms), each its own ``morgan up``, in interleaved
rounds.
Each speaks the same ``--turns`` complete questions and ``--turns`` utterances with a
350 ms mid-sentence pause, after one warm-up turn, and prints per configuration the
end of speech -> first audio p50/p95 and their ratio to off-300, the models' compute
of the confirmed turns, the false-cut rate (utterances the client got as more than one
turn) and the compute wasted on abandoned speculations (work messages on the bus, and
``morgan_speculation_seconds_total`` from the workers' /metrics).

    .venv/bin/python bench/turn_latency.py --ab --turns 6 --rounds 2

The bus is read as the operator role (the pull consumer of the frame check as admin).
When speculation is on, a turn's stages are those of the attempt its
``vad.speech_stopped`` confirmed (``Morgan-Speculative``).
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import numpy as np
from nats.aio.client import Client

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from schemas import Abandon, decode
from schemas.codec import SESSION_HEADER, SPECULATIVE_HEADER, TURN_HEADER, TYPE_HEADER
from streams import nats_auth
from streams.settings import Settings
from testbed.audio import silence, speak
from testbed.morgan_process import MorganUp, VoiceClient
from testbed.ports import bindable, free_port
from testbed.stats import pct

TOTAL = "total: end of speech -> first audio at client"
FRAME_BUS = "frame: WebSocket in -> on the bus"
FRAME_VAD = "frame: WebSocket in -> VAD-style consumer receipt"
QUESTIONS = [
    "what is the capital of france",
    "tell me a fun fact about cats",
    "how far away is the moon",
    "what should i cook for dinner",
    "why is the sky blue",
    "name a famous painter",
    "what is the tallest mountain",
    "give me a tip for better sleep",
]


def trim(pcm: bytes) -> bytes:
    """Cut espeak's trailing silence, so 'end of speech' is the last voiced sample."""
    samples = np.abs(np.frombuffer(pcm, dtype="<i2").astype(np.int32))
    voiced = np.nonzero(samples > 500)[0]
    end = int(voiced[-1]) + 1 if voiced.size else len(samples)
    return pcm[: end * 2]


def voiced(pcm: bytes) -> bytes:
    """``trim``, and espeak's leading silence cut too: the first voiced sample on."""
    cut = trim(pcm)
    samples = np.abs(np.frombuffer(cut, dtype="<i2").astype(np.int32))
    loud = np.nonzero(samples > 500)[0]
    return cut[int(loud[0]) * 2 :] if loud.size else cut


Key = tuple[str, str, str, str]
"""(type, session, turn, attempt); attempt: the ``Morgan-Speculative`` header, or ""."""
Attempt = tuple[str, str, str]
"""(session, turn, attempt)"""


class BusClock:
    """First arrival time of each (type, session, turn, attempt) seen on the bus; which
    attempt each turn's ``vad.speech_stopped`` confirmed; the attempts abandoned
    (``control.abandon``) and the speculative work (``*.spec`` subjects) of each."""

    def __init__(self) -> None:
        self.first: dict[Key, tuple[float, Any]] = {}
        self.frames: dict[tuple[str, int], float] = {}
        self.confirmed: dict[tuple[str, str], str] = {}
        self.abandoned: set[Attempt] = set()
        self.spec_work: list[tuple[Attempt, str]] = []

    async def on_msg(self, raw: Any) -> None:
        now = time.monotonic()
        hdrs = raw.headers or {}
        kind = hdrs.get(TYPE_HEADER, "")
        if kind == "audio.frame":
            self.frames[(hdrs.get(SESSION_HEADER, ""), 0)] = now
            return
        if kind == Abandon.TYPE:
            msg = decode(hdrs, raw.data)
            if isinstance(msg, Abandon):
                self.abandoned.add((msg.sid, msg.turn, msg.attempt))
            return
        sid, turn = hdrs.get(SESSION_HEADER, ""), hdrs.get(TURN_HEADER, "")
        attempt = hdrs.get(SPECULATIVE_HEADER, "")
        if raw.subject.endswith(".spec"):
            self.spec_work.append(((sid, turn, attempt), kind))
        if kind == "vad.speech_stopped":
            self.confirmed[(sid, turn)] = attempt
        key = (kind, sid, turn, attempt)
        if key not in self.first:
            self.first[key] = (now, decode(hdrs, raw.data))

    def turn(self, sid: str, turn: str) -> dict[str, tuple[float, Any]]:
        """Type -> first arrival and message, of the attempt the turn's end confirmed."""
        attempt = self.confirmed.get((sid, turn), "")
        return {k[0]: v for k, v in self.first.items() if k[1:] == (sid, turn, attempt)}

    def wasted(self, sids: set[str]) -> Counter[str]:
        """Type -> speculative work messages of the abandoned attempts of ``sids``."""
        return Counter(
            kind for key, kind in self.spec_work if key[0] in sids and key in self.abandoned
        )


async def connect_bus(nats_url: str, data_dir: Path, role: str) -> Client:
    """The bus as one of ``morgan up``'s NKey roles (a tree that has none: no auth)."""
    seed = nats_auth.seed_path(data_dir / "nats-auth", role)
    if not seed.exists():
        return await nats.connect(nats_url)
    return await nats.connect(nats_url, nkeys_seed=str(seed), inbox_prefix=nats_auth.inbox(role))


async def frame_overhead(
    url: str, nats_url: str, data_dir: Path, n: int = 300
) -> tuple[list[float], list[float]]:
    """WebSocket frame sent -> on the bus (core subscriber), and -> fetched by a pull
    consumer of the kind the VAD reads a session with (its receipt), milliseconds."""
    nc = await connect_bus(nats_url, data_dir, nats_auth.ADMIN)  # the operator may not
    client = await VoiceClient.open(url)
    subject = f"morgan.audio.in.{client.sid}"
    seen: asyncio.Queue[float] = asyncio.Queue()

    async def on_frame(raw: Any) -> None:
        await seen.put(time.monotonic())

    await nc.subscribe(subject, cb=on_frame)
    js = nc.jetstream()
    pull = await js.pull_subscribe(subject, durable=None, stream="AUDIO")
    on_bus, at_vad = [], []
    for _ in range(n):
        sent = time.monotonic()
        await client.ws.send(bytes(1024))
        [raw] = await pull.fetch(1, timeout=5)
        fetched = time.monotonic()
        await raw.ack()
        on_bus.append((await asyncio.wait_for(seen.get(), 5) - sent) * 1000)
        at_vad.append((fetched - sent) * 1000)
        await asyncio.sleep(0.032)
    await client.close()
    await nc.close()
    return on_bus, at_vad


ROOT = Path(__file__).resolve().parents[1]
Rows = dict[str, list[float]]


def nats_url_of(up: MorganUp) -> str:
    return next(line.split()[1] for line in up.out if line.startswith("nats-server"))


async def run_tree(root: Path, turns: int) -> Rows:
    """Start ``morgan up`` from ``root``, measure ``turns`` turns and the frame path."""
    with tempfile.TemporaryDirectory() as tmp:
        up = MorganUp(Path(tmp), root=root)
        try:
            await asyncio.to_thread(up.wait_ready)
            nats_url = nats_url_of(up)
            rows = await measure(up, nats_url, Path(tmp), turns)
            hop, vad_hop = await frame_overhead(up.url, nats_url, Path(tmp))
            rows[FRAME_BUS] = hop
            rows[FRAME_VAD] = vad_hop
            return rows
        finally:
            up.stop()


def report(rows: Rows) -> None:
    print(f"turns measured: {len(rows[TOTAL])}")
    print(f"{'stage':<50} {'p50':>9} {'p95':>9}")
    for name, values in rows.items():
        unit = "x" if name.startswith("ratio") else "ms"
        q = 0.99 if name.startswith("frame") else 0.95
        print(f"{name:<50} {pct(values, 0.5):>8.1f}{unit} {pct(values, q):>8.1f}{unit}")


def compare(before: Rows, now: Rows, commit: str) -> None:
    print(
        f"{'stage (p50 / p95; frames p50 / p99)':<50} {'before ' + commit[:8]:>19} {'now':>17} "
        f"{'now/before':>11}"
    )
    for name in (
        TOTAL,
        "bus + gateway (total - models' compute)",
        "models' compute (vad tail + stt + llm + tts)",
        FRAME_BUS,
        FRAME_VAD,
    ):
        q = 0.99 if name.startswith("frame") else 0.95
        b50, b95 = pct(before[name], 0.5), pct(before[name], q)
        n50, n95 = pct(now[name], 0.5), pct(now[name], q)
        print(
            f"{name:<50} {b50:>8.1f} /{b95:>8.1f} {n50:>7.1f} /{n95:>8.1f} "
            f"{n50 / b50:>5.2f}x/{n95 / b95:.2f}x"
        )


async def run(
    turns: int, before: str, rounds: int, ab: bool, configs: tuple[str, ...] = ()
) -> None:
    print(f"machine: {platform.node()} {platform.machine()} {platform.processor() or ''}")
    if ab:
        await run_ab(turns, rounds, configs)
        return
    if not before:
        report(await run_tree(ROOT, turns))
        return
    with tempfile.TemporaryDirectory() as tmp:
        old = Path(tmp) / "before"
        subprocess.run(
            ["git", "-C", str(ROOT), "worktree", "add", "-q", "--detach", str(old), before],
            check=True,
        )
        try:
            merged: dict[str, Rows] = {"before": {}, "now": {}}
            for _ in range(rounds):  # alternate, so drift of the machine hits both alike
                for name, root in (("before", old), ("now", ROOT)):
                    for stage, values in (await run_tree(root, turns)).items():
                        merged[name].setdefault(stage, []).extend(values)
            compare(merged["before"], merged["now"], before)
        finally:
            subprocess.run(
                ["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], check=False
            )


async def measure(up: MorganUp, nats_url: str, data_dir: Path, turns: int) -> Rows:
    clock = BusClock()
    nc = await connect_bus(nats_url, data_dir, nats_auth.OPERATOR)
    await nc.subscribe("morgan.work.>", cb=clock.on_msg)
    await nc.subscribe("morgan.events.>", cb=clock.on_msg)
    await nc.subscribe("morgan.audio.out.>", cb=clock.on_msg)
    rows: dict[str, list[float]] = defaultdict(list)
    for i in range(turns):
        client = await VoiceClient.open(up.url)
        speech = trim(speak(QUESTIONS[i % len(QUESTIONS)]))
        await client.send_audio(silence(300), realtime=1.0)
        end_of_speech = await client.send_audio(speech, realtime=1.0)  # last voiced frame
        await client.send_audio(silence(1500), realtime=1.0)
        await client.wait_for(lambda c=client: any(t.complete for t in c.turns.values()), 120)
        turn_id, turn = next((k, t) for k, t in client.turns.items() if t.complete)
        await client.close()
        t = clock.turn(client.sid, turn_id)
        if "tts.request" not in t:
            continue
        utt_at, utt = t["stt.utterance"]
        tr_at, tr = t["transcript"]
        llm_at, _ = t["llm.request"]
        tts_at, tts_req = t["tts.request"]
        audio_at, chunk = t["audio.chunk"]
        total = (turn.first_audio_at - end_of_speech) * 1000
        vad_tail = (utt_at - end_of_speech) * 1000
        compute = utt.vad_tail_ms + tr.stt_ms + tts_req.llm_ms + chunk.tts_ms
        rows[TOTAL].append(total)
        rows["vad tail (end of speech -> utterance on bus)"].append(vad_tail)
        rows["  vad silence wait (configured)"].append(utt.vad_tail_ms)
        rows["stt (bus: utterance -> transcript)"].append((tr_at - utt_at) * 1000)
        rows["  stt model compute"].append(tr.stt_ms)
        rows["llm first sentence (bus)"].append((tts_at - llm_at) * 1000)
        rows["  llm model compute to first sentence"].append(tts_req.llm_ms)
        rows["tts first chunk (bus)"].append((audio_at - tts_at) * 1000)
        rows["  tts model compute"].append(chunk.tts_ms)
        rows["bus + gateway (total - models' compute)"].append(total - compute)
        rows["models' compute (vad tail + stt + llm + tts)"].append(compute)
        rows["ratio total / models' compute"].append(total / compute)
        rows["gateway hop: audio chunk on bus -> client"].append(
            (turn.first_audio_at - audio_at) * 1000
        )
    await nc.close()
    return rows


# --ab: speculative turns against plain ones, same run


@dataclass(frozen=True)
class Config:
    name: str
    speculate_ms: int
    silence_ms: int
    """The silence that ends a turn; with ``turn_model``, the most it waits."""
    turn_model: bool = False
    """End turns by the Smart Turn model too (``MORGAN_VAD_TURN_MODEL``)."""

    def env(self) -> dict[str, str]:
        return {
            "MORGAN_VAD_SPECULATE_MS": str(self.speculate_ms),
            "MORGAN_VAD_SILENCE_MS": str(self.silence_ms),
            "MORGAN_VAD_TURN_MODEL": "1" if self.turn_model else "0",
            "MORGAN_VAD_TURN_MAX_SILENCE_MS": str(self.silence_ms),
        }


CONFIGS = (
    Config("off-300", 0, 300),
    Config("off-500", 0, 500),
    Config("on-500", 150, 500),
    Config("on-300", 150, 300),
    Config("on-model", 150, 1500, turn_model=True),
)
BASELINE = CONFIGS[0].name
PAUSED = [
    ("i would like to book a table for", "four people tonight"),
    ("can you remind me to call", "my sister tomorrow"),
    ("the weather in", "paris this weekend"),
]
"""Utterances spoken as two phrases with ``GAP_MS`` of silence between them."""
GAP_MS = 350
LEAD_MS = 300
"""Silence before each utterance, ms."""
TAIL_MS = 2000
"""Silence after each utterance, ms: past every configuration's end-of-turn silence."""
END_SLACK_MS = 700
"""A turn ended at most this long before the utterance's last voiced sample is the
utterance's own end (the VAD's speech end is a window or two off); a turn cut at the
mid-sentence pause ends a whole second phrase (over 1.2 s) earlier."""
SETTLE_S = 1.0
"""Wait before reading /metrics: workers count a speculation once its handler is done."""
SPEC_METRIC = re.compile(r"^morgan_speculation_(seconds|messages)_total\{(.*)\} (\S+)$")
Metrics = dict[tuple[str, str], float]
"""(seconds | messages, used | wasted) -> summed over the workers."""


@dataclass(frozen=True)
class Spoken:
    text: str
    pcm: bytes
    paused: bool


def utterances(turns: int) -> list[Spoken]:
    """``turns`` complete questions and ``turns`` paused utterances, alternating."""
    out = []
    for i in range(turns):
        question = QUESTIONS[i % len(QUESTIONS)]
        first, second = PAUSED[i % len(PAUSED)]
        pcm = trim(speak(first)) + silence(GAP_MS) + voiced(speak(second))
        out.append(Spoken(question, trim(speak(question)), paused=False))
        out.append(Spoken(f"{first} ... {second}", pcm, paused=True))
    return out


@dataclass(frozen=True)
class Heard:
    """One utterance as the client and the bus saw it."""

    spoken: Spoken
    sid: str
    total_ms: float
    """End of speech (the last voiced sample) -> first reply audio at the client."""
    compute_ms: float | None
    """The confirmed turn's vad tail + stt + llm first sentence + tts first chunk."""
    turns: int
    """Turns the client got a transcript of: more than one is a false cut."""


@dataclass
class AbStats:
    heard: list[Heard] = field(default_factory=list)
    failed: int = 0
    abandoned: int = 0
    wasted: Counter[str] = field(default_factory=Counter)
    """Work type -> messages of abandoned speculations (bus)."""
    metrics: Metrics | None = None

    def merge(self, other: AbStats) -> None:
        self.heard += other.heard
        self.failed += other.failed
        self.abandoned += other.abandoned
        self.wasted += other.wasted
        if other.metrics is not None:
            mine = self.metrics or {}
            self.metrics = {
                k: mine.get(k, 0.0) + other.metrics.get(k, 0.0) for k in {*mine, *other.metrics}
            }


def compute_of(t: dict[str, tuple[float, Any]]) -> float | None:
    """vad tail + stt + llm to first sentence + tts first chunk, from a turn's messages."""
    if any(k not in t for k in ("stt.utterance", "transcript", "tts.request", "audio.chunk")):
        return None
    return float(
        t["stt.utterance"][1].vad_tail_ms
        + t["transcript"][1].stt_ms
        + t["tts.request"][1].llm_ms
        + t["audio.chunk"][1].tts_ms
    )


async def final_turn(client: VoiceClient, end_ms: int) -> str:
    """The turn the VAD ended at the utterance's end (not at a pause inside it)."""

    def ended() -> dict[str, Any] | None:
        return next(
            (
                e
                for e in client.events
                if e["type"] == "vad.speech_stopped" and e["at_ms"] >= end_ms - END_SLACK_MS
            ),
            None,
        )

    await client.wait_for(lambda: ended() is not None, 120)
    event = ended()
    assert event is not None
    return str(event["turn"])


async def speak_once(url: str, clock: BusClock, spoken: Spoken) -> Heard:
    """Speak ``spoken`` at real-time pace; wait for the reply to the utterance's end."""
    client = await VoiceClient.open(url)
    try:
        await client.send_audio(silence(LEAD_MS), realtime=1.0)
        end_of_speech = await client.send_audio(spoken.pcm, realtime=1.0)
        await client.send_audio(silence(TAIL_MS), realtime=1.0)
        turn_id = await final_turn(client, LEAD_MS + len(spoken.pcm) // 32)
        await client.wait_for(lambda: client.turns[turn_id].complete, 120)
    finally:
        await client.close()
    transcribed = {e["turn"] for e in client.events if e["type"] == "transcript"}
    return Heard(
        spoken,
        client.sid,
        (client.turns[turn_id].first_audio_at - end_of_speech) * 1000,
        compute_of(clock.turn(client.sid, turn_id)),
        len(transcribed),
    )


def metrics_ports(count: int) -> list[int]:
    """``count`` free consecutive ports: ``morgan up`` serves its i-th worker's /metrics
    on ``MORGAN_METRICS_PORT`` + 1 + i."""
    while True:
        base = free_port()
        ports = [base + 1 + i for i in range(count)]
        if ports[-1] < 65536 and all(bindable(p) for p in ports):
            return ports


def scrape(ports: list[int]) -> Metrics | None:
    """``morgan_speculation_*_total`` summed over the workers' /metrics; None if none
    answered."""
    out: Metrics = defaultdict(float)
    answered = False
    for port in ports:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text = r.read().decode()
        except OSError:
            continue
        answered = True
        for line in text.splitlines():
            m = SPEC_METRIC.match(line)
            if m:
                outcome = dict(re.findall(r'(\w+)="([^"]*)"', m[2])).get("outcome", "")
                out[(m[1], outcome)] += float(m[3])
    return out if answered else None


async def speak_all(up: MorganUp, clock: BusClock, spoken: list[Spoken]) -> AbStats:
    stats = AbStats()
    for s in spoken:
        try:
            stats.heard.append(await speak_once(up.url, clock, s))
        except TimeoutError:
            stats.failed += 1
    return stats


async def measure_ab(
    up: MorganUp, data_dir: Path, spoken: list[Spoken], warmup: Spoken, ports: list[int]
) -> AbStats:
    """One warm-up turn (each model's first run), then ``spoken``, watching the bus."""
    clock = BusClock()
    nc = await connect_bus(nats_url_of(up), data_dir, nats_auth.OPERATOR)
    try:
        for subject in ("work", "events", "audio.out", "control"):
            await nc.subscribe(f"morgan.{subject}.>", cb=clock.on_msg)
        await speak_once(up.url, clock, warmup)
        await asyncio.sleep(SETTLE_S)
        before = await asyncio.to_thread(scrape, ports)
        stats = await speak_all(up, clock, spoken)
        await asyncio.sleep(SETTLE_S)
        after = await asyncio.to_thread(scrape, ports)
    finally:
        await nc.close()
    sids = {h.sid for h in stats.heard}
    stats.abandoned = len({a for a in clock.abandoned if a[0] in sids})
    stats.wasted = clock.wasted(sids)
    if before is not None and after is not None:
        stats.metrics = {k: v - before.get(k, 0.0) for k, v in after.items()}
    return stats


async def run_config(config: Config, spoken: list[Spoken], warmup: Spoken) -> AbStats:
    """``morgan up`` with the configuration's settings, and the utterances spoken to it."""
    ports = metrics_ports(len(Settings().kind_list))
    with tempfile.TemporaryDirectory() as tmp:
        up = MorganUp(Path(tmp), root=ROOT, MORGAN_METRICS_PORT=str(ports[0] - 1), **config.env())
        try:
            await asyncio.to_thread(up.wait_ready)
            return await measure_ab(up, Path(tmp), spoken, warmup, ports)
        finally:
            up.stop()


def ms(values: list[float], q: float) -> str:
    return f"{pct(values, q):.0f}" if values else "-"


def ratio(values: list[float], base: list[float], q: float) -> str:
    return f"{pct(values, q) / pct(base, q):.2f}x" if values and base else "-"


def cuts(heard: list[Heard]) -> str:
    cut = sum(h.turns > 1 for h in heard)
    return f"{cut}/{len(heard)} {cut / len(heard):.0%}" if heard else "-"


def report_latency(stats: dict[str, AbStats]) -> None:
    base = [h.total_ms for h in stats[BASELINE].heard]
    print(
        f"{'config':<8} {'spec':>5} {'silence':>7} {'n':>3} {'fail':>4} {'p50 ms':>7} "
        f"{'p95 ms':>7} {'p50/' + BASELINE:>12} {'p95/' + BASELINE:>12} {'compute p50/p95':>16}"
    )
    for config in (c for c in CONFIGS if c.name in stats):
        s = stats[config.name]
        totals = [h.total_ms for h in s.heard]
        compute = [h.compute_ms for h in s.heard if h.compute_ms is not None]
        print(
            f"{config.name:<8} {config.speculate_ms:>5} {config.silence_ms:>7} {len(totals):>3} "
            f"{s.failed:>4} {ms(totals, 0.5):>7} {ms(totals, 0.95):>7} "
            f"{ratio(totals, base, 0.5):>12} {ratio(totals, base, 0.95):>12} "
            f"{ms(compute, 0.5) + ' / ' + ms(compute, 0.95):>16}"
        )


def seconds(metrics: Metrics | None, outcome: str) -> str:
    if metrics is None:
        return "-"
    spent, count = metrics.get(("seconds", outcome), 0.0), metrics.get(("messages", outcome), 0.0)
    return f"{spent:.1f}s/{count:.0f}"


def report_cost(stats: dict[str, AbStats]) -> None:
    print(
        f"{'config':<8} {'false cuts: paused':>18} {'all':>10} {'abandoned':>9} "
        f"{'wasted msgs stt/llm/tts':>23} {'wasted s/msgs':>13} {'used s/msgs':>11}"
    )
    for config in (c for c in CONFIGS if c.name in stats):
        s = stats[config.name]
        paused = [h for h in s.heard if h.spoken.paused]
        w = s.wasted
        wasted = f"{sum(w.values())} = {w['stt.utterance']}/{w['llm.request']}/{w['tts.request']}"
        print(
            f"{config.name:<8} {cuts(paused):>18} {cuts(s.heard):>10} {s.abandoned:>9} "
            f"{wasted:>23} {seconds(s.metrics, 'wasted'):>13} {seconds(s.metrics, 'used'):>11}"
        )


async def run_ab(turns: int, rounds: int, names: tuple[str, ...] = ()) -> None:
    """Every configuration (those ``names``, off-300 always) in each round, in a rotated
    order, so drift hits all alike."""
    spoken = await asyncio.to_thread(utterances, turns)
    warmup = Spoken(QUESTIONS[-1], trim(speak(QUESTIONS[-1])), paused=False)
    chosen = [c for c in CONFIGS if not names or c.name in names or c.name == BASELINE]
    stats = {c.name: AbStats() for c in chosen}
    for r in range(rounds):
        shift = r % len(chosen)
        for config in chosen[shift:] + chosen[:shift]:
            print(f"round {r + 1}/{rounds}: {config.name}", flush=True)
            stats[config.name].merge(await run_config(config, spoken, warmup))
    print(f"utterances per configuration and round: {len(spoken)} ({turns} paused)")
    report_latency(stats)
    report_cost(stats)
    print(
        "false cut: the client got more than one turn of an utterance; abandoned: "
        "speculations dropped (control.abandon); wasted msgs: *.spec work messages of "
        "those; s/msgs: morgan_speculation_{seconds,messages}_total of the workers"
    )


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--turns", type=int, default=6)
    p.add_argument("--before", default="", help="a commit to compare with, in the same run")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds per tree")
    p.add_argument(
        "--ab", action="store_true", help="speculative turns on/off at 300/500 ms silence"
    )
    p.add_argument(
        "--configs", default="", help="with --ab: only these (comma-separated; off-300 always)"
    )
    args = p.parse_args()
    if args.ab and args.before:
        p.error("--ab and --before do not go together")
    configs = tuple(c.strip() for c in args.configs.split(",") if c.strip())
    asyncio.run(run(args.turns, args.before, args.rounds, args.ab, configs))


if __name__ == "__main__":
    main()
