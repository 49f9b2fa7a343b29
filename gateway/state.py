"""What every request handler of one gateway shares (built in the app's lifespan)."""

from __future__ import annotations

import asyncio
import logging
import uuid
from dataclasses import dataclass, field

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from starlette.requests import HTTPConnection

from gateway.key_ring import KeyRing, OpenSessions
from gateway.metrics import Metrics
from gateway.overload import Load
from gateway.quota import Quota
from gateway.session_book import SessionBook
from gateway.stores import Stores
from schemas import (
    ErrorEvent,
    LlmRequest,
    MessageError,
    ReplyCancelled,
    ReplyDone,
    Subjects,
    Transcript,
    decode,
)
from schemas.codec import USER_HEADER
from streams import bus, tracing
from streams.routes import Routes
from streams.settings import Settings

log = logging.getLogger("morgan.gateway")
TURN_ENDS = (ReplyDone.TYPE, ReplyCancelled.TYPE, ErrorEvent.TYPE)
"""Event types that end a turn, for the quota of typed turns in flight."""


@dataclass
class Gateway:
    settings: Settings
    nc: Client
    js: JetStreamContext
    metrics: Metrics
    load: Load
    book: SessionBook
    quota: Quota
    stores: Stores
    keys: KeyRing
    open_sessions: OpenSessions = field(default_factory=OpenSessions)
    """The open WebSocket sessions of each API key, closed when it is revoked."""
    _chores: set[asyncio.Task[int]] = field(default_factory=set, repr=False)

    @property
    def subjects(self) -> Subjects:
        return Subjects(self.settings.prefix)

    def reconfigure(self, settings: Settings) -> None:
        """Live config: requests, sessions, quotas and the overload check read these
        settings from now on (what applies live is listed in docs/consul.md)."""
        log.info("gateway: configuration changed")
        self.settings = settings
        self.load.settings = settings
        self.quota.settings = settings
        self.keys.reconfigure(settings)
        chore = asyncio.get_running_loop().create_task(self.close_revoked())
        self._chores.add(chore)  # held until done: the loop keeps only a weak reference
        chore.add_done_callback(self._chores.discard)

    async def close_revoked(self) -> int:
        """Close the WebSocket sessions of keys no longer valid (revoked, removed): close
        code 4401, reason ``key_revoked``. How many were closed."""
        closed = await self.open_sessions.close_invalid(self.keys)
        if closed:
            log.info("gateway: closed %d sessions of revoked API keys", closed)
        return closed

    async def typed_turn(
        self,
        client: str,
        sid: str,
        text: str,
        turn: str | None = None,
        *,
        user: str,
        rated: bool = True,
    ) -> str:
        """Start a turn from typed text: a transcript event, then work for the LLM.

        Takes one request of the client's rate unless ``rated`` is False (a REST call,
        counted as a request already; ``rate_limited`` past it), and is counted against
        the client's and the session's share of turns in flight (``too_many_turns`` past
        it) until the turn's end is seen.
        """
        turn = turn or new_turn()
        if rated:
            self.quota.take(client)
        self.quota.start_turn(client, sid, turn)
        s = self.subjects
        event = Transcript(sid, turn, text, typed=True)
        # The turn's trace starts here (streams/tracing.py); both messages carry it on.
        attrs = {"morgan.session": sid, "morgan.turn": turn, "morgan.input": "text"}
        try:
            with tracing.span("turn", None, **attrs) as root:
                trace = tracing.headers_of(root) | {USER_HEADER: user}
                await bus.publish(
                    self.js,
                    s.events(sid, event.TYPE),
                    event,
                    msg_id=f"{sid}.{turn}.transcript",
                    headers=trace,
                )
                request = LlmRequest(sid, turn, text)
                kind = Routes.parse(self.settings.routes).next_kind("gateway", request.TYPE)
                await bus.publish(
                    self.js, s.work(kind), request, msg_id=f"{sid}.{turn}.llm", headers=trace
                )
        except BaseException:
            self.quota.finish(sid, turn)
            raise
        return turn

    async def watch_turn_ends(self) -> list[Subscription]:
        """Release each typed turn's share when its end is published (any session)."""

        async def ended(raw: Msg) -> None:
            try:
                event = decode(raw.headers, raw.data)
            except MessageError as exc:
                log.debug("turn end: %s", exc)
                return
            sid, turn = getattr(event, "sid", ""), getattr(event, "turn", "")
            self.quota.finish(str(sid), str(turn))

        prefix = self.settings.prefix
        return [
            await self.nc.subscribe(f"{prefix}.events.*.{kind}", cb=ended) for kind in TURN_ENDS
        ]


def new_turn() -> str:
    """A typed turn's id: ``t`` + 12 hex digits."""
    return "t" + uuid.uuid4().hex[:12]


def gateway_of(conn: HTTPConnection) -> Gateway:
    gw = conn.app.state.gateway
    assert isinstance(gw, Gateway), "the app's lifespan has not run"
    return gw
