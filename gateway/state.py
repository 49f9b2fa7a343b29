"""What every request handler of one gateway shares (built in the app's lifespan)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from nats.aio.client import Client
from nats.js import JetStreamContext
from starlette.requests import HTTPConnection

from gateway.metrics import Metrics
from gateway.overload import Load
from schemas import LlmRequest, Subjects, Transcript
from streams import bus
from streams.settings import Settings


@dataclass
class Gateway:
    settings: Settings
    nc: Client
    js: JetStreamContext
    metrics: Metrics
    load: Load

    @property
    def subjects(self) -> Subjects:
        return Subjects(self.settings.prefix)

    async def typed_turn(self, sid: str, text: str, turn: str | None = None) -> str:
        """Start a turn from typed text: a transcript event, then work for the LLM."""
        turn = turn or new_turn()
        s = self.subjects
        event = Transcript(sid, turn, text)
        await bus.publish(
            self.js, s.events(sid, event.TYPE), event, msg_id=f"{sid}.{turn}.transcript"
        )
        await bus.publish(
            self.js, s.work("llm"), LlmRequest(sid, turn, text), msg_id=f"{sid}.{turn}.llm"
        )
        return turn


def new_turn() -> str:
    """A typed turn's id: ``t`` + 12 hex digits."""
    return "t" + uuid.uuid4().hex[:12]


def gateway_of(conn: HTTPConnection) -> Gateway:
    gw = conn.app.state.gateway
    assert isinstance(gw, Gateway), "the app's lifespan has not run"
    return gw
