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
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import nats
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from schemas import decode
from testbed.audio import silence, speak
from testbed.morgan_process import MorganUp, VoiceClient
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


class BusClock:
    """First arrival time of each (type, session, turn) seen on the bus."""

    def __init__(self) -> None:
        self.first: dict[tuple[str, str, str], tuple[float, Any]] = {}
        self.frames: dict[tuple[str, int], float] = {}

    async def on_msg(self, raw: Any) -> None:
        now = time.monotonic()
        hdrs = raw.headers or {}
        kind = hdrs.get("Morgan-Type", "")
        if kind == "audio.frame":
            self.frames[(hdrs.get("Morgan-Session", ""), 0)] = now
            return
        key = (kind, hdrs.get("Morgan-Session", ""), hdrs.get("Morgan-Turn", ""))
        if key not in self.first:
            self.first[key] = (now, decode(hdrs, raw.data))


async def frame_overhead(url: str, nats_url: str, n: int = 300) -> tuple[list[float], list[float]]:
    """WebSocket frame sent -> on the bus (core subscriber), and -> fetched by a pull
    consumer of the kind the VAD reads a session with (its receipt), milliseconds."""
    nc = await nats.connect(nats_url)
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


async def run_tree(root: Path, turns: int) -> Rows:
    """Start ``morgan up`` from ``root``, measure ``turns`` turns and the frame path."""
    with tempfile.TemporaryDirectory() as tmp:
        up = MorganUp(Path(tmp), root=root)
        try:
            await asyncio.to_thread(up.wait_ready)
            nats_url = next(line.split()[1] for line in up.out if line.startswith("nats-server"))
            rows = await measure(up, nats_url, turns)
            hop, vad_hop = await frame_overhead(up.url, nats_url)
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


async def run(turns: int, before: str, rounds: int) -> None:
    print(f"machine: {platform.node()} {platform.machine()} {platform.processor() or ''}")
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


async def measure(up: MorganUp, nats_url: str, turns: int) -> Rows:
    clock = BusClock()
    nc = await nats.connect(nats_url)
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
        sid = client.sid
        t = {k[0]: v for k, v in clock.first.items() if k[1] == sid and k[2] == turn_id}
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


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--turns", type=int, default=6)
    p.add_argument("--before", default="", help="a commit to compare with, in the same run")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds per tree")
    args = p.parse_args()
    asyncio.run(run(args.turns, args.before, args.rounds))


if __name__ == "__main__":
    main()
