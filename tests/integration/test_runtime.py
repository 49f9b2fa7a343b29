"""The processor runtime's retry rule against a real nats-server: how long it keeps trying."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from processors.context import Context
from processors.spec import SessionClaims, Spec, WorkQueue
from schemas import (
    Abandon,
    ErrorEvent,
    Message,
    SessionClaim,
    Subjects,
    Unavailable,
    Utterance,
)
from schemas.codec import SPECULATIVE_HEADER, WORKER_HEADER
from streams import bus, definitions
from streams.settings import Settings
from tests.integration.bus_helpers import stored, until
from tests.integration.workers import running

S = Subjects()


class Flaky:
    """A handler (or a claim kind's session opener) that fails retryably ``failures``
    times, then succeeds."""

    def __init__(self, failures: int) -> None:
        self.failures, self.calls = failures, 0

    async def __call__(self, msg: Message, ctx: Context, *_: Any) -> Any:
        self.calls += 1
        if self.calls <= self.failures:
            raise Unavailable("JetStream temporarily unavailable (as during an election)")
        return Deaf()


class Deaf:
    """A session reader that hears nothing: the session ends when it goes idle."""

    async def feed(self, frames: list[Msg]) -> bool:
        return False


async def nothing(settings: Settings, tiers: tuple[str, ...]) -> Any:
    return None


@pytest.fixture
def few(settings: Settings) -> Settings:
    """Settings that allow 2 deliveries of a work message (each worker declares its
    consumers with them); sessions end after half a second without audio."""
    return settings.model_copy(update={"max_deliver": 2, "session_idle_s": 0.5})


async def test_a_session_claim_is_retried_past_max_deliver_and_never_given_up(
    few: Settings, js: JetStreamContext
) -> None:
    flaky = Flaky(failures=4)
    spec = Spec(
        kind="watch",
        input=SessionClaims(open=flaky),
        accepts=(SessionClaim,),
        publishes=(),
        load=nothing,
        max_deliver=-1,
        concurrency=4,
    )
    async with running(spec, few) as worker:
        info = await js.consumer_info(definitions.WORK, "watch")
        assert info.config.max_deliver == -1
        await bus.publish(js, S.work("watch"), SessionClaim("c1"), msg_id="claim.c1")
        await until(lambda: worker.handled == 1, timeout=30)
        assert (flaky.calls, worker.failed) == (5, 0)
    assert await stored(js, definitions.EVENTS, S.events("c1", "error")) == []


async def test_work_is_given_up_after_max_deliver_with_an_error_event(
    few: Settings, js: JetStreamContext
) -> None:
    flaky = Flaky(failures=4)
    spec = Spec(
        kind="stt",
        input=WorkQueue(tiered=True),
        accepts=(Utterance,),
        publishes=(),
        load=nothing,
        handle=flaky,
    )
    utt = Utterance(sid="w1", turn="t1", rate=16000, first_seq=1, last_seq=1, pcm=b"\x00\x00")
    async with running(spec, few) as worker:
        await bus.publish(js, S.work("stt", "cpu"), utt, msg_id="w1.t1.utt")
        await until(lambda: worker.failed == 1, timeout=30)
        assert (flaky.calls, worker.handled) == (2, 0)
    [error] = await stored(js, definitions.EVENTS, S.events("w1", "error"))
    assert isinstance(error, ErrorEvent) and error.retryable and error.turn == "t1"


async def test_a_worker_takes_confirmed_work_before_speculative_work_waiting_beside_it(
    settings: Settings, js: JetStreamContext, nc: Any
) -> None:
    """Priority, not first come: the speculative turn's work was published before the
    second confirmed one, yet waits until the worker has no confirmed work in hand."""
    order: list[str] = []

    async def slow(msg: Message, ctx: Context) -> None:
        assert isinstance(msg, Utterance)
        order.append(msg.turn)
        await asyncio.sleep(0.3)

    kind = Spec(
        kind="ordered",
        input=WorkQueue(),
        accepts=(Utterance,),
        publishes=(),
        load=nothing,
        handle=slow,
    )
    await definitions.apply(js, settings, [c for _, c in kind.consumers(settings)])
    work = S.work("ordered")
    marked = {SPECULATIVE_HEADER: "p7", WORKER_HEADER: "vad@test:1"}
    for turn, subject, headers in (
        ("confirmed-1", work, None),
        ("speculative", S.speculative(work), marked),
        ("confirmed-2", work, None),
    ):
        utt = Utterance("s1", turn, 16000, 1, 1, 0, b"")
        await bus.publish(js, subject, utt, msg_id=turn, headers=headers)
    async with running(kind, settings):
        await until(lambda: len(order) == 3, timeout=20)
        # the speculation is settled (here: abandoned), so the worker may stop at once
        await bus.publish_core(nc, S.control("s1"), Abandon("s1", "speculative", "p7"))
    assert order == ["confirmed-1", "confirmed-2", "speculative"]
