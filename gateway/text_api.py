"""POST /api/text: one typed turn, answered with the reply text and its audio as a WAV.

It listens to the session's events and reply audio (core subscriptions, made
before the turn is published, so nothing is missed), then waits for the
turn's ``reply.done`` and the last chunk of every sentence.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import uuid
import wave

from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from starlette.requests import Request
from starlette.responses import JSONResponse

from gateway.audio_order import AudioOrder
from gateway.errors import error_response
from gateway.http_body import BodyRefused, read_body
from gateway.key_ring import Caller
from gateway.protocol import ProtocolError, load_object, resume_fields, text_of
from gateway.state import Gateway, new_turn
from schemas import AudioChunk, ErrorEvent, Message, MessageError, ReplyCancelled, ReplyDone, decode

MAX_BODY_BYTES = 64 * 1024
DEFAULT_RATE = 22050
"""WAV rate of a reply with no audio at all (``sentences == 0``), Hertz."""


MAX_REPLY_AUDIO_BYTES = 32 * 1024 * 1024
"""Most reply audio one ``POST /api/text`` collects (about 12 minutes at 22 kHz): past it
the reply fails (502 ``reply_failed``) rather than growing the gateway without bound."""


class TurnReply:
    """Collects one turn's reply: its text, its audio in order, or why it failed."""

    def __init__(self, turn: str) -> None:
        self.turn = turn
        self.order: AudioOrder[AudioChunk] = AudioOrder()
        self.pcm = bytearray()
        self.rate = DEFAULT_RATE
        self.text = ""
        self.failure: str | None = None
        self.outcome = "abandoned"
        """How the turn ended (``gateway.metrics.TURN_OUTCOMES``); ``abandoned`` while it
        has not (the client left)."""
        self.first_audio_at: float | None = None
        """When the first chunk that can be played came (event-loop seconds)."""
        self.finished = asyncio.Event()

    def add(self, msg: Message) -> None:
        if getattr(msg, "turn", None) != self.turn:
            return
        if isinstance(msg, AudioChunk):
            for chunk in self.order.add(msg.turn, msg.seq, msg.chunk, msg.last, msg):
                if self.first_audio_at is None:
                    self.first_audio_at = asyncio.get_running_loop().time()
                if len(self.pcm) + len(chunk.pcm) > MAX_REPLY_AUDIO_BYTES:
                    self.failure, self.outcome = "reply_too_large: audio past the cap", "error"
                    break
                self.pcm += chunk.pcm
                self.rate = chunk.rate
        elif isinstance(msg, ReplyDone):
            self.text = msg.text
            self.order.done(msg.turn, msg.sentences)
        elif isinstance(msg, ReplyCancelled):
            self.failure, self.outcome = f"reply cancelled ({msg.reason})", "cancelled"
        elif isinstance(msg, ErrorEvent):
            self.failure, self.outcome = f"{msg.code}: {msg.message}", "error"
        if self.failure is None and self.order.complete(self.turn):
            self.outcome = "done"
        if self.failure is not None or self.order.complete(self.turn):
            self.finished.set()

    async def on_bus(self, raw: Msg) -> None:
        try:
            self.add(decode(raw.headers, raw.data))
        except MessageError:
            pass  # not ours to judge; the history and processors log bad messages

    def wav(self) -> bytes:
        out = io.BytesIO()
        with wave.open(out, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(self.rate)
            w.writeframes(bytes(self.pcm))
        return out.getvalue()


async def post_text(request: Request, gw: Gateway, caller: Caller) -> JSONResponse:
    """The turn of ``caller`` (admitted: its key checked, one request of its rate taken)."""
    try:  # http_body: refused at the limit while reading, 408 past the deadline
        raw = await read_body(request, MAX_BODY_BYTES, gw.settings.http_body_timeout_s)
    except BodyRefused as exc:
        return exc.response()
    received = asyncio.get_running_loop().time()
    try:
        body = load_object(raw, "the body")
        text = text_of(body)
        sid, token = resume_fields(body)
    except ProtocolError as exc:
        return error_response(422, exc.code, exc.message)
    user = caller.user
    try:
        if sid is None:  # a new session: its resume token goes back with the reply
            sid = uuid.uuid4().hex
            new_token: str | None = await gw.book.new_session(sid, user)
        else:
            await gw.book.check(sid, token, user)
            new_token = None
    except ProtocolError as exc:
        return error_response(404, exc.code, exc.message)
    except (NatsError, TimeoutError) as exc:
        return _unavailable(gw, exc)

    turn = new_turn()
    reply = TurnReply(turn)
    s = gw.subjects
    subs = []
    try:
        try:
            subs.append(await gw.nc.subscribe(s.events(sid), cb=reply.on_bus))
            subs.append(await gw.nc.subscribe(s.audio_out(sid), cb=reply.on_bus))
            await gw.typed_turn(caller.client, sid, text, turn, user=user, rated=False)
        except ProtocolError as exc:  # too many turns in flight
            retry = {"Retry-After": str(gw.settings.retry_after_s)}
            return error_response(429, exc.code, exc.message, headers=retry)
        except (NatsError, TimeoutError) as exc:
            return _unavailable(gw, exc)
        try:
            await asyncio.wait_for(reply.finished.wait(), gw.settings.text_timeout_s)
        except TimeoutError:
            reply.outcome = "timeout"
            return error_response(
                504, "timeout", f"no complete reply in {gw.settings.text_timeout_s} s"
            )
        finally:
            _measure(gw, reply, received)
    finally:
        for sub in subs:
            with contextlib.suppress(NatsError):  # the connection may be gone
                await sub.unsubscribe()
    if reply.failure is not None:
        return error_response(502, "reply_failed", reply.failure)
    audio = base64.b64encode(reply.wav()).decode()
    answer = {"session_id": sid, "turn": turn, "text": reply.text, "audio_base64": audio}
    if new_token is not None:
        answer["resume_token"] = new_token
    return JSONResponse(answer)


def _measure(gw: Gateway, reply: TurnReply, received: float) -> None:
    """The turn's outcome and, when audio came, its wait from the text's receipt."""
    gw.metrics.turns.labels(reply.outcome).inc()
    if reply.first_audio_at is not None:
        gw.metrics.first_audio.labels("rest").observe(max(0.0, reply.first_audio_at - received))


def _unavailable(gw: Gateway, exc: BaseException) -> JSONResponse:
    retry = {"Retry-After": str(gw.settings.retry_after_s)}
    return error_response(
        503, "unavailable", f"the message bus is unavailable: {exc!r}", headers=retry
    )
