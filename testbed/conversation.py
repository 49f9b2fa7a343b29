"""A WebSocket client (docs/protocol.md) that talks in turns and counts them.

Every turn it starts must end with exactly one complete reply: a transcript,
``reply.done`` and all the audio it announces. Anything seen twice (an event of
the same type/index, an audio chunk of the same seq/chunk) counts as a duplicate.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection

from testbed.morgan_process import connect_when_served, send_frames


@dataclass
class TurnLog:
    transcript: str | None = None
    done: dict[str, Any] | None = None
    lasts: int = 0
    first_audio_at: float = 0.0
    complete_at: float = 0.0
    seen: Counter[tuple[Any, ...]] = field(default_factory=Counter)

    @property
    def complete(self) -> bool:
        return (
            self.transcript is not None
            and self.done is not None
            and self.lasts >= self.done["sentences"]
        )

    @property
    def duplicated(self) -> bool:
        return any(n > 1 for n in self.seen.values())


@dataclass
class Tally:
    started: int = 0
    completed: int = 0
    lost: int = 0
    duplicated: int = 0
    extra: int = 0
    latencies: list[float] = field(default_factory=list)
    """End of the utterance sent -> the turn's reply complete, seconds."""

    def add(self, other: Tally) -> None:
        self.started += other.started
        self.completed += other.completed
        self.lost += other.lost
        self.duplicated += other.duplicated
        self.extra += other.extra
        self.latencies += other.latencies

    def p95(self) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]

    def line(self) -> str:
        return (
            f"turns started/completed/lost/duplicated: {self.started}/{self.completed}/"
            f"{self.lost}/{self.duplicated} (extra {self.extra}); "
            f"p95 turn latency {self.p95():.2f} s"
        )


class Talker:
    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.sid = ""
        self.turns: dict[str, TurnLog] = {}
        self.order: list[str] = []
        self.changed = asyncio.Event()
        self.sent_at: list[float] = []
        self.events: list[dict[str, Any]] = []
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, url: str) -> Talker:
        ws = await connect_when_served(url.replace("http", "ws", 1) + "/ws")
        talker = cls(ws)
        await ws.send(json.dumps({"type": "session.start", "rate": 16000, "format": "s16le"}))
        ready = json.loads(await asyncio.wait_for(ws.recv(), 30))
        assert ready["type"] == "session.ready", ready
        talker.sid = ready["session_id"]
        talker._reader = asyncio.create_task(talker._read())
        return talker

    def turn(self, tid: str) -> TurnLog:
        if tid not in self.turns:
            self.turns[tid] = TurnLog()
            self.order.append(tid)
        return self.turns[tid]

    async def _read(self) -> None:
        header: dict[str, Any] | None = None
        async for frame in self.ws:
            now = time.monotonic()
            if isinstance(frame, bytes):
                assert header is not None, "binary frame without an audio header"
                t = self.turn(header["turn"])
                t.seen[("audio", header["seq"], header["chunk"])] += 1
                t.first_audio_at = t.first_audio_at or now
                t.lasts += 1 if header["last"] else 0
                header = None
            else:
                event = json.loads(frame)
                if event["type"] == "audio":
                    header = event
                    continue
                self.events.append(event)
                if "turn" not in event:
                    continue
                t = self.turn(event["turn"])
                t.seen[(event["type"], event.get("index"))] += 1
                if event["type"] == "transcript":
                    t.transcript = event["text"]
                elif event["type"] == "reply.done":
                    t.done = event
            for t in self.turns.values():
                if t.complete and not t.complete_at:
                    t.complete_at = now
            self.changed.set()

    def spoken_turns(self) -> list[TurnLog]:
        """Turns that came from speech or text (have a transcript), in order of first sight."""
        return [self.turns[k] for k in self.order if self.turns[k].transcript is not None]

    async def send_audio(self, pcm: bytes, realtime: float = 0.0) -> None:
        await send_frames(self.ws, pcm, realtime)

    async def wait_until(self, cond: Any, timeout: float) -> bool:
        try:
            async with asyncio.timeout(timeout):
                while not cond():
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            return False
        return True

    def describe(self) -> str:
        """Each turn as ``id: transcript [complete|open]`` (for failure messages)."""
        return "; ".join(
            f"{k}: {t.transcript!r} "
            + ("[complete]" if t.complete else f"[open: {sorted(map(str, t.seen))}]")
            for k, t in self.turns.items()
        )

    def completed(self) -> int:
        return sum(t.complete for t in self.spoken_turns())

    async def say(self, pcm: bytes, *, timeout: float = 90.0, realtime: float = 0.0) -> bool:
        """Speak one utterance and wait (politely, no barge-in) until its reply is complete."""
        before = self.completed()
        await self.send_audio(pcm, realtime)
        self.sent_at.append(time.monotonic())
        return await self.wait_until(lambda: self.completed() > before, timeout)

    def tally(self) -> Tally:
        spoken = self.spoken_turns()
        done = [t for t in spoken if t.complete]
        tally = Tally(
            started=len(self.sent_at),
            completed=min(len(done), len(self.sent_at)),
            duplicated=sum(t.duplicated for t in spoken),
            extra=max(0, len(spoken) - len(self.sent_at)),
        )
        tally.lost = tally.started - tally.completed
        tally.latencies = [
            t.complete_at - sent for t, sent in zip(done, self.sent_at, strict=False)
        ]
        return tally

    async def close(self) -> None:
        with_end = json.dumps({"type": "session.end"})
        try:
            await asyncio.wait_for(self.ws.send(with_end), 5)
            await asyncio.wait_for(self.ws.close(), 5)
        except Exception:
            pass
        if self._reader is not None:
            self._reader.cancel()
