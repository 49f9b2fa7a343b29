"""What Morgan derives from a kind's Spec: its consumers, their names, tiers and limits."""

from __future__ import annotations

from typing import Any

import pytest
from nats.js.api import DeliverPolicy

from processors import llm, registry, stt, tts, vad
from processors.context import Context
from processors.spec import SPEC_ACK_WAIT_S, EventTap, SessionClaims, Spec, WorkQueue
from schemas import Message, SessionClaim, Transcript
from streams import definitions
from streams.definitions import Consumer
from streams.settings import Settings


async def nothing(settings: Settings, tiers: tuple[str, ...]) -> Any:
    return None


async def ignore(msg: Message, ctx: Context) -> None:
    return None


async def no_reader(claim: SessionClaim, ctx: Context, owner: Any) -> Any:
    raise AssertionError("not opened in these tests")


def tap(types: tuple[str, ...] = ("transcript", "reply.done"), from_start: bool = False) -> Spec:
    return Spec(
        kind="keywords",
        input=EventTap(types, from_start),
        accepts=(Transcript,),
        publishes=(),
        load=nothing,
        handle=ignore,
    )


def test_tiered_work_has_one_consumer_per_tier_served_and_one_for_its_speculative_work() -> None:
    settings = Settings()
    spec = "speculative"
    assert stt.SPEC.consumers(settings) == [
        ("gpu", Consumer("WORK", "stt-gpu", ("morgan.work.stt.gpu",), 3.0, 10, 1000, "work")),
        (
            "gpu",
            Consumer("WORK", "stt-gpu-spec", ("morgan.work.stt.gpu.spec",), 3.0, 10, 1000, spec),
        ),
        ("cpu", Consumer("WORK", "stt-cpu", ("morgan.work.stt.cpu",), 3.0, 10, 1000, "work")),
        (
            "cpu",
            Consumer("WORK", "stt-cpu-spec", ("morgan.work.stt.cpu.spec",), 3.0, 10, 1000, spec),
        ),
    ]
    assert [t for t, _ in tts.SPEC.consumers(settings, ("cpu",))] == ["cpu", "cpu"]
    assert [c.durable for _, c in stt.SPEC.consumers(settings, ("cpu", "gpu"))] == [
        "stt-gpu",
        "stt-gpu-spec",
        "stt-cpu",
        "stt-cpu-spec",
    ]


def test_untiered_work_has_consumers_named_after_the_kind_whatever_the_tiers() -> None:
    settings = Settings(prefix="home", max_deliver=4)
    for serving in (("gpu", "cpu"), ("cpu",), ("gpu",)):
        assert llm.SPEC.consumers(settings, serving) == [
            (None, Consumer("WORK", "llm", ("home.work.llm",), 3.0, 4, 1000, "work")),
            (
                None,
                Consumer("WORK", "llm-spec", ("home.work.llm.spec",), 3.0, 4, 1000, "speculative"),
            ),
        ]


def test_tiered_is_a_property_of_a_work_queue_only() -> None:
    assert (stt.SPEC.tiered, tts.SPEC.tiered, llm.SPEC.tiered, vad.SPEC.tiered) == (
        True,
        True,
        False,
        False,
    )
    assert not tap().tiered
    assert [registry.is_tiered(k) for k in ("stt", "llm", "not-installed")] == [True, False, False]


def test_the_shipped_work_kinds_declare_a_short_ack_wait_and_the_setting_overrides_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert SPEC_ACK_WAIT_S == 3.0
    assert {
        c.ack_wait_s for s in (stt.SPEC, llm.SPEC, tts.SPEC) for _, c in s.consumers(Settings())
    } == {3.0}
    monkeypatch.setenv("MORGAN_WORK_ACK_WAIT_S", "7.5")
    slow = Settings.from_env()
    assert [c.ack_wait_s for _, c in stt.SPEC.consumers(slow)] == [7.5] * 4
    assert [c.ack_wait_s for _, c in tap().consumers(slow)] == [7.5]
    assert [c.ack_wait_s for _, c in vad.SPEC.consumers(slow)] == [4.0]  # claims: not work


def test_a_kind_may_declare_its_own_ack_wait_and_deliveries() -> None:
    patient = Spec(
        kind="batch",
        input=WorkQueue(),
        accepts=(Transcript,),
        publishes=(),
        load=nothing,
        handle=ignore,
        ack_wait_s=30.0,
        max_deliver=2,
    )
    for _, consumer in patient.consumers(Settings(max_deliver=10)):
        assert (consumer.ack_wait_s, consumer.max_deliver) == (30.0, 2)


def test_a_session_claim_kind_is_never_given_up_and_its_ack_wait_has_its_own_override() -> None:
    [(tier, claims)] = vad.SPEC.consumers(Settings(max_deliver=3))
    assert tier is None
    assert claims == Consumer("WORK", "vad", ("morgan.work.vad",), 4.0, -1, 10_000, "claim")
    assert vad.SPEC.feeds == "claim" and vad.SPEC.handle is None
    [(_, fast)] = vad.SPEC.consumers(Settings(claim_ack_wait_s=2.0, work_ack_wait_s=9.0))
    assert fast.ack_wait_s == 2.0


def test_an_event_tap_reads_its_types_from_every_session_and_starts_at_new_events() -> None:
    [(tier, consumer)] = tap().consumers(Settings(prefix="home"))
    assert tier is None
    assert consumer == Consumer(
        stream="EVENTS",
        durable="keywords",
        filter_subjects=("home.events.*.transcript", "home.events.*.reply.done"),
        ack_wait_s=3.0,
        max_deliver=10,
        max_ack_pending=1_000,
        feeds="tap",
        deliver_new=True,
    )
    config = consumer.config(Settings())
    assert config.filter_subject is None
    assert config.filter_subjects == ["home.events.*.transcript", "home.events.*.reply.done"]
    assert config.deliver_policy == DeliverPolicy.NEW
    assert config.metadata == {definitions.INPUT: "tap"}


def test_a_tap_from_start_reads_what_events_still_holds() -> None:
    [(_, consumer)] = tap(types=("transcript",), from_start=True).consumers(Settings())
    assert consumer.filter_subjects == ("morgan.events.*.transcript",)
    assert not consumer.deliver_new
    config = consumer.config(Settings())
    assert config.filter_subject == "morgan.events.*.transcript"
    assert config.deliver_policy == DeliverPolicy.ALL


def test_feeds_names_what_feeds_each_input_mode() -> None:
    assert (stt.SPEC.feeds, llm.SPEC.feeds, vad.SPEC.feeds, tap().feeds) == (
        "work",
        "work",
        "claim",
        "tap",
    )


def test_a_claim_kind_with_a_handler_is_refused() -> None:
    with pytest.raises(ValueError, match="none for claims"):
        Spec(
            kind="watch",
            input=SessionClaims(open=no_reader),
            accepts=(SessionClaim,),
            publishes=(),
            load=nothing,
            handle=ignore,
        )


@pytest.mark.parametrize("feed", [WorkQueue(), EventTap(types=("transcript",))])
def test_a_work_or_tap_kind_without_a_handler_is_refused(feed: WorkQueue | EventTap) -> None:
    with pytest.raises(ValueError, match="a handler for work and taps"):
        Spec(kind="idle", input=feed, accepts=(Transcript,), publishes=(), load=nothing)


def test_every_built_in_kind_is_found_by_name_and_an_unknown_one_is_refused() -> None:
    for kind in registry.BUILT_IN:
        assert registry.spec(kind).kind == kind
    with pytest.raises(registry.UnknownKind, match="choose from"):
        registry.spec("nope")
