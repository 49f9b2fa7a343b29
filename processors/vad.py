"""VAD: cuts a session's microphone into utterances for speech-to-text, and barges in.

A session-claim kind (``processors.claims`` owns the session, its consumer and its
takeover): the runtime hands it the frames of each session it owns. It emits
vad.speech_started / vad.speech_stopped, forwards each ``Utterance`` (to STT by the
route table) as the root of the turn's trace, and on speech during a reply publishes
``Cancel`` for the previous turn (barge-in). It acknowledges frames only up to audio
no utterance can need again, and after each utterance saves in the session's owner
record where the utterance ended and the frame the next turn is named after: a worker
that takes the session over skips audio already cut and names the turn in progress the
same way, so JetStream's dedup drops a second copy.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
from nats.aio.msg import Msg

from processors import end_of_turn, models, silero
from processors.claims import Owner
from processors.context import Context
from processors.segmenter import Ended, Paused, Resumed, Segmenter, SegmenterConfig, Started
from processors.spec import SessionClaims, Spec
from schemas import (
    Abandon,
    AudioFrame,
    BadInput,
    Cancel,
    MessageError,
    Release,
    SessionClaim,
    SpeechStarted,
    SpeechStopped,
    Utterance,
    decode,
)
from streams import tracing
from streams.settings import Settings

log = logging.getLogger("morgan.vad")


async def load(settings: Settings, tiers: tuple[str, ...]) -> Any:
    if settings.vad_turn_model:  # loaded now, so the first pause does not wait for it
        await asyncio.to_thread(turn_model)
    return await asyncio.to_thread(silero.load_session)


@functools.cache
def turn_model() -> end_of_turn.TurnModel | None:
    """The process's end-of-turn model; None (silence only, said once) where the
    ``pipecat-ai`` wheel that ships it is not installed."""
    try:
        return end_of_turn.shared_model()
    except models.ModelNotFound as exc:
        log.warning("vad: end of turn by silence only: %s", exc)
        return None


@dataclass
class _Frame:
    seq: int
    start: int
    end: int
    pcm: bytes
    raw: Msg


def config_of(settings: Settings) -> SegmenterConfig:
    by_model = settings.vad_turn_model and turn_model() is not None
    return SegmenterConfig(
        threshold=settings.vad_threshold,
        silence_ms=settings.vad_turn_max_silence_ms if by_model else settings.vad_silence_ms,
        min_speech_ms=settings.vad_min_speech_ms,
        preroll_ms=settings.vad_preroll_ms,
        max_utterance_s=settings.vad_max_utterance_s,
        speculate_ms=settings.vad_speculate_ms,
    )


@dataclass(frozen=True)
class Speculation:
    """An utterance forwarded at a pause, not yet the end of its turn."""

    attempt: str
    speech_end: int


class VadSession:
    """One owned session's segmentation: the runtime's reader of its frames."""

    def __init__(self, claim: SessionClaim, ctx: Context, owner: Owner) -> None:
        self.sid = claim.sid
        self.ctx = ctx
        self.owner = owner
        self.model = silero.SileroStream(ctx.state)
        self.seg: Segmenter | None = None
        self.frames: deque[_Frame] = deque()
        self.turn = ""
        self.last_turn = ""
        self.speculation: Speculation | None = None
        self.turn_end: end_of_turn.EndOfTurn | None = None
        """The end-of-turn model's policy for this session (``vad_turn_model``)."""
        self.hold = owner.took_over
        """After a takeover, keep every frame until the first utterance is out."""
        self.done_until = int(owner.record.get("end", 0))
        """Session sample offset up to which utterances were already published."""
        self.heard_until = 0
        """Session sample offset up to which frames were fed to the segmenter. Frames
        held unacknowledged (pre-roll, an open utterance) come back after the consumer's
        ack wait: audio already in ``frames``, neither heard twice nor news of the client."""
        self.next_turn = int(owner.record.get("next", 1))
        """A turn is named after the first frame after the previous utterance (or frame 1),
        which does not depend on ack timing, so a new owner names it the same."""

    async def feed(self, msgs: list[Msg]) -> bool:
        """Feed the frames not heard before to the segmenter; whether there were any."""
        new: list[_Frame] = []
        for raw in msgs:
            try:
                frame = decode(raw.headers, raw.data)
            except MessageError:
                frame = None
            if not isinstance(frame, AudioFrame) or len(frame.pcm) % 2:
                await raw.term()  # not audio: never part of an utterance
                continue
            n = len(frame.pcm) // 2
            if frame.offset + n <= self.done_until:  # already cut and sent by the last owner
                await raw.ack()
                continue
            if frame.offset + n <= self.heard_until:  # a redelivery of a frame we hold
                continue
            # A frame across that point (the gateway joins frames that queued while the bus
            # was slow, up to 1 s) keeps only its new part: the rest was heard already.
            cut = max(0, self.done_until - frame.offset)
            start, pcm = frame.offset + cut, frame.pcm[cut * 2 :]
            if self.seg is None:
                self.seg = Segmenter(config_of(self.ctx.settings), position=start)
            new.append(_Frame(frame.seq, start, frame.offset + n, pcm, raw))
            self.heard_until = frame.offset + n
        if not new or self.seg is None:
            return False
        settings = self.ctx.current_settings()
        self.seg.config = config_of(settings)  # live config applies at once
        self.turn_end = self._turn_end(settings)
        self.frames.extend(new)
        samples = np.frombuffer(b"".join(f.pcm for f in new), dtype="<i2")
        windows = self.seg.windows(samples.astype(np.float32) / 32768.0)
        probs = await asyncio.to_thread(lambda: [self.model.probability(w) for _, w in windows])
        for (offset, _), p in zip(windows, probs, strict=True):
            event = self.seg.step(offset, p) or await self._judge_pause()
            if isinstance(event, Started):
                await self._started(event)
            elif isinstance(event, Paused):
                await self._paused(event)
            elif isinstance(event, Resumed):
                await self._abandon()
            elif isinstance(event, Ended):
                await self._ended(event)
        if self.seg.idle and not self.hold:
            await self._ack(self.seg.safe_ack)
        return True

    def _turn_end(self, settings: Settings) -> end_of_turn.EndOfTurn | None:
        model = turn_model() if settings.vad_turn_model else None
        if model is None:
            return None
        policy = self.turn_end
        if policy is None or (policy.ask_after_ms, policy.max_silence_ms, policy.threshold) != (
            settings.vad_turn_ask_ms,
            settings.vad_turn_max_silence_ms,
            settings.vad_turn_threshold,
        ):
            policy = end_of_turn.EndOfTurn(
                model.probability,
                ask_after_ms=settings.vad_turn_ask_ms,
                max_silence_ms=settings.vad_turn_max_silence_ms,
                threshold=settings.vad_turn_threshold,
            )
        return policy

    async def _judge_pause(self) -> Ended | None:
        """With the end-of-turn model on: in a pause, end the turn if it sounds finished."""
        if self.turn_end is None or self.seg is None or not self.seg.pause_ms:
            return None
        policy, upto, pause_ms = self.turn_end, self.seg.stepped, self.seg.pause_ms

        def heard() -> bytes:
            """The audio up to the window judged (a batch of frames may reach past it);
            the model hears its last 8 s."""
            kept = [f for f in self.frames if f.start < upto]
            if not kept:
                return b""
            return b"".join(f.pcm for f in kept)[: (upto - kept[0].start) * 2]

        if policy.asks(pause_ms):
            decision = await asyncio.to_thread(policy.decide, heard, pause_ms)
        else:
            decision = policy.decide(heard, pause_ms)
        return self.seg.end_now() if decision.end else None

    async def _started(self, event: Started) -> None:
        self.turn = f"u{self.next_turn}"
        ms = event.speech_at * 1000 // silero.RATE
        await self.ctx.emit(
            SpeechStarted(self.sid, self.turn, at_ms=ms), msg_id=f"{self.sid}.{self.turn}.started"
        )
        if self.last_turn:
            await self.ctx.control(Cancel(self.sid, self.last_turn, reason="barge-in"))

    def _utterance(self, event: Ended | Paused) -> Utterance:
        frames = [f for f in self.frames if f.start < event.end]
        first = frames[0]
        begin = max(first.start, event.start)
        pcm = b"".join(f.pcm for f in frames)[
            (begin - first.start) * 2 : (event.end - first.start) * 2
        ]
        return Utterance(
            sid=self.sid,
            turn=self.turn,
            rate=silero.RATE,
            first_seq=first.seq,
            last_seq=frames[-1].seq,
            vad_tail_ms=(event.decided_at - event.speech_end) * 1000 // silero.RATE,
            pcm=pcm,
        )

    async def _send(self, utterance: Utterance, ctx: Context) -> None:
        # Each turn is one trace across every host; this is its root.
        with tracing.span(
            "turn",
            None,
            **{"morgan.session": self.sid, "morgan.turn": self.turn, "morgan.input": "speech"},
        ) as root:
            trace = tracing.headers_of(root)
            await ctx.forward(utterance, msg_id=f"{self.sid}.{self.turn}.utt", trace=trace)

    async def _paused(self, event: Paused) -> None:
        """Speculate: the utterance so far goes to STT now, marked; its results wait for
        the pause to become the end (processors.speculation)."""
        held = [f.seq for f in self.frames if f.start < event.speech_end]
        attempt = f"p{held[-1] if held else 0}"
        self.speculation = Speculation(attempt, event.speech_end)
        await self._send(self._utterance(event), self.ctx.speculative(attempt))

    async def _abandon(self) -> None:
        if self.speculation is not None:
            attempt, self.speculation = self.speculation.attempt, None
            await self.ctx.control(Abandon(self.sid, self.turn, attempt))

    async def _ended(self, event: Ended) -> None:
        stopped = SpeechStopped(self.sid, self.turn, at_ms=event.speech_end * 1000 // silero.RATE)
        msg_id = f"{self.sid}.{self.turn}.stopped"
        spec = self.speculation
        if spec is not None and spec.speech_end == event.speech_end:
            # The pause was the end: confirm what is under way (EVENTS names the attempt
            # for workers that miss the control message).
            await self.ctx.speculative(spec.attempt).emit(stopped, msg_id=msg_id)
            await self.ctx.control(Release(self.sid, self.turn, spec.attempt, "vad"))
            self.speculation = None
        else:
            await self._abandon()
            await self.ctx.emit(stopped, msg_id=msg_id)
            await self._send(self._utterance(event), self.ctx)
        frames = [f for f in self.frames if f.start < event.end]
        after = [f.seq for f in self.frames if f.end > event.end]
        self.next_turn = after[0] if after else frames[-1].seq + 1
        await self.owner.save(end=event.end, turn=self.turn, next=self.next_turn)
        self.last_turn, self.turn, self.hold = self.turn, "", False
        await self._ack(event.end)

    async def _ack(self, upto: int) -> None:
        """Acknowledge (AckPolicy.ALL) every frame that ends at or before ``upto``."""
        last: _Frame | None = None
        while self.frames and self.frames[0].end <= upto:
            last = self.frames.popleft()
        if last is not None:
            await last.raw.ack()


async def open_session(claim: SessionClaim, ctx: Context, owner: Owner) -> VadSession:
    if claim.rate != silero.RATE or claim.fmt != "s16le":
        raise BadInput(f"VAD takes 16000 Hz s16le, not {claim.rate} {claim.fmt}", code="bad_audio")
    return VadSession(claim, ctx, owner)


SPEC = Spec(
    kind="vad",
    input=SessionClaims(open=open_session),
    accepts=(SessionClaim,),
    publishes=(SpeechStarted, SpeechStopped, Utterance, Cancel, Release, Abandon),
    load=load,
    ack_wait_s=4.0,
    max_deliver=-1,  # a claim lives as long as its session: never give it up
    concurrency=64,
    describe=lambda state: "silero-vad onnx",
)
