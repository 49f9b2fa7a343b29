"""Session ownership: the runtime's input mode for kinds that read one session's audio.

A worker owns a session while it holds the session's claim (a message on
``<prefix>.work.<kind>`` kept unacked and heartbeated by the runtime). It reads the
session's microphone frames (``<prefix>.audio.in.<sid>``) through a consumer of its
own, ``<kind>-<sid>-<owner>``, and keeps a record in KV ``MORGAN_OWNERS`` under
``<kind>.<sid>``: the owner number (one more per takeover), its consumer, the claim
message it holds, and whatever the kind saves there (the VAD: where its last utterance
ended). Every write is a compare-and-set on the record's revision, so a cut-off owner's
write fails once a new owner has written.

A worker that gets the claim after another (a crash, a stop, a partition) takes the
session over: it makes its consumer at the last owner's ack floor, names it in the
record, then deletes the last owner's consumer, so a cut-off owner's pulls find nothing
and it stops (``Superseded``) at its next look. The session ends at ``session.end``, or
once no new audio came for ``settings.session_idle_s`` (a client gone without one): its
consumer is deleted and the claim acknowledged. A stopping worker hands its sessions
over at once (``Handoff``: the claim is nak'ed and another worker takes it now).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import (
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NotFoundError,
    ServiceUnavailableError,
)
from nats.js.kv import KeyValue

from processors.context import BusContext
from processors.spec import SessionClaims, Spec
from schemas import BadInput, Handoff, SessionClaim, Superseded
from streams import definitions

BATCH = 64
"""Frames fetched at once."""
IDLE_POLL_S = 0.25
CONSUMER_CREATE_S = 15.0
"""How long making a session consumer may take: an R3 consumer whose stream has a peer
cut off can wait out a raft election (4-9 s in nats-server), past the usual 5 s."""
OWNER_CHECK_S = 1.0
"""How often a session's reader checks it still owns the session, seconds."""


class Owner:
    """This worker's ownership of one session: the record in KV and its own consumer."""

    def __init__(self, kind: str, sid: str, ctx: BusContext, ack_wait_s: float) -> None:
        self.kind, self.sid, self.ctx = kind, sid, ctx
        self.ack_wait_s = ack_wait_s
        """Ack wait of the session's consumer: frames held unacknowledged come back
        after it (a reader keeps pre-roll and an open utterance unacknowledged)."""
        self.key = f"{kind}.{sid}"
        self.kv: KeyValue | None = None
        self.record: dict[str, Any] = {}
        """What the record holds: owner, consumer, claim, and what the kind saved."""
        self.revision = 0
        """KV revision of our last write; a write by a newer owner makes ours fail."""
        self.durable = ""
        self.took_over = False
        """Whether another worker owned the session before (its ``record`` is what that
        owner saved last)."""

    async def take_over(self) -> None:
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
        self.kv = await definitions.key_value(js, settings, definitions.OWNERS)
        await self._read()
        owner = int(self.record.get("owner", 0)) + 1
        start: int | None = None
        previous = self.record.get("consumer")
        if previous:
            self.took_over = True
            with contextlib.suppress(NotFoundError):  # gone: replay all, the kind skips
                info = await js.consumer_info(definitions.AUDIO, previous)
                start = info.ack_floor.stream_seq + 1 if info.ack_floor else 1
        cfg = definitions.session_audio_consumer(
            settings, self.kind, self.sid, owner, self.ack_wait_s, start_seq=start
        )
        assert cfg.durable_name is not None
        self.durable = cfg.durable_name
        if not await self._made_before():
            await definitions.ensure_consumer(js, definitions.AUDIO, cfg, timeout=CONSUMER_CREATE_S)
        await self.save(owner=owner, consumer=self.durable, claim=self._claim_seq())
        if previous:
            with contextlib.suppress(NotFoundError):
                await js.delete_consumer(definitions.AUDIO, previous)

    async def _made_before(self) -> bool:
        """Whether an earlier try of this takeover already made our consumer.

        Its start may lie before the last owner's ack floor now (a cut-off owner goes
        on acknowledging), and JetStream refuses to move a consumer's start ("start
        sequence can not be updated"): keep it. Replaying a little more is harmless:
        the kind skips what it already handled, by what it saved in the record.
        """
        try:
            await self.ctx.js.consumer_info(definitions.AUDIO, self.durable)
        except NotFoundError:
            return False
        return True

    async def _read(self) -> None:
        assert self.kv is not None
        try:
            entry = await self.kv.get(self.key)
        except KeyNotFoundError:
            self.record, self.revision = {}, 0
            return
        self.record = json.loads(entry.value or b"{}")
        self.revision = entry.revision or 0

    async def save(self, **changes: Any) -> None:
        """Update the record only if no other owner wrote it since we last did."""
        assert self.kv is not None
        self.record = {**self.record, **changes}
        value = json.dumps(self.record).encode()
        try:
            if self.revision:
                self.revision = await self.kv.update(self.key, value, last=self.revision)
            else:
                self.revision = await self.kv.create(self.key, value)
        except KeyWrongLastSequenceError:
            raise await self._superseded("another worker took this session over") from None

    async def check(self) -> None:
        """Stop if another worker took the session over (we were cut off, not dead)."""
        try:
            await self.ctx.js.consumer_info(definitions.AUDIO, self.durable)
        except NotFoundError:
            raise await self._superseded("session consumer gone: another worker owns it") from None
        except (NatsError, TimeoutError):
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
            await self._read()
        except (NatsError, TimeoutError):
            return Superseded(why)
        claim = self.record.get("claim")
        return Superseded(why, obsolete=claim is not None and claim != self._claim_seq())

    async def release(self) -> None:
        """The session is over: delete our consumer (the runtime acks the claim)."""
        with contextlib.suppress(NotFoundError):
            await self.ctx.js.delete_consumer(definitions.AUDIO, self.durable)


async def hold(spec: Spec, claim: SessionClaim, ctx: BusContext) -> None:
    """Own ``claim``'s session until it ends; the runtime's handler for claim kinds."""
    assert isinstance(spec.input, SessionClaims)
    owner = Owner(spec.kind, claim.sid, ctx, spec.ack_wait(ctx.settings))
    await owner.take_over()
    try:
        reader = await spec.input.open(claim, ctx, owner)
    except BadInput:  # a claim the kind refuses: nobody reads this session
        await owner.release()
        raise
    sub = await ctx.js.pull_subscribe_bind(owner.durable, stream=definitions.AUDIO)
    try:
        await _listen(owner, sub, reader.feed)
    finally:
        # fetch() never marks its queue done: a subscription left behind would make
        # nc.drain() wait out its timeout when the worker stops.
        with contextlib.suppress(NatsError, TimeoutError):
            await sub.unsubscribe()
    await owner.release()


async def _listen(
    owner: Owner,
    sub: JetStreamContext.PullSubscription,
    feed: Callable[[list[Msg]], Awaitable[bool]],
) -> None:
    """Read frames until session.end, or until no new audio came for ``session_idle_s``
    (a client gone without session.end); hand the session over if the worker stops."""
    ctx = owner.ctx
    loop = asyncio.get_running_loop()
    heard = checked = loop.time()
    while not ctx.session_ended(owner.sid):
        if ctx.draining:
            raise Handoff()
        if loop.time() - heard > ctx.current_settings().session_idle_s:
            return
        if loop.time() - checked > OWNER_CHECK_S:
            await owner.check()
            checked = loop.time()
        try:
            msgs = await sub.fetch(BATCH, timeout=IDLE_POLL_S)
        except TimeoutError:
            continue
        except (ServiceUnavailableError, NotFoundError):  # our consumer may be gone:
            await owner.check()  # stop (Superseded), never nak another's claim
            checked = loop.time()
            await asyncio.sleep(IDLE_POLL_S)
            continue
        except NatsError:  # reconnecting: the claim is heartbeated meanwhile, ask again
            await asyncio.sleep(IDLE_POLL_S)
            continue
        # Only new audio counts: an idle fetch may end with [] rather than a timeout.
        if await feed(msgs):
            heard = loop.time()
