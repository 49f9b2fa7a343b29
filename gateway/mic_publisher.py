"""A session's microphone onto the bus: every accepted frame published, in order, once.

The WebSocket loop only queues a client's frame (``put``), so it never waits on
JetStream. One task per session publishes what is queued, oldest first, as one
``AudioFrame`` per publish: whatever is queued at that moment (up to
``MAX_FRAME_BYTES``) goes out together. A slow link (each publish waits one round
trip) or a short outage (each publish is retried, with the same message id, until
JetStream stores it) therefore neither drops nor reorders audio; the queue drains
in bigger frames afterwards. Frames are numbered as they are published, so the
numbers and sample offsets on ``audio.in.<sid>`` are contiguous whatever happened.

Only past ``limit_s`` of waiting audio (the bus has been away that long) is a
new frame refused, with ``audio_backlog``; nothing already queued is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

from nats.errors import Error as NatsError
from nats.js import JetStreamContext

from gateway.protocol import INPUT_RATE, ProtocolError
from schemas import AudioFrame
from streams import bus

log = logging.getLogger("morgan.gateway.mic")
BYTES_PER_S = INPUT_RATE * 2
"""Microphone PCM is s16le mono at INPUT_RATE."""
MAX_FRAME_BYTES = BYTES_PER_S
"""At most this much PCM (1 s) per published frame."""
RETRY_S = (0.05, 2.0)
"""First and longest pause between attempts to publish one frame, seconds."""


class MicPublisher:
    def __init__(
        self,
        js: JetStreamContext,
        subject: str,
        sid: str,
        *,
        seq: int = 0,
        offset: int = 0,
        limit_s: float,
    ) -> None:
        self.js, self.subject, self.sid = js, subject, sid
        self.seq, self.offset = seq, offset
        """The last published frame's number, and the samples published so far."""
        self.limit_bytes = int(limit_s * BYTES_PER_S)
        self.queue: deque[bytes] = deque()
        self.queued_bytes = 0
        self.wake = asyncio.Event()
        self.idle = asyncio.Event()
        self.idle.set()
        self.task = asyncio.create_task(self._run())

    def put(self, pcm: bytes) -> None:
        """Accept a frame for publishing, or refuse it when too much already waits."""
        if self.queued_bytes + len(pcm) > self.limit_bytes:
            waiting_s = self.queued_bytes / BYTES_PER_S
            raise ProtocolError(
                "audio_backlog",
                f"{waiting_s:.0f} s of audio already wait for the bus; frame refused",
            )
        self.queue.append(pcm)
        self.queued_bytes += len(pcm)
        self.idle.clear()
        self.wake.set()

    async def flushed(self, timeout: float) -> bool:
        """Wait until everything accepted is published; False if that took too long."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.idle.wait(), timeout)
        return self.idle.is_set()

    async def close(self, timeout: float) -> None:
        """Publish what is queued (for up to ``timeout`` seconds), then stop."""
        if not await self.flushed(timeout):
            log.error(
                "session %s: %d bytes of audio never reached the bus", self.sid, self.queued_bytes
            )
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    async def _run(self) -> None:
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.queue:
                pcm = self._take()
                await self._publish(AudioFrame(self.sid, self.seq + 1, self.offset, pcm))
                self.seq += 1
                self.offset += len(pcm) // 2
                self.queued_bytes -= len(pcm)
            self.idle.set()

    def _take(self) -> bytes:
        parts = [self.queue.popleft()]
        size = len(parts[0])
        while self.queue and size + len(self.queue[0]) <= MAX_FRAME_BYTES:
            parts.append(self.queue.popleft())
            size += len(parts[-1])
        return b"".join(parts)

    async def _publish(self, frame: AudioFrame) -> None:
        pause, failures = RETRY_S[0], 0
        while True:
            try:
                await bus.publish(self.js, self.subject, frame, msg_id=f"{self.sid}.f{frame.seq}")
            except (NatsError, TimeoutError) as exc:
                failures += 1
                if failures == 1:
                    log.warning("session %s: audio waits for the bus: %s", self.sid, exc)
                await asyncio.sleep(pause)
                pause = min(pause * 2, RETRY_S[1])
                continue
            if failures:
                log.info("session %s: audio flowing again after %d retries", self.sid, failures)
            return
