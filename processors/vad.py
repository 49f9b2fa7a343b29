"""VAD: owns a session's microphone, cuts it into utterances for speech-to-text.

Consumes ``SessionClaim`` from ``<prefix>.work.vad`` and holds it (unacked,
heartbeated by the runtime) while the session lives; reads the session's frames
from ``<prefix>.audio.in.<sid>`` through its own durable consumer ``vad-<sid>-<owner>``
that it acknowledges only up to audio no utterance can need again. After each
utterance it records in KV ``MORGAN_VAD`` where the utterance ended and the
frame the next turn is named after. A worker that takes the claim over (after
a crash, or a partition that cut the owner off) replaces the last owner's consumer
with its own at the same ack floor, skips audio already cut, and names the turn in
progress the same way, so JetStream's dedup drops a second copy; a cut-off owner
reads nothing more, and stops (``Superseded``) when it finds its consumer gone or
its KV write refused. Emits vad.speech_started / vad.speech_stopped,
publishes ``Utterance`` to ``<prefix>.work.stt.<tier>``, and on speech during
a reply publishes ``Cancel`` for the previous turn (barge-in).

A session ends at its ``session.end``, or once no new audio arrived for
``settings.session_idle_s`` (a client gone without one): its consumer is deleted and
the claim acknowledged, freeing the slot. A stopping worker hands its sessions over.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import deque
from dataclasses import dataclass
from typing import Any

import numpy as np
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig
from nats.js.errors import (
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NotFoundError,
    ServiceUnavailableError,
)
from nats.js.kv import KeyValue

from processors import silero
from processors.context import Context
from processors.segmenter import Ended, Segmenter, SegmenterConfig, Started
from processors.spec import Spec
from schemas import (
    AudioFrame,
    BadInput,
    Cancel,
    Handoff,
    Message,
    MessageError,
    SessionClaim,
    SpeechStarted,
    SpeechStopped,
    Superseded,
    Utterance,
    decode,
)
from streams import definitions, tracing
from streams.settings import Settings

BATCH = 64
IDLE_POLL_S = 0.25
CONSUMER_CREATE_S = 15.0
"""How long making a session consumer may take: an R3 consumer whose stream has a peer
cut off can wait out a raft election (4-9 s in nats-server), past the usual 5 s."""
OWNER_CHECK_S = 1.0
"""How often a session's reader checks it still owns the session, seconds."""
PROGRESS_BUCKET = "MORGAN_VAD"
"""KV, per session: its owner (1, 2, ... one more per takeover) and that owner's consumer,
where the last published utterance ended (``end``, a sample offset), its ``turn``, and
the frame the ``next`` turn is named after. Written with compare-and-set on the revision:
a cut-off owner's write fails once a new owner has written."""


async def progress_bucket(js: JetStreamContext, settings: Settings) -> KeyValue:
    config = KeyValueConfig(
        bucket=PROGRESS_BUCKET, ttl=settings.audio_max_age_s, replicas=settings.replicas
    )
    return await definitions.key_value(js, config)


async def load(settings: Settings, tiers: tuple[str, ...]) -> Any:
    return await asyncio.to_thread(silero.load_session)


@dataclass
class _Frame:
    seq: int
    start: int
    end: int
    pcm: bytes
    raw: Msg


def config_of(settings: Settings) -> SegmenterConfig:
    return SegmenterConfig(
        threshold=settings.vad_threshold,
        silence_ms=settings.vad_silence_ms,
        min_speech_ms=settings.vad_min_speech_ms,
        preroll_ms=settings.vad_preroll_ms,
        max_utterance_s=settings.vad_max_utterance_s,
    )


class VadSession:
    def __init__(self, claim: SessionClaim, ctx: Context) -> None:
        self.sid = claim.sid
        self.ctx = ctx
        self.model = silero.SileroStream(ctx.state)
        self.seg: Segmenter | None = None
        self.frames: deque[_Frame] = deque()
        self.turn = ""
        self.last_turn = ""
        self.hold = False
        """After a takeover, keep every frame until the first utterance is out."""
        self.done_until = 0
        """Session sample offset up to which utterances were already published."""
        self.heard_until = 0
        """Session sample offset up to which frames were fed to the segmenter. Frames
        held unacknowledged (pre-roll, an open utterance) come back after the consumer's
        ack wait: audio already in ``frames``, neither heard twice nor news of the client."""
        self.next_turn = 1
        """A turn is named after the first frame after the previous utterance (or frame 1),
        which does not depend on ack timing, so a new owner names it the same."""
        self.durable = ""
        """Our own session consumer: each owner makes a new one and deletes the last."""
        self.kv: KeyValue | None = None
        self.progress: dict[str, Any] = {}
        """What KV ``MORGAN_VAD`` holds for the session: owner, consumer, end, turn, next."""
        self.revision = 0
        """KV revision of our last write; a write by a newer owner makes ours fail."""

    async def run(self) -> None:
        ctx = self.ctx
        self.kv = await progress_bucket(ctx.js, ctx.settings)
        await self._take_over()
        sub = await ctx.js.pull_subscribe_bind(self.durable, stream=definitions.AUDIO)
        try:
            await self._listen(sub)
        finally:
            # fetch() never marks its queue done: a subscription left behind would make
            # nc.drain() wait out its timeout when the worker stops.
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        with contextlib.suppress(NotFoundError):
            await ctx.js.delete_consumer(definitions.AUDIO, self.durable)

    async def _listen(self, sub: JetStreamContext.PullSubscription) -> None:
        """Read frames until session.end, or until no audio came for ``session_idle_s``
        (a client gone without session.end); hand the session over if the worker stops."""
        ctx, settings = self.ctx, self.ctx.settings
        loop = asyncio.get_running_loop()
        heard = checked = loop.time()
        while not ctx.session_ended(self.sid):
            if ctx.draining:
                raise Handoff()
            if loop.time() - heard > settings.session_idle_s:
                return
            if loop.time() - checked > OWNER_CHECK_S:
                await self._check_owner()
                checked = loop.time()
            try:
                msgs = await sub.fetch(BATCH, timeout=IDLE_POLL_S)
            except TimeoutError:
                continue
            except (ServiceUnavailableError, NotFoundError):  # our consumer may be gone:
                await self._check_owner()  # stop (Superseded), never nak another's claim
                checked = loop.time()
                await asyncio.sleep(IDLE_POLL_S)
                continue
            # Only new audio counts: an idle fetch may end with [] rather than a timeout.
            if await self._consume(msgs):
                heard = loop.time()

    async def _take_over(self) -> None:
        """Read the session's frames in order from the first one not yet acknowledged.

        A dead worker's in-flight frames would only come back after ack_wait, behind
        newer ones; a new consumer at the last owner's ack floor replays them in order
        now. The last owner's consumer is deleted, so if it was only cut off, not dead,
        its pulls find nothing: it cannot take frames from this owner.

        Any step may fail (JetStream answers 503 or times out during an election) and
        the claim comes back for another try. So the new consumer is made before the
        record names it and before the old one goes: a retry finds the same owner number
        and ack floor and makes the same consumer again, a no-op, instead of deleting a
        half-made one and waiting out another raft election for the next.
        """
        js, settings = self.ctx.js, self.ctx.settings
        await self._read_progress()
        owner = int(self.progress.get("owner", 0)) + 1
        start: int | None = None
        previous = self.progress.get("consumer")
        if previous:
            self.hold = True
            self.done_until = int(self.progress.get("end", 0))
            self.next_turn = int(self.progress.get("next", 1))
            with contextlib.suppress(NotFoundError):  # gone: replay all, skip what was cut
                info = await js.consumer_info(definitions.AUDIO, previous)
                start = info.ack_floor.stream_seq + 1 if info.ack_floor else 1
        cfg = definitions.session_audio_consumer(settings, self.sid, owner, start_seq=start)
        assert cfg.durable_name is not None
        self.durable = cfg.durable_name
        if not await self._made_before():
            await definitions.ensure_consumer(js, definitions.AUDIO, cfg, timeout=CONSUMER_CREATE_S)
        await self._write_progress(owner=owner, consumer=self.durable, claim=self._claim_seq())
        if previous:
            with contextlib.suppress(NotFoundError):
                await js.delete_consumer(definitions.AUDIO, previous)

    async def _made_before(self) -> bool:
        """Whether an earlier try of this takeover already made our consumer.

        Its start may lie before the last owner's ack floor now (a cut-off owner goes
        on acknowledging), and JetStream refuses to move a consumer's start ("start
        sequence can not be updated"): keep it. Replaying a little more is harmless,
        audio already cut is skipped by ``end``.
        """
        try:
            await self.ctx.js.consumer_info(definitions.AUDIO, self.durable)
        except NotFoundError:
            return False
        return True

    async def _read_progress(self) -> None:
        """The session's record in KV: who owned it last, where its last utterance ended
        and the frame its next turn is named after.

        Acks can be lost (a partition), so the ack floor may lie before audio that
        was already cut and sent; ``end``, written after each utterance is out,
        keeps that audio from becoming a second turn.
        """
        assert self.kv is not None
        try:
            entry = await self.kv.get(self.sid)
        except KeyNotFoundError:
            self.progress, self.revision = {}, 0
            return
        self.progress = json.loads(entry.value or b"{}")
        self.revision = entry.revision or 0

    async def _write_progress(self, **changes: Any) -> None:
        """Update the record only if no other owner wrote it since we last did."""
        assert self.kv is not None
        self.progress = {**self.progress, **changes}
        value = json.dumps(self.progress).encode()
        try:
            if self.revision:
                self.revision = await self.kv.update(self.sid, value, last=self.revision)
            else:
                self.revision = await self.kv.create(self.sid, value)
        except KeyWrongLastSequenceError:
            raise await self._superseded("another worker took this session over") from None

    async def _check_owner(self) -> None:
        """Stop if another worker took the session over (we were cut off, not dead)."""
        try:
            await self.ctx.js.consumer_info(definitions.AUDIO, self.durable)
        except NotFoundError:
            raise await self._superseded("session consumer gone: another worker owns it") from None
        except Exception:
            return  # cannot tell now (reconnecting): keep going, ask again later

    def _claim_seq(self) -> int:
        """WORK stream sequence of the claim message we hold (0 in direct calls)."""
        raw = self.ctx.raw
        return raw.metadata.sequence.stream if raw is not None else 0

    async def _superseded(self, why: str) -> Superseded:
        """Superseded; ``obsolete`` when the new owner holds another claim message than
        ours (a gateway claimed the session again), so that ours is dropped, not
        redelivered to take the session back. Unknown (KV unreachable) counts as not."""
        try:
            await self._read_progress()
        except (NatsError, TimeoutError):
            return Superseded(why)
        claim = self.progress.get("claim")
        return Superseded(why, obsolete=claim is not None and claim != self._claim_seq())

    async def _consume(self, msgs: list[Msg]) -> bool:
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
        self.seg.config = config_of(self.ctx.current_settings())  # live config applies at once
        self.frames.extend(new)
        samples = np.frombuffer(b"".join(f.pcm for f in new), dtype="<i2")
        windows = self.seg.windows(samples.astype(np.float32) / 32768.0)
        probs = await asyncio.to_thread(lambda: [self.model.probability(w) for _, w in windows])
        for (offset, _), p in zip(windows, probs, strict=True):
            event = self.seg.step(offset, p)
            if isinstance(event, Started):
                await self._started(event)
            elif isinstance(event, Ended):
                await self._ended(event)
        if self.seg.idle and not self.hold:
            await self._ack(self.seg.safe_ack)
        return True

    async def _started(self, event: Started) -> None:
        self.turn = f"u{self.next_turn}"
        ms = event.speech_at * 1000 // silero.RATE
        await self.ctx.emit(
            SpeechStarted(self.sid, self.turn, at_ms=ms), msg_id=f"{self.sid}.{self.turn}.started"
        )
        if self.last_turn:
            await self.ctx.control(Cancel(self.sid, self.last_turn, reason="barge-in"))

    async def _ended(self, event: Ended) -> None:
        frames = [f for f in self.frames if f.start < event.end]
        first = frames[0]
        begin = max(first.start, event.start)
        pcm = b"".join(f.pcm for f in frames)[
            (begin - first.start) * 2 : (event.end - first.start) * 2
        ]
        tail_ms = (event.decided_at - event.speech_end) * 1000 // silero.RATE
        await self.ctx.emit(
            SpeechStopped(self.sid, self.turn, at_ms=event.speech_end * 1000 // silero.RATE),
            msg_id=f"{self.sid}.{self.turn}.stopped",
        )
        utterance = Utterance(
            sid=self.sid,
            turn=self.turn,
            rate=silero.RATE,
            first_seq=first.seq,
            last_seq=frames[-1].seq,
            vad_tail_ms=tail_ms,
            pcm=pcm,
        )
        tier = await self.ctx.tier_for("stt")
        subject = self.ctx.subjects.work("stt", tier)
        # Each turn is one trace across every host; this is its root.
        with tracing.span(
            "turn", None, **{"morgan.session": self.sid, "morgan.turn": self.turn}
        ) as root:
            trace = tracing.headers_of(root)
            await self.ctx.send(
                subject, utterance, msg_id=f"{self.sid}.{self.turn}.utt", trace=trace
            )
        after = [f.seq for f in self.frames if f.end > event.end]
        self.next_turn = after[0] if after else frames[-1].seq + 1
        await self._write_progress(end=event.end, turn=self.turn, next=self.next_turn)
        self.last_turn, self.turn, self.hold = self.turn, "", False
        await self._ack(event.end)

    async def _ack(self, upto: int) -> None:
        """Acknowledge (AckPolicy.ALL) every frame that ends at or before ``upto``."""
        last: _Frame | None = None
        while self.frames and self.frames[0].end <= upto:
            last = self.frames.popleft()
        if last is not None:
            await last.raw.ack()


async def handle(claim: Message, ctx: Context) -> None:
    assert isinstance(claim, SessionClaim)
    if claim.rate != silero.RATE or claim.fmt != "s16le":
        raise BadInput(f"VAD takes 16000 Hz s16le, not {claim.rate} {claim.fmt}", code="bad_audio")
    await VadSession(claim, ctx).run()


SPEC = Spec(
    kind="vad",
    accepts=(SessionClaim,),
    load=load,
    handle=handle,
    concurrency=64,
    describe=lambda state: "silero-vad onnx",
)
