"""``morgan up`` as a real process, and a WebSocket client that speaks to it."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from testbed.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
FRAME = 1024  # bytes: 32 ms of 16 kHz s16le


async def send_frames(ws: ClientConnection, pcm: bytes, realtime: float = 0.0) -> float:
    """16 kHz PCM as 32 ms binary frames; ``realtime`` > 0 paces them at that multiple
    of real time. Returns when the last frame was sent (monotonic clock)."""
    start = time.monotonic()
    for i in range(0, len(pcm), FRAME):
        await ws.send(pcm[i : i + FRAME])
        if realtime:
            due = start + (i + FRAME) / 32000 / realtime
            await asyncio.sleep(max(0.0, due - time.monotonic()))
    return time.monotonic()


class MorganUp:
    """Start ``morgan up`` on free ports; stop it with Ctrl-C (SIGINT) as a person would."""

    def __init__(self, data_dir: Path, root: Path = ROOT, **env: str) -> None:
        """``root``: the source tree to run (another commit's checkout, for a before/after
        benchmark); its packages come first on the path, ahead of the installed ones."""
        self.http_port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "morgan", "up", "--nats-port", str(free_port())],
            cwd=root,
            env={
                **os.environ,
                "PYTHONPATH": str(root),
                "MORGAN_DATA_DIR": str(data_dir),
                "MORGAN_HTTP_PORT": str(self.http_port),
                **env,
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self.out: list[str] = []
        self.err: list[str] = []
        self._ready = threading.Event()
        for stream, sink in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._read, args=(stream, sink), daemon=True).start()

    def _read(self, stream: Any, sink: list[str]) -> None:
        for line in stream:
            text = line.decode(errors="replace")
            sink.append(text)
            if text.startswith("Morgan is ready"):
                self._ready.set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def wait_ready(self, timeout: float = 240.0) -> None:
        deadline = time.monotonic() + timeout
        while not self._ready.wait(0.2):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("morgan up did not get ready:\n" + self.log())

    def violations(self) -> list[str]:
        """Lines where the NATS server refused one of Morgan's roles a subject: each role's
        permissions (processors.permissions) must cover everything it does."""
        return [line for line in self.err if "permissions violation" in line.lower()]

    def log(self) -> str:
        return "".join(self.out) + "".join(self.err[-200:])

    def stop(self, timeout: float = 90.0) -> int:
        self.proc.send_signal(signal.SIGINT)
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        for pipe in (self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()
        return code


@dataclass
class Turn:
    events: list[dict[str, Any]] = field(default_factory=list)
    audio: bytearray = field(default_factory=bytearray)
    audio_rate: int = 22050
    last_chunks: int = 0
    first_audio_at: float = 0.0
    done: dict[str, Any] | None = None
    cancelled: bool = False

    @property
    def complete(self) -> bool:
        return self.done is not None and self.last_chunks >= self.done["sentences"]


async def connect_when_served(ws_url: str, patience_s: float = 60.0) -> ClientConnection:
    """Open a WebSocket as a well-behaved client does: a 503 (every VAD worker busy or
    dead for a moment, during chaos) is tried again after its Retry-After."""
    deadline = time.monotonic() + patience_s
    while True:
        try:
            return await connect(ws_url, max_size=None, open_timeout=30)
        except InvalidStatus as exc:
            if exc.response.status_code != 503 or time.monotonic() > deadline:
                raise
            await asyncio.sleep(float(exc.response.headers.get("Retry-After", "1")))


class VoiceClient:
    """A WebSocket client of docs/protocol.md, recording everything per turn."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.sid = ""
        self.events: list[dict[str, Any]] = []
        self.turns: dict[str, Turn] = defaultdict(Turn)
        self.changed = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    @classmethod
    async def open(cls, url: str) -> VoiceClient:
        ws = await connect_when_served(url.replace("http", "ws") + "/ws")
        client = cls(ws)
        await ws.send(json.dumps({"type": "session.start", "rate": 16000, "format": "s16le"}))
        ready = json.loads(await ws.recv())
        assert ready["type"] == "session.ready", ready
        client.sid = ready["session_id"]
        client._reader = asyncio.create_task(client._read())
        return client

    async def _read(self) -> None:
        header: dict[str, Any] | None = None
        async for frame in self.ws:
            if isinstance(frame, bytes):
                assert header is not None, "binary frame without an audio header"
                turn = self.turns[header["turn"]]
                if not turn.audio:
                    turn.first_audio_at = time.monotonic()
                turn.audio += frame
                turn.audio_rate = header["rate"]
                turn.last_chunks += 1 if header["last"] else 0
                header = None
            else:
                event = json.loads(frame)
                event["at"] = time.monotonic()
                if event["type"] == "audio":
                    header = event
                    continue
                self.events.append(event)
                if "turn" in event:
                    turn = self.turns[event["turn"]]
                    turn.events.append(event)
                    if event["type"] == "reply.done":
                        turn.done = event
                    if event["type"] == "reply.cancelled":
                        turn.cancelled = True
            self.changed.set()

    async def send_audio(self, pcm: bytes, realtime: float = 0.0) -> float:
        """Send frames; ``realtime`` > 0 paces them at that multiple of real time."""
        return await send_frames(self.ws, pcm, realtime)

    async def wait_for(self, cond: Any, timeout: float = 120.0) -> None:
        async with asyncio.timeout(timeout):
            while not cond():
                self.changed.clear()
                await self.changed.wait()

    def first(self, type_: str) -> dict[str, Any] | None:
        return next((e for e in self.events if e["type"] == type_), None)

    async def close(self) -> None:
        await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
