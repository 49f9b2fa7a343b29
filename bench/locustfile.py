"""Locust users of a running Morgan: voice users on ``/ws``, text users on ``POST /api/text``.

    .venv/bin/locust -f bench/locustfile.py --headless -u 10 -r 2 -t 60s \\
        --host http://127.0.0.1:8080

(bench/load.py starts ``morgan up``, runs this against it and stops everything.) Name the
classes after the options to run only some: ``... --host ... VoiceUser``.

``VoiceUser`` opens a WebSocket, sends ``session.start``, streams a spoken question
(testbed.audio.speak; 300 ms of silence before it) as 20 ms PCM16 frames at real-time pace
and then silence, as an open microphone does, until the reply's audio is complete; then
``session.end``. Locust records these as requests of type ``WS``:

- ``open``: connect + ``session.start`` -> ``session.ready``;
- ``end of speech -> first audio``: the frame holding the last voiced sample sent -> the
  reply's first audio frame received;
- ``end of speech -> reply complete``: -> its last audio chunk (``reply.done``'s sentences).

``TextUser`` posts one question to ``/api/text`` and checks the reply (locust's own HTTP
stats: the call waits for the whole reply).

Environment: ``MORGAN_BENCH_KEYS``, comma-separated API keys handed to the users in turn
(each user a client of its own; none: no ``Authorization`` header);
``MORGAN_BENCH_TURN_TIMEOUT_S`` (default 60), how long a voice user waits for its reply.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import json
import os
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
from locust import HttpUser, User, between, task
from websockets.exceptions import InvalidStatus, WebSocketException
from websockets.sync.client import ClientConnection, connect

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from testbed.audio import QUESTIONS, silence, speak

FRAME_BYTES = 640  # 20 ms of 16 kHz s16le mono
FRAME_S = 0.020
START = json.dumps({"type": "session.start", "rate": 16000, "format": "s16le", "channels": 1})
KEYS = [k.strip() for k in os.environ.get("MORGAN_BENCH_KEYS", "").split(",") if k.strip()]
TURN_TIMEOUT_S = float(os.environ.get("MORGAN_BENCH_TURN_TIMEOUT_S", "60"))
_next_user = itertools.count()


def auth_headers() -> dict[str, str]:
    """The next user's ``Authorization`` header (the keys in turn), or none."""
    if not KEYS:
        return {}
    return {"Authorization": f"Bearer {KEYS[next(_next_user) % len(KEYS)]}"}


@functools.cache
def spoken(question: str) -> bytes:
    """The question as espeak-ng says it, up to its last sample louder than 500 (the end of
    speech), after 300 ms of silence, padded with silence to whole 20 ms frames."""
    pcm = speak(question)
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.int32)
    loud = np.flatnonzero(np.abs(samples) > 500)
    if loud.size:
        pcm = pcm[: 2 * (int(loud[-1]) + 1)]
    pcm = silence(300) + pcm
    return pcm.ljust(-(-len(pcm) // FRAME_BYTES) * FRAME_BYTES, b"\0")


class TurnFailed(Exception):
    pass


class Reply:
    """What the server sent about the one turn of a voice user's session."""

    def __init__(self) -> None:
        self.first_audio_at = 0.0
        self.last_audio_at = 0.0
        self.sentences: int | None = None
        self.last_chunks = 0
        self.error = ""
        self.over = threading.Event()

    def listen(self, ws: ClientConnection) -> None:
        """Read until the reply's audio is complete, it failed, or the socket closed."""
        header: dict[str, Any] | None = None
        try:
            for frame in ws:
                if isinstance(frame, bytes):
                    now = time.perf_counter()
                    self.first_audio_at = self.first_audio_at or now
                    if header is not None and header.get("last"):
                        self.last_chunks += 1
                        self.last_audio_at = now
                    header = None
                else:
                    event = json.loads(frame)
                    kind = event.get("type")
                    if kind == "audio":
                        header = event
                    elif kind == "reply.done":
                        self.sentences = int(event.get("sentences", 0))
                    elif kind in ("error", "reply.cancelled"):
                        self.error = event.get("code") or event.get("reason") or kind
                if self.error or (
                    self.sentences is not None and self.last_chunks >= self.sentences
                ):
                    break
            else:
                self.error = "closed before the reply was complete"
        except Exception as exc:  # the socket went: the turn is over, unanswered
            self.error = self.error or f"closed: {exc}"
        finally:
            self.over.set()


class VoiceUser(User):
    """Speaks one question per session into a real-time microphone and waits for the reply."""

    wait_time = between(1, 3)

    def on_start(self) -> None:
        for question in QUESTIONS:  # espeak runs before any clock does
            spoken(question)
        self.headers = auth_headers()
        ws_base = (self.host or "http://127.0.0.1:8080").replace("http", "ws", 1)
        self.ws_url = ws_base.rstrip("/") + "/ws"

    def fire(self, name: str, ms: float, exc: Exception | None = None) -> None:
        """One custom request in locust's stats (type ``WS``), ``ms`` its response time."""
        self.environment.events.request.fire(
            request_type="WS",
            name=name,
            response_time=ms,
            response_length=0,
            exception=exc,
            context={},
        )

    @task
    def ask(self) -> None:
        speech = spoken(random.choice(QUESTIONS))
        started = time.perf_counter()
        try:
            with connect(
                self.ws_url, additional_headers=self.headers, max_size=None, open_timeout=30
            ) as ws:
                ws.send(START)
                ready = json.loads(ws.recv(timeout=30))
                if ready.get("type") != "session.ready":
                    raise TurnFailed(f"not session.ready: {ready.get('type')}")
                self.fire("open", (time.perf_counter() - started) * 1000)
                self.turn(ws, speech)
                with contextlib.suppress(WebSocketException):
                    ws.send(json.dumps({"type": "session.end"}))
        except InvalidStatus as exc:
            failure = TurnFailed(f"HTTP {exc.response.status_code}")
            self.fire("open", (time.perf_counter() - started) * 1000, failure)
        except (OSError, TimeoutError, WebSocketException, TurnFailed) as exc:
            self.fire("open", (time.perf_counter() - started) * 1000, exc)

    def turn(self, ws: ClientConnection, speech: bytes) -> None:
        """Stream ``speech`` and then silence in real time until the reply is complete."""
        reply = Reply()
        threading.Thread(target=reply.listen, args=(ws,), daemon=True).start()
        frames = len(speech) // FRAME_BYTES
        start = end_of_speech = time.perf_counter()
        n = 0
        while not reply.over.is_set():
            time.sleep(max(0.0, start + n * FRAME_S - time.perf_counter()))
            if n >= frames and time.perf_counter() - end_of_speech > TURN_TIMEOUT_S:
                break
            try:
                ws.send(speech[n * FRAME_BYTES : (n + 1) * FRAME_BYTES] or bytes(FRAME_BYTES))
            except WebSocketException:
                break  # closed: the listener says why
            if n == frames - 1:
                end_of_speech = time.perf_counter()
            n += 1
        reply.over.wait(1.0)
        if reply.error:
            failure = TurnFailed(reply.error)
        elif not reply.over.is_set():
            failure = TurnFailed(f"no complete reply in {TURN_TIMEOUT_S:.0f} s")
        else:
            failure = TurnFailed("a reply without audio")
        for name, at in (
            ("end of speech -> first audio", reply.first_audio_at),
            ("end of speech -> reply complete", 0.0 if reply.error else reply.last_audio_at),
        ):
            if at:
                self.fire(name, (at - end_of_speech) * 1000)
            else:
                self.fire(name, (time.perf_counter() - end_of_speech) * 1000, failure)


class TextUser(HttpUser):
    """Types one question per request to ``POST /api/text``."""

    wait_time = between(1, 3)

    def on_start(self) -> None:
        self.headers = auth_headers()

    @task
    def ask(self) -> None:
        with self.client.post(
            "/api/text",
            json={"text": random.choice(QUESTIONS)},
            headers=self.headers,
            name="/api/text",
            timeout=90,
            catch_response=True,
        ) as response:
            if response.status_code != 200:
                try:
                    code = response.json().get("error", "")
                except ValueError:
                    code = ""
                response.failure(f"HTTP {response.status_code} {code}".strip())
            elif not response.json().get("text"):
                response.failure("empty reply text")
            else:
                response.success()
