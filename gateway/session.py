"""One WebSocket voice session (docs/protocol.md is the client's view).

Client -> bus: ``session.start`` claims the session for a VAD worker; binary
frames are queued for ``MicPublisher``, which publishes them to ``audio.in.<sid>``
in order (numbered from 1, contiguous) without holding up this loop; typed text
becomes a turn; ``cancel`` and ``session.end`` go out on the control subject
(``session.end`` after the queued audio).

Bus -> client: two ordered consumers, one on the session's events, one on its
reply audio. Events go out as they come (with their stream id); audio goes
through ``AudioOrder`` so each turn plays in (seq, chunk) order. A cancelled
turn (client, VAD barge-in on control, or the LLM's event) loses its audio and
the client hears ``reply.cancelled`` with ``flush`` once.

Resume: only with the session's resume token, by the API key that opened it
(``SessionBook``). The events consumer replays the session from the start, sending
only ids past ``last_event`` (older ones just rebuild state: cancelled turns,
reply.done); audio waits for that, then replays from the start and skips what
``AlreadySent`` says the client has. Cursors past the session's end count as its
end.

Everything for the client goes through one ``Outbox`` and one writer task, so an
audio header is always next to its bytes and the bus callbacks never wait on the
client's socket.

Careless clients: a socket that sends no ``session.start`` in ``start_timeout_s``
is closed (1008); audio after a long silence claims the session again, since its
VAD worker lets a session go after ``session_idle_s`` without audio.

A client that reads too slowly cannot grow the gateway's memory. What a session holds
for its client is bounded: the outbox (``OUTBOX_BYTES``, 8 MiB, over 3 minutes of
22 kHz audio), audio waiting behind a missing sentence (``AudioOrder``: 8 MiB, then the
gap is skipped; released at once, it may take the outbox past its bound by that much),
uvicorn's write buffer (64 KiB plus the message being written), and the NATS client's
queue of the two ordered consumers, which stays short because their callbacks never
wait for the client. The session is closed with 4008 ``slow_consumer``
(docs/protocol.md) when the outbox is full (nothing more is queued; what is queued
still goes out, for at most ``SEND_TIMEOUT_S``, then the close) or when one message
has waited ``SEND_TIMEOUT_S`` (10 s) for the socket (the client reads nothing: what
is queued is dropped, and the close goes at once). The close frame goes behind what
the client has not read yet, and a client that does not answer it within 10 s is cut
off (gateway/ws_protocol.py). The session itself lives on: the client resumes it and
gets what it missed from the streams.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import deque
from typing import Any

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.js.api import ConsumerConfig, DeliverPolicy
from starlette.websockets import WebSocket, WebSocketDisconnect

from gateway import protocol
from gateway.audio_order import AlreadySent, AudioOrder
from gateway.mic_publisher import MicPublisher
from gateway.overload import claim_subject
from gateway.protocol import INPUT_FORMAT, INPUT_RATE, ProtocolError
from gateway.resume import resume_point
from gateway.state import Gateway
from gateway.turn_metrics import TurnMetrics
from schemas import (
    AudioChunk,
    Cancel,
    ErrorEvent,
    MessageError,
    ReplyCancelled,
    ReplyDelta,
    ReplyDone,
    SessionClaim,
    SessionEnd,
    SpeechStopped,
    Transcript,
    decode,
)
from schemas.codec import USER_HEADER, foreign
from streams import bus, tracing
from streams.definitions import AUDIO, EVENTS

log = logging.getLogger("morgan.gateway.session")
OUTPUT_RATE = 22050
"""Reply audio rate the page expects (Piper medium voices); each chunk states its own."""
REPLAY_HEARTBEAT_S = 1.0
"""Idle heartbeat of the session's ordered consumers: one lost with its NATS node (they
are R1, in memory) is rebuilt after two missed beats (nats.py's default 5 s took the
session's events 15-20 s to come back after a node restart)."""
EVENTS_CATCH_UP_S = 5.0
"""On resume, audio waits at most this long for the event replay, seconds."""
SEND_TIMEOUT_S = 10.0
"""A client whose socket took this long to take one message is not reading: the session
is closed with ``SLOW_CONSUMER``, seconds."""
OUTBOX_BYTES = 8 * 1024 * 1024
"""What may wait for one client's socket (messages, reply audio), bytes; one more and the
session is closed with ``SLOW_CONSUMER``."""
MESSAGE_OVERHEAD = 128
"""Bytes counted for each queued message on top of its text and audio (its objects)."""
POLICY_VIOLATION = 1008
SLOW_CONSUMER = 4008
"""Close code (reason ``slow_consumer``) for a client that does not read what it is sent."""


class Outbox:
    """What waits to be written to one client, oldest first, at most ``limit`` bytes.

    A message is JSON text, or an audio header with its PCM. ``put`` refuses a message
    that would pass the limit (a single message larger than the limit still goes, alone),
    unless ``force``: the rest of a turn's audio that one chunk released at once (after a
    missing sentence came, at most ``AudioOrder``'s limit) goes in whole.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.items: deque[tuple[str, bytes | None]] = deque()
        self.size = 0
        self.ready = asyncio.Event()
        self.ended = False

    @staticmethod
    def cost(text: str, pcm: bytes | None) -> int:
        return len(text) + (len(pcm) if pcm is not None else 0) + MESSAGE_OVERHEAD

    def put(self, text: str, pcm: bytes | None = None, *, force: bool = False) -> bool:
        """Queue a message; False, and nothing queued, when it does not fit."""
        cost = self.cost(text, pcm)
        if self.items and self.size + cost > self.limit and not force:
            return False
        self.items.append((text, pcm))
        self.size += cost
        self.ready.set()
        return True

    def end(self) -> None:
        """``get`` answers None once what is queued has been taken."""
        self.ended = True
        self.ready.set()

    async def get(self) -> tuple[str, bytes | None] | None:
        while not self.items:
            if self.ended:
                return None
            self.ready.clear()
            await self.ready.wait()
        text, pcm = self.items.popleft()
        self.size -= self.cost(text, pcm)
        return text, pcm

    def clear(self) -> None:
        self.items.clear()
        self.size = 0


class Session:
    def __init__(self, gw: Gateway, ws: WebSocket, client: str, principal: str) -> None:
        self.gw = gw
        self.ws = ws
        self.client = client
        """Whose share of turns this session uses (``Quota``)."""
        self.principal = principal
        """The API key (hashed) the session is bound to (``SessionBook``)."""
        self.sid: str | None = None
        self.audio_at = 0.0
        """When the last microphone frame came (event-loop seconds)."""
        self.mic: MicPublisher | None = None
        self.last_event = 0
        self.current_turn: str | None = None
        self.order: AudioOrder[tuple[int, AudioChunk]] = AudioOrder()
        self.sent_before: AlreadySent | None = None
        self.events_tail = 0
        self.events_ready = asyncio.Event()
        self.subs: list[Subscription] = []
        self.send_lock = asyncio.Lock()
        """Held while a session starts: what the bus sends waits for session.ready."""
        self.outbox = Outbox(OUTBOX_BYTES)
        self.writer: asyncio.Task[None] | None = None
        self.closing: asyncio.Task[None] | None = None
        """Closes the session after the outbox overflowed (``_overflowed``)."""
        self.open = True
        """False once the session stops sending to the client (closed, gone, too slow)."""
        self.closed = False
        """The socket's close has been sent."""
        self.turns = TurnMetrics(gw.metrics)

    async def run(self) -> None:
        """Serve the client until it disconnects or ends the session."""
        self.gw.metrics.active_sessions.inc()
        loop = asyncio.get_running_loop()
        start_by = loop.time() + self.gw.settings.start_timeout_s
        writer = self.writer = asyncio.create_task(self._drain())
        try:
            while self.open:
                try:
                    wait = None if self.sid is not None else start_by - loop.time()
                    async with asyncio.timeout(wait):
                        message = await self.ws.receive()
                except TimeoutError:
                    await self.close(POLICY_VIOLATION, "no session.start in time")
                    break
                if message["type"] == "websocket.disconnect":
                    break
                try:
                    if message.get("bytes") is not None:
                        await self.on_frame(message["bytes"])
                    elif message.get("text") is not None:
                        await self.on_text(message["text"])
                except ProtocolError as exc:
                    self.gw.metrics.rejections.labels(exc.code).inc()
                    await self.send(exc.to_client())
                except (NatsError, TimeoutError) as exc:
                    log.warning("session %s: bus unavailable: %s", self.sid, exc)
                    await self.send(protocol.unavailable(exc))
        finally:
            self.open = False
            if self.closing is not None:
                await asyncio.wait({self.closing})
            self.outbox.clear()
            self.outbox.end()  # the writer stops at its next message, or now if it waits
            writer.cancel()
            await asyncio.wait({writer})
            if self.mic is not None:  # accepted audio still goes out after a disconnect
                await self.mic.close(self.gw.settings.audio_backlog_s)
            for sub in self.subs:
                try:
                    await sub.unsubscribe()
                except Exception as exc:  # the connection may be gone already
                    log.debug("unsubscribe: %s", exc)
            self.gw.metrics.active_sessions.dec()
            if self.sid is not None:
                self.turns.close()

    async def on_text(self, raw: str) -> None:
        msg = protocol.parse(raw)
        if isinstance(msg, protocol.Start):
            await self.start(msg)
        elif isinstance(msg, protocol.End):
            await self.end()
        elif self.sid is None:
            raise ProtocolError("no_session", "send session.start first")
        elif isinstance(msg, protocol.Text):
            received = asyncio.get_running_loop().time()
            self.current_turn = await self.gw.typed_turn(
                self.client, self.sid, msg.text, user=self.principal
            )
            self.turns.typed(self.current_turn, received)
        else:
            await self.client_cancel(self.sid)

    async def start(self, msg: protocol.Start) -> None:
        if self.sid is not None:
            raise ProtocolError("already_started", f"session {self.sid} is already started")
        resumed = msg.session_id is not None
        if msg.session_id is not None:
            sid, token = msg.session_id, None
            await self.gw.book.check(sid, msg.resume_token, self.principal)
        else:
            sid = uuid.uuid4().hex
            token = await self.gw.book.new_session(sid, self.principal)
        s, js = self.gw.subjects, self.gw.js
        async with self.send_lock:  # replayed events wait until session.ready is out
            self.sid = sid
            try:
                frame_seq = offset = 0
                silent_s = 0.0
                if resumed:
                    frame_seq, offset, silent_s = await self._prepare_resume(sid, msg)
                else:
                    self.events_ready.set()
                self.subs.append(await self.gw.nc.subscribe(s.control(sid), cb=self.on_control))
                self.subs.append(await self._replay(EVENTS, s.events(sid), self.on_event))
                self.subs.append(await self._replay(AUDIO, s.audio_out(sid), self.on_audio))
                await self._claim(sid)
                backlog_s = self.gw.settings.audio_backlog_s
                self.mic = MicPublisher(
                    js, s.audio_in(sid), sid, seq=frame_seq, offset=offset, limit_s=backlog_s
                )
                self.audio_at = asyncio.get_running_loop().time() - silent_s
                self.turns.input_end = offset
            except BaseException:
                self.sid = None
                for sub in self.subs:
                    with contextlib.suppress(Exception):
                        await sub.unsubscribe()
                self.subs.clear()
                raise
            self._queue(protocol.ready(sid, token, OUTPUT_RATE))

    async def _prepare_resume(self, sid: str, msg: protocol.Start) -> tuple[int, int, float]:
        """Replay cursors for the client; the last microphone frame's number, the offset
        after it, and how long ago it came."""
        point = await resume_point(self.gw.js, self.gw.subjects, sid, msg.last_audio)
        self.last_event = min(msg.last_event, point.events_tail)  # past the end = at the end
        self.events_tail, self.sent_before = point.events_tail, point.sent_before
        if self.events_tail == 0:
            self.events_ready.set()
        return point.frame_seq, point.offset, point.silent_s

    async def _replay(self, stream: str, subject: str, cb: Any) -> Subscription:
        """An ordered consumer over the session's subject, from the stream's start."""
        config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL)
        sub: Subscription = await self.gw.js.subscribe(
            subject,
            stream=stream,
            cb=cb,
            ordered_consumer=True,
            config=config,
            idle_heartbeat=REPLAY_HEARTBEAT_S,
        )
        return sub

    async def on_frame(self, data: bytes) -> None:
        if self.sid is None or self.mic is None:
            raise ProtocolError("no_session", "send session.start before audio")
        protocol.check_frame(data, self.gw.settings.max_frame_bytes)
        self.mic.put(data)
        self.gw.metrics.frames_in.inc()
        now = asyncio.get_running_loop().time()
        self.turns.heard(len(data) // 2, now)
        if now - self.audio_at > self.gw.settings.session_idle_s / 2:
            # After a long silence the VAD may have let the session go (idle): claim it
            # again. A worker that still holds it hands it over.
            try:
                await self._claim(self.sid, again=True)
            except (NatsError, TimeoutError) as exc:  # the frame is queued: the next retries
                log.warning("session %s: claim after silence failed: %s", self.sid, exc)
                return
        self.audio_at = now

    async def _claim(self, sid: str, *, again: bool = False) -> None:
        """Ask one VAD worker to own the session; ``again`` is not deduplicated against
        the first claim (Nats-Msg-Id ``claim.<sid>.<unix ms>``)."""
        claim = SessionClaim(sid, INPUT_RATE, INPUT_FORMAT, int(time.time() * 1000))
        msg_id = f"claim.{sid}.{claim.started_ms}" if again else f"claim.{sid}"
        subject = claim_subject(self.gw.settings)
        user = {USER_HEADER: self.principal}  # carried onto every message of its turns
        await bus.publish(self.gw.js, subject, claim, msg_id=msg_id, headers=user)

    async def client_cancel(self, sid: str) -> None:
        turn = self.current_turn
        if turn is None or self.order.is_cancelled(turn):
            return  # nothing playing: cancelling is idempotent
        await bus.publish_core(
            self.gw.nc, self.gw.subjects.control(sid), Cancel(sid, turn, "client")
        )
        await self.cancel_turn(turn, "client")

    async def end(self) -> None:
        if self.mic is not None:  # the VAD stops at session.end: let it have every frame
            await self.mic.flushed(self.gw.settings.audio_backlog_s)
        if self.sid is not None:
            await bus.publish_core(
                self.gw.nc, self.gw.subjects.control(self.sid), SessionEnd(self.sid)
            )
        await self.close(1000, "session ended")

    async def close(self, code: int, reason: str) -> None:
        """Close the socket with ``code`` once what is queued has gone out; what the client
        has not taken after ``SEND_TIMEOUT_S`` is dropped."""
        self.open = False
        self.outbox.end()  # the writer stops after what is queued
        writer = self.writer
        if writer is not None and not writer.done():
            done, _ = await asyncio.wait({writer}, timeout=SEND_TIMEOUT_S)
            if not done:
                writer.cancel()
                log.info("session %s: closing before the client took what was sent", self.sid)
        await self._close_socket(code, reason)

    async def _close_socket(self, code: int, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(RuntimeError, WebSocketDisconnect, OSError, TimeoutError):
            async with asyncio.timeout(SEND_TIMEOUT_S):  # (it went first, or reads nothing)
                await self.ws.close(code, reason)

    def _overflowed(self) -> None:
        """The client takes less than its session sends: queue nothing more, and close with
        4008 after what is queued (in a task: the bus callbacks never wait)."""
        log.info(
            "session %s: the client reads nothing in time (%d bytes wait); closing it (4008)",
            self.sid,
            self.outbox.size,
        )
        self.gw.metrics.rejections.labels("slow_consumer").inc()
        self.open = False
        self.outbox.end()
        self.closing = asyncio.create_task(self.close(SLOW_CONSUMER, "slow_consumer"))

    async def _stalled(self) -> None:
        """The client has not taken one message in ``SEND_TIMEOUT_S``: it reads nothing.
        Drop what waits and close with 4008 at once."""
        if self.closed:
            return
        log.info(
            "session %s: the client reads nothing (a message waited %g s); closing it (4008)",
            self.sid,
            SEND_TIMEOUT_S,
        )
        self.gw.metrics.rejections.labels("slow_consumer").inc()
        self.open = False
        self.outbox.clear()
        await self._close_socket(SLOW_CONSUMER, "slow_consumer")

    async def cancel_turn(self, turn: str, reason: str) -> None:
        """Drop the turn's audio and tell the client once; record it on EVENTS for resume."""
        if self.sid is None or not self.order.cancel(turn):
            return
        self.turns.ended(turn, "cancelled")
        await self.send(
            {"type": ReplyCancelled.TYPE, "turn": turn, "reason": reason, "flush": True}
        )
        event = ReplyCancelled(self.sid, turn, reason)
        subject = self.gw.subjects.events(self.sid, event.TYPE)
        await bus.publish(self.gw.js, subject, event, msg_id=f"{self.sid}.{turn}.cancelled")

    # --- bus -> client (each subscription's callbacks run one at a time) ---

    async def on_control(self, raw: Msg) -> None:
        try:
            msg = decode(raw.headers, raw.data)
            if isinstance(msg, Cancel) and msg.sid == self.sid:
                await self.cancel_turn(msg.turn, msg.reason)
        except MessageError as exc:
            log.debug("session %s: ignoring control message: %s", self.sid, exc)
        except Exception:
            log.exception("session %s: control message", self.sid)

    async def on_event(self, raw: Msg) -> None:
        event_id = raw.metadata.sequence.stream
        try:
            await self._event(event_id, raw)
        except Exception:
            log.exception("session %s: event %s", self.sid, event_id)
        finally:
            if event_id >= self.events_tail:
                self.events_ready.set()

    async def _foreign_event(self, event_id: int, raw: Msg, error: MessageError) -> None:
        """An event of a type only its publisher knows (a kind from another package): the
        client gets its JSON fields as they are; anything else was not an event."""
        fields = foreign(raw.headers, raw.data)
        if fields is None:
            log.warning("session %s: bad event %s: %s", self.sid, event_id, error)
        elif event_id > self.last_event:
            fields.pop("sid", None)
            await self.send({**fields, "id": event_id})

    async def _event(self, event_id: int, raw: Msg) -> None:
        try:
            event = decode(raw.headers, raw.data)
        except MessageError as exc:
            await self._foreign_event(event_id, raw, exc)
            return
        fresh = event_id > self.last_event  # older ones only rebuild state on resume
        turn = str(getattr(event, "turn", ""))
        if isinstance(event, ReplyCancelled):
            if self.order.cancel(turn) and fresh:
                self.turns.ended(turn, "cancelled")
                await self.send({**event.to_client(), "id": event_id, "flush": True})
            return
        if isinstance(event, ReplyDone):
            self.order.done(turn, event.sentences)
            self._ended_if_complete(turn)
        if fresh:
            self._measure(event)
        if isinstance(event, Transcript | ReplyDelta | ReplyDone):
            self.current_turn = turn
        if fresh:
            silent = isinstance(event, ReplyDone) and event.sentences == 0
            with self._reply_span(raw if silent else None, turn):  # a reply without audio
                await self.send({**event.to_client(), "id": event_id})
            self.gw.metrics.events_out.inc()

    async def on_audio(self, raw: Msg) -> None:
        if not self.events_ready.is_set():  # cancelled turns are known before audio replays
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.events_ready.wait(), EVENTS_CATCH_UP_S)
        stream_id = raw.metadata.sequence.stream
        try:
            chunk = decode(raw.headers, raw.data)
            if not isinstance(chunk, AudioChunk):
                return
            key, size = (chunk.seq, chunk.chunk, chunk.last), len(chunk.pcm)
            if self.sent_before is not None:
                self.sent_before.note(chunk.turn, *key, stream_id, size)
            released = self.order.add(chunk.turn, *key, (stream_id, chunk), size)
            for n, (ready_id, ready) in enumerate(released):
                if self.sent_before is None or not self.sent_before.has(ready_id):
                    # Released first, so it is this message: its trace is the turn's.
                    first = ready_id == stream_id and chunk.seq == chunk.chunk == 0
                    with self._reply_span(raw if first else None, ready.turn):
                        await self.send_audio(ready_id, ready, force=n > 0)
            for turn in {chunk.turn, *(ready.turn for _, ready in released)}:
                self._ended_if_complete(turn)  # (another turn's, when it skipped a gap)
        except Exception:
            log.exception("session %s: audio %s", self.sid, stream_id)

    async def send_audio(self, stream_id: int, chunk: AudioChunk, *, force: bool = False) -> None:
        async with self.send_lock:
            header = protocol.audio_header(stream_id, chunk)
            if not self._queue(header, chunk.pcm, force=force):
                return
        self.gw.metrics.audio_chunks_out.inc()
        self.turns.audio_sent(chunk.turn, asyncio.get_running_loop().time())

    def _reply_span(self, raw: Msg | None, turn: str) -> contextlib.AbstractContextManager[Any]:
        """``gateway.reply`` around sending a turn's first reply (streams/tracing.py), as a
        child of the trace ``raw`` carries; nothing for None."""
        if raw is None:
            return contextlib.nullcontext()
        attrs = {"morgan.session": self.sid or "", "morgan.turn": turn}
        return tracing.continued("gateway.reply", raw.headers, **attrs)

    def _measure(self, event: object) -> None:
        """What a fresh event tells the turn metrics (gateway/turn_metrics.py)."""
        if isinstance(event, SpeechStopped):
            now = asyncio.get_running_loop().time()
            self.turns.speech_stopped(event.turn, event.at_ms, now)
        elif isinstance(event, Transcript):
            self.turns.started(event.turn)
        elif isinstance(event, ErrorEvent) and event.turn:
            self.turns.ended(event.turn, "error")

    def _ended_if_complete(self, turn: str) -> None:
        """All of the turn's reply audio has gone out (or it has none): it is done."""
        if self.order.complete(turn):
            self.turns.ended(turn, "done")

    async def send(self, obj: dict[str, Any]) -> None:
        async with self.send_lock:
            self._queue(obj)

    def _queue(self, obj: dict[str, Any], pcm: bytes | None = None, *, force: bool = False) -> bool:
        """Hand a message to the writer; False when the session sends no more (closed,
        or the client too slow for it: then this closes it). ``force``: ``Outbox.put``."""
        if not self.open:
            return False
        if self.outbox.put(json.dumps(obj, separators=(",", ":")), pcm, force=force):
            return True
        self._overflowed()
        return False

    async def _drain(self) -> None:
        """The session's one writer: the outbox to the socket, oldest first."""
        while (item := await self.outbox.get()) is not None:
            try:
                async with asyncio.timeout(SEND_TIMEOUT_S):  # not wait_for: on 3.11 it can
                    await self._send(*item)  # swallow a cancel that comes as the send ends
            except TimeoutError:
                if not self.outbox.ended:  # else it is closing anyway, with its own code
                    await self._stalled()
                return
            except (WebSocketDisconnect, RuntimeError, OSError) as exc:  # the client left
                log.debug("session %s: send failed: %r", self.sid, exc)
                self.open = False
                return

    async def _send(self, text: str, pcm: bytes | None) -> None:
        await self.ws.send_text(text)
        if pcm is not None:
            await self.ws.send_bytes(pcm)
