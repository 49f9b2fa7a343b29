"""How many real-time microphones one gateway and one VAD worker hold on this machine.

    .venv/bin/python bench/gateway_capacity.py --steps 0,25,50,100,150,200 --step-s 60 --turns 4

Starts ``morgan up`` (``--kinds``, default vad,stt,llm,tts), then steps up the number of
open microphones: WebSocket sessions that each stream silence as 20 ms PCM16 frames at
real-time pace, from a load-generator process of their own (this file, ``--mics``). One
more session, opened first, is the speaker: a real-time microphone too, which speaks a
fixed question ``--turns`` times per step. At each step:

- frame lag. The protocol acknowledges no frame, so the observable is the bus side: the
  time from a frame's send on the WebSocket to its arrival on ``audio.in.<sid>`` as a core
  NATS subscriber (the read-only operator role) sees it, for every frame of the speaker
  (silence and speech), p50 / p99. The gateway publishes a session's frames one JetStream
  round trip at a time (gateway/mic_publisher.py), so a gateway or nats-server that falls
  behind shows here, as frames wait and go out joined.
- VAD backlog: the most frames stored but not yet fetched on any VAD session consumer
  (JetStream consumer info, every 2 s); 0-1 while the VAD keeps up.
- sessions: open, refused (by HTTP status), held by the VAD (claims it holds unacked).
- turn latency: the speaker's end of speech (the frame with the last voiced sample sent)
  -> first reply audio at the client, p50 of the step and its ratio to step 0's.
- CPU of each process over the step from /proc (100 % = one core), and the machine's.

A step passes when every microphone opened and is held by the VAD, the frame p99 is under
20 ms and the turn p50 within 1.2x of step 0's; the largest passing step is printed (target
200). Settings it gives ``morgan up``: MORGAN_MAX_SESSIONS_PER_CLIENT above the largest step
(every microphone comes from 127.0.0.1, one client) and MORGAN_LLM_HISTORY_TURNS=0 (every
turn's prompt the same, so the turns of later steps do not carry a longer context).

(Not ``bench/gateway.py``: mypy checks bench/ as top-level modules, and a module named
``gateway`` there clashes with the gateway package.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import nats
import numpy as np
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from schemas import AudioFrame, MessageError, decode
from streams import definitions, nats_auth
from testbed.audio import speak
from testbed.morgan_process import MorganUp, Turn, VoiceClient
from testbed.stats import pct

RATE = 16000
FRAME_S = 0.020
FRAME_BYTES = int(RATE * FRAME_S) * 2  # 640 bytes of s16le mono
SILENCE = bytes(FRAME_BYTES)
SLOTS = 10
"""The load generator sends each microphone's frame in one of SLOTS phases of the 20 ms
period (session i in phase i % SLOTS), as independent microphones would, not all at once."""
START = json.dumps({"type": "session.start", "rate": RATE, "format": "s16le", "channels": 1})
QUESTION = "what is the capital of france"
FRAME_P99_MS = 20.0
TURN_RATIO = 1.2
VAD_POLL_S = 2.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


def voiced(pcm: bytes) -> bytes:
    """``pcm`` up to its last sample louder than 500: espeak's quiet tail cut, so the end
    of speech is the last voiced sample (where bench/turn_latency.py puts it too)."""
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.int32)
    loud = np.flatnonzero(np.abs(samples) > 500)
    return pcm[: 2 * (int(loud[-1]) + 1)] if loud.size else pcm


# -- the load generator: a process of its own, driven over stdin/stdout ---------------------


class Mics:
    """Silent microphones, one WebSocket session each, 20 ms frames at real-time pace."""

    def __init__(self, url: str) -> None:
        self.ws_url = url.replace("http", "ws", 1) + "/ws"
        self.slots: list[list[ClientConnection]] = [[] for _ in range(SLOTS)]
        self.tried = 0
        self.open = 0
        self.refused: Counter[str] = Counter()
        self.failed = 0
        self.closed = 0
        self.error_events = 0
        self.late_ms: list[float] = []
        """How late each tick of the sender woke, ms (the generator's own lag)."""
        self.readers: set[asyncio.Task[None]] = set()

    async def grow(self, target: int, at_once: int = 8) -> None:
        """Try to open microphones until ``target`` were tried in all (refused ones count:
        they are not tried again)."""
        gate = asyncio.Semaphore(at_once)

        async def one() -> None:
            async with gate:
                await self._open_one()

        n = max(0, target - self.tried)
        self.tried += n
        await asyncio.gather(*(one() for _ in range(n)))

    async def _open_one(self) -> None:
        try:
            ws = await connect(self.ws_url, max_size=None, open_timeout=30)
        except InvalidStatus as exc:
            self.refused[str(exc.response.status_code)] += 1
            return
        except (OSError, TimeoutError, WebSocketException):
            self.failed += 1
            return
        try:
            await ws.send(START)
            ready = json.loads(await asyncio.wait_for(ws.recv(), 30))
        except (TimeoutError, WebSocketException):
            ready = {}
        if ready.get("type") != "session.ready":
            self.failed += 1
            await ws.close()
            return
        self.slots[self.open % SLOTS].append(ws)
        self.open += 1
        task = asyncio.create_task(self._read(ws))
        self.readers.add(task)
        task.add_done_callback(self.readers.discard)

    async def _read(self, ws: ClientConnection) -> None:
        """Take whatever the server sends (a client that stops reading gets closed)."""
        try:
            async for message in ws:
                if isinstance(message, str) and '"type":"error"' in message.replace(" ", ""):
                    self.error_events += 1
        except ConnectionClosed:
            pass

    async def send_forever(self) -> None:
        """Every FRAME_S / SLOTS, one frame to each microphone of the next phase."""
        loop = asyncio.get_running_loop()
        start, tick = loop.time(), 0
        while True:
            due = start + tick * FRAME_S / SLOTS
            await asyncio.sleep(max(0.0, due - loop.time()))
            self.late_ms.append((loop.time() - due) * 1000)
            slot = self.slots[tick % SLOTS]
            for ws in list(slot):
                try:
                    await ws.send(SILENCE)
                except ConnectionClosed:
                    slot.remove(ws)
                    self.open -= 1
                    self.closed += 1
            tick += 1

    def stats(self) -> dict[str, Any]:
        late, self.late_ms = self.late_ms, []
        return {
            "open": self.open,
            "refused": dict(self.refused),
            "failed": self.failed,
            "closed": self.closed,
            "error_events": self.error_events,
            "late_p99_ms": pct(late, 0.99) if late else 0.0,
        }


async def run_mics(url: str) -> None:
    """The load generator: ``grow N`` opens microphones up to N tried, ``stats`` answers
    one JSON line (and starts a new lateness window); EOF closes everything."""
    mics = Mics(url)
    sender = asyncio.create_task(mics.send_forever())
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := (await reader.readline()).decode().split():
        if line[0] == "grow":
            await mics.grow(int(line[1]))
        print(json.dumps(mics.stats()), flush=True)
    sender.cancel()
    for slot in mics.slots:
        await asyncio.gather(*(ws.close() for ws in slot), return_exceptions=True)


class LoadGenerator:
    """The ``--mics`` process, seen from the bench."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, url: str) -> LoadGenerator:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(Path(__file__).resolve()),
            "--mics",
            url,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def ask(self, line: str) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()
        answer = await self.proc.stdout.readline()
        if not answer:
            raise RuntimeError("the load generator stopped")
        result: dict[str, Any] = json.loads(answer)
        return result

    async def stop(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.close()
        try:
            await asyncio.wait_for(self.proc.wait(), 20)
        except TimeoutError:
            self.proc.kill()
            await self.proc.wait()


# -- the speaker: the measured session -------------------------------------------------------


class Speaker:
    """A real-time microphone (silence, or speech when asked) whose every frame is timed
    from its send on the WebSocket to its arrival on the bus."""

    def __init__(self, client: VoiceClient) -> None:
        self.client = client
        self.speech = bytearray()
        self.spoken = asyncio.Event()
        self.speech_end_at = 0.0
        self.offset = 0
        self.sent: deque[tuple[int, float]] = deque()
        """(sample offset after the frame, when it was sent), oldest first."""
        self.lags_ms: list[float] = []
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        start, n = loop.time(), 0
        while True:
            await asyncio.sleep(max(0.0, start + n * FRAME_S - loop.time()))
            frame, last_of_speech = SILENCE, False
            if self.speech:
                frame = bytes(self.speech[:FRAME_BYTES]).ljust(FRAME_BYTES, b"\0")
                del self.speech[:FRAME_BYTES]
                last_of_speech = not self.speech
            self.offset += FRAME_BYTES // 2
            sent = time.monotonic()
            self.sent.append((self.offset, sent))
            await self.client.ws.send(frame)
            if last_of_speech:
                self.speech_end_at = sent
                self.spoken.set()
            n += 1

    async def say(self, pcm: bytes) -> float:
        """Speak ``pcm`` in the stream; returns when its last frame was sent (monotonic)."""
        self.spoken.clear()
        self.speech += pcm
        waiter = asyncio.create_task(self.spoken.wait())
        await asyncio.wait({waiter, self.task}, return_when=asyncio.FIRST_COMPLETED)
        if not self.spoken.is_set():  # the microphone stopped: say why
            waiter.cancel()
            self.task.result()
            raise RuntimeError("the speaker's microphone stopped")
        return self.speech_end_at

    async def on_bus(self, raw: Msg) -> None:
        """A frame of this session on ``audio.in``: every frame sent that it covers arrived
        (the gateway joins frames that waited for the bus)."""
        now = time.monotonic()
        try:
            frame = decode(raw.headers, raw.data)
        except MessageError:
            return
        if not isinstance(frame, AudioFrame):
            return
        end = frame.offset + len(frame.pcm) // 2
        while self.sent and self.sent[0][0] <= end:
            self.lags_ms.append((now - self.sent.popleft()[1]) * 1000)

    def take_lags(self) -> list[float]:
        lags, self.lags_ms = self.lags_ms, []
        return lags

    async def turn(self, pcm: bytes, timeout: float) -> float | None:
        """Speak; end of speech -> the reply's first audio at the client, ms (None: no
        audio came within ``timeout``, or the reply failed)."""
        client = self.client
        before = set(client.turns)
        end = await self.say(pcm)

        def new() -> list[Turn]:
            return [t for k, t in list(client.turns.items()) if k not in before]

        def over() -> bool:
            return any(
                t.complete or t.cancelled or any(e["type"] == "error" for e in t.events)
                for t in new()
            )

        try:
            await client.wait_for(over, timeout)
        except TimeoutError:
            pass
        firsts = [t.first_audio_at for t in new() if t.first_audio_at]
        return (min(firsts) - end) * 1000 if firsts else None


# -- what the bus and /proc say --------------------------------------------------------------


@dataclass
class VadLook:
    held: list[int] = field(default_factory=list)
    waiting: list[int] = field(default_factory=list)
    backlog: list[int] = field(default_factory=list)
    """Per poll: the most frames pending (stored, not yet fetched) on one VAD consumer."""


async def watch_vad(nc: Client, look: VadLook) -> None:
    """Every VAD_POLL_S: the VAD's claims (held, waiting) and its session consumers'
    backlog, from JetStream's consumer info (the operator may read it)."""
    js = nc.jetstream()
    while True:
        try:
            claims = await js.consumer_info(definitions.WORK, "vad")
            look.held.append(claims.num_ack_pending or 0)
            look.waiting.append(claims.num_pending or 0)
            pending, offset = [], 0
            while True:
                page = await js.consumers_info(definitions.AUDIO, offset=offset)
                pending += [c.num_pending or 0 for c in page if (c.name or "").startswith("vad-")]
                offset += len(page)
                if len(page) < 256:
                    break
            look.backlog.append(max(pending, default=0))
        except (NatsError, TimeoutError):
            pass
        await asyncio.sleep(VAD_POLL_S)


async def frames_in(url: str) -> float:
    """The gateway's count of microphone frames accepted (/metrics)."""
    async with httpx.AsyncClient() as http:
        text = (await http.get(url + "/metrics", timeout=10)).text
    for line in text.splitlines():
        if line.startswith("morgan_gateway_frames_in_total "):
            return float(line.split()[1])
    return 0.0


def descendants(root: int) -> list[int]:
    parents: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            parents.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo += parents.get(pid, [])
    return found


def role_of(pid: int) -> str:
    """What a process of ``morgan up`` is: nats-server, gateway, a kind, postgres, ..."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return ""
    if "nats-server" in argv[0]:
        return "nats-server"
    if "postgres" in argv[0]:
        return "postgres"
    if argv[1:3] == ["-m", "gateway"]:
        return "gateway"
    if argv[1:3] == ["-m", "processors"] and len(argv) > 3:
        return argv[3]
    if argv[1:4] == ["-m", "morgan", "up"]:
        return "morgan up"
    return Path(argv[0]).name


def ticks_of(pid: int) -> int:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12])  # utime + stime


def machine_ticks() -> tuple[int, int]:
    """(busy, all) clock ticks of every core since boot."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = values[3] + values[4]
    return sum(values) - idle, sum(values)


class CpuMeter:
    """CPU time of each process over an interval, by role (100 % = one core)."""

    def __init__(self, up_pid: int, extra: dict[str, int]) -> None:
        self.up_pid, self.extra = up_pid, extra

    def snapshot(self) -> tuple[float, dict[int, tuple[str, int]], tuple[int, int]]:
        pids = {pid: role_of(pid) for pid in descendants(self.up_pid)}
        pids |= {pid: role for role, pid in self.extra.items()}
        return time.monotonic(), {p: (r, ticks_of(p)) for p, r in pids.items()}, machine_ticks()

    @staticmethod
    def usage(
        before: tuple[float, dict[int, tuple[str, int]], tuple[int, int]],
        after: tuple[float, dict[int, tuple[str, int]], tuple[int, int]],
    ) -> dict[str, float]:
        seconds = after[0] - before[0]
        per: Counter[str] = Counter()
        for pid, (role, ticks) in after[1].items():
            per[role] += ticks - before[1].get(pid, (role, 0))[1]
        out = {role: 100.0 * t / CLK_TCK / seconds for role, t in per.items()}
        busy, total = (a - b for a, b in zip(after[2], before[2], strict=True))
        out["machine"] = 100.0 * (os.cpu_count() or 1) * busy / max(1, total)
        return out


# -- the steps -------------------------------------------------------------------------------


@dataclass
class Step:
    mics: int
    mics_open: int
    refused: dict[str, int]
    failed: int
    held: int
    frame_lags: list[float]
    backlog: int
    turns: list[float]
    turns_failed: int
    cpu: dict[str, float]
    late_p99_ms: float
    frames_in_per_s: float
    """Frames the gateway accepted a second, against (open + 1) * 50 sent."""

    @property
    def turn_p50(self) -> float:
        return pct(self.turns, 0.5) if self.turns else float("nan")

    @property
    def frame_p99(self) -> float:
        return pct(self.frame_lags, 0.99) if self.frame_lags else float("nan")

    def passes(self, idle_turn_p50: float) -> bool:
        return (
            self.mics_open == self.mics
            and self.held >= self.mics + 1  # and the speaker
            and self.frame_p99 < FRAME_P99_MS
            and not self.turns_failed
            and self.turn_p50 <= TURN_RATIO * idle_turn_p50
        )


HEADER = (
    f"{'mics':>5} {'open':>5} {'refused':>8} {'vad held':>8} {'frames/s':>13} {'frame p50':>10} "
    f"{'frame p99':>10} {'vad backlog':>11} {'turn p50':>9} {'vs idle':>7} {'turns':>6} "
    f"{'gateway':>8} {'vad':>6} {'nats':>6} {'loadgen':>8} {'bench':>6} {'machine':>8}"
)


def row(step: Step, idle_turn_p50: float, cores: int) -> str:
    refused = sum(step.refused.values()) + step.failed
    lags = step.frame_lags
    p50 = pct(lags, 0.5) if lags else float("nan")
    ok = f"{len(step.turns)}/{len(step.turns) + step.turns_failed}"
    rate = f"{step.frames_in_per_s:.0f}/{(step.mics_open + 1) / FRAME_S:.0f}"
    c = step.cpu
    return (
        f"{step.mics:>5} {step.mics_open:>5} {refused:>8} {step.held:>8} {rate:>13} {p50:>8.1f}ms "
        f"{step.frame_p99:>8.1f}ms {step.backlog:>11} {step.turn_p50:>7.0f}ms "
        f"{step.turn_p50 / idle_turn_p50:>6.2f}x {ok:>6} {c.get('gateway', 0):>7.0f}% "
        f"{c.get('vad', 0):>5.0f}% {c.get('nats-server', 0):>5.0f}% {c.get('loadgen', 0):>7.0f}% "
        f"{c.get('bench', 0):>5.0f}% {c['machine']:>4.0f}/{100 * cores}%"
    )


@dataclass
class Bench:
    """One run: ``morgan up`` at ``url``, its bus as the operator, the speaker, the mics."""

    url: str
    nc: Client
    speaker: Speaker
    speech: bytes
    gen: LoadGenerator
    meter: CpuMeter
    args: argparse.Namespace

    async def step(self, mics: int) -> Step:
        args, speaker = self.args, self.speaker
        grown = await self.gen.ask(f"grow {mics}")
        await asyncio.sleep(3.0)  # the claims settle; the VAD takes the new sessions
        await self.gen.ask("stats")  # a fresh lateness window
        look = VadLook()
        watcher = asyncio.create_task(watch_vad(self.nc, look))
        speaker.take_lags()
        before, frames_before = self.meter.snapshot(), await frames_in(self.url)
        started = time.monotonic()
        turns: list[float] = []
        failed = 0
        for _ in range(args.turns):
            ms = await speaker.turn(self.speech, args.turn_timeout_s)
            if ms is None:
                failed += 1
            else:
                turns.append(ms)
            await asyncio.sleep(1.0)
        await asyncio.sleep(max(0.0, args.step_s - (time.monotonic() - started)))
        after, frames_after = self.meter.snapshot(), await frames_in(self.url)
        watcher.cancel()
        stats = await self.gen.ask("stats")
        return Step(
            mics=mics,
            mics_open=stats["open"],
            refused=grown["refused"],
            failed=stats["failed"],
            held=min(look.held, default=0),
            frame_lags=speaker.take_lags(),
            backlog=max(look.backlog, default=0),
            turns=turns,
            turns_failed=failed,
            cpu=CpuMeter.usage(before, after),
            late_p99_ms=stats["late_p99_ms"],
            frames_in_per_s=(frames_after - frames_before) / (after[0] - before[0]),
        )

    async def report(self, steps: list[int]) -> None:
        print(
            "frame: WebSocket send -> on the bus (core NATS subscriber), every frame of the "
            "speaker; frames/s: accepted by the gateway / sent; vad backlog: most frames "
            "pending on one VAD session consumer at a look; turn: end of speech -> first "
            "reply audio at the client; CPU: 100 % = one core",
            flush=True,
        )
        print(HEADER, flush=True)
        done: list[Step] = []
        for mics in steps:
            step = await self.step(mics)
            done.append(step)
            print(row(step, done[0].turn_p50, os.cpu_count() or 1), flush=True)
            if step.refused or step.failed:
                print(f"      refused by status: {step.refused}; failed to open: {step.failed}")
            if step.late_p99_ms > FRAME_S * 1000:
                print(
                    f"      the load generator ran late itself: tick p99 {step.late_p99_ms:.1f} ms"
                )
            if step.frame_p99 > self.args.give_up_ms or not step.turns:
                print(f"      stopping: frame p99 over {self.args.give_up_ms:.0f} ms or no turn")
                break
        top = done[-1]
        if top.mics:
            each = ", ".join(
                f"{role} {(top.cpu.get(role, 0) - done[0].cpu.get(role, 0)) / top.mics:.1f}%"
                for role in ("gateway", "vad", "nats-server", "loadgen")
            )
            print(f"CPU per microphone, {top.mics} against 0 (100 % = one core): {each}")
        passing = [s.mics for s in done if s.passes(done[0].turn_p50)]
        print(
            f"largest step with every microphone open and held by the VAD, frame p99 < "
            f"{FRAME_P99_MS:.0f} ms and turn p50 within {TURN_RATIO}x of idle: "
            f"{max(passing) if passing else 'none'} (target 200)"
        )


async def run(args: argparse.Namespace) -> None:
    asked = {int(s) for s in args.steps.split(",")}
    steps = sorted(n for n in asked | {0} if n <= args.max)  # step 0 is the idle baseline
    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores; load "
        f"average {' '.join(f'{x:.2f}' for x in os.getloadavg())}"
    )
    print(
        f"kinds: {args.kinds}; steps: {steps}; {args.step_s:.0f} s and {args.turns} turns "
        f"per step at least; question: {args.question!r}",
        flush=True,
    )
    speech = voiced(speak(args.question))
    with tempfile.TemporaryDirectory() as tmp:
        up = MorganUp(
            Path(tmp),
            MORGAN_KINDS=args.kinds,
            MORGAN_MAX_SESSIONS_PER_CLIENT=str(max(steps) + 16),
            MORGAN_LLM_HISTORY_TURNS="0",
        )
        gen: LoadGenerator | None = None
        nc: Client | None = None
        speaker: Speaker | None = None
        try:
            await asyncio.to_thread(up.wait_ready, 600.0)
            nats_url = next(line.split()[1] for line in up.out if line.startswith("nats-server"))
            nc = await nats.connect(
                nats_url,
                nkeys_seed=str(Path(tmp) / "nats-auth" / f"{nats_auth.OPERATOR}.nk"),
                inbox_prefix=f"_INBOX_{nats_auth.OPERATOR}",
            )
            speaker = Speaker(await VoiceClient.open(up.url))
            await nc.subscribe(f"morgan.audio.in.{speaker.client.sid}", cb=speaker.on_bus)
            await speaker.turn(speech, args.turn_timeout_s)  # warm-up: each model's first run
            gen = await LoadGenerator.start(up.url)
            meter = CpuMeter(up.proc.pid, {"loadgen": gen.proc.pid, "bench": os.getpid()})
            await Bench(up.url, nc, speaker, speech, gen, meter, args).report(steps)
        finally:
            if gen is not None:
                await gen.stop()
            if speaker is not None:
                speaker.task.cancel()
                await speaker.client.close()
            if nc is not None:
                await nc.close()
            up.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--max", type=int, default=200, help="most microphones (steps above: skipped)")
    p.add_argument("--steps", default="0,25,50,100,150,200", help="microphones at each step")
    p.add_argument("--step-s", type=float, default=60.0, help="least seconds per step")
    p.add_argument("--turns", type=int, default=4, help="speaker's turns per step")
    p.add_argument("--kinds", default="vad,stt,llm,tts", help="MORGAN_KINDS for morgan up")
    p.add_argument("--question", default=QUESTION)
    p.add_argument("--turn-timeout-s", type=float, default=90.0)
    p.add_argument("--give-up-ms", type=float, default=1000.0, help="frame p99 that ends the run")
    p.add_argument("--mics", metavar="URL", help=argparse.SUPPRESS)  # the load generator
    args = p.parse_args()
    if args.mics:
        asyncio.run(run_mics(args.mics))
    else:
        asyncio.run(run(args))


if __name__ == "__main__":
    main()
