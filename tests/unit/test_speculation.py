"""The runtime's holds for speculative turns: what is held, when it goes out, in what
order, and what is dropped. Pure asyncio: publishing appends to a list."""

from __future__ import annotations

import asyncio

import pytest

from processors import speculation
from processors.speculation import Hold, Speculations, Verdict
from schemas import Abandon, Release

KEY = ("s1", "u5", "p12")


class World:
    def __init__(self, kind: str = "stt", verdict: Verdict = "unknown") -> None:
        self.published: list[str] = []
        self.released: list[Release] = []
        self.asked: list[tuple[str, str, str]] = []
        self.answer: Verdict = verdict
        self.specs = Speculations(kind, self.release, self.lookup)

    async def release(self, msg: Release) -> None:
        self.released.append(msg)

    async def lookup(self, sid: str, turn: str, attempt: str) -> Verdict:
        self.asked.append((sid, turn, attempt))
        return self.answer

    def publisher(self, name: str):  # type: ignore[no-untyped-def]
        async def publish() -> None:
            self.published.append(name)

        return publish


async def send(world: World, hold: Hold, *names: str) -> None:
    for name in names:
        await hold.send(world.publisher(name))


async def test_output_waits_for_the_upstream_release_then_goes_out_in_order() -> None:
    world = World()
    hold = world.specs.hold(KEY, upstream="vad")
    await send(world, hold, "transcript", "done")
    assert world.published == []
    world.specs.note(Release(*KEY, kind="vad"))
    await world.specs.finish(hold)
    assert world.published == ["transcript", "done"]
    assert world.released == [Release(*KEY, kind="stt")]  # the next stage may follow
    await send(world, hold, "late")
    assert world.published[-1] == "late"  # once open, at once


async def test_a_release_by_another_kind_confirms_but_does_not_let_this_out_first() -> None:
    world = World(kind="llm")
    hold = world.specs.hold(KEY, upstream="stt")
    await send(world, hold, "delta")
    world.specs.note(Release(*KEY, kind="vad"))
    await asyncio.sleep(0)
    assert world.published == [] and not hold.settled.is_set()
    world.specs.note(Release(*KEY, kind="stt"))
    await world.specs.finish(hold)
    assert world.published == ["delta"]


async def test_abandon_drops_what_was_held_and_what_comes_after() -> None:
    world = World()
    hold = world.specs.hold(KEY, upstream="vad")
    await send(world, hold, "transcript")
    world.specs.note(Abandon(*KEY))
    await send(world, hold, "later")
    assert not await world.specs.settle(hold)
    assert hold.dropped and world.published == [] and world.released == []


async def test_releasing_another_attempt_of_the_turn_drops_this_one() -> None:
    world = World()
    hold = world.specs.hold(KEY, upstream="vad")
    world.specs.note(Release("s1", "u5", "p30", kind="vad"))
    assert hold.dropped


async def test_a_hold_made_after_the_verdict_is_settled_at_once() -> None:
    world = World()
    world.specs.note(Release(*KEY, kind="vad"))
    opened = world.specs.hold(KEY, upstream="vad")
    world.specs.note(Abandon("s1", "u5", "p9"))
    dropped = world.specs.hold(("s1", "u5", "p9"), upstream="vad")
    assert await world.specs.settle(opened) and dropped.dropped


async def test_a_worker_that_missed_the_verdict_asks_events(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(speculation, "CHECK_EVERY_S", 0.01)
    world = World(verdict="confirmed")
    hold = world.specs.hold(KEY, upstream="vad")
    await send(world, hold, "transcript")
    await world.specs.finish(hold)
    assert world.asked and world.published == ["transcript"]


async def test_a_hold_nothing_settles_is_dropped_in_the_end(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(speculation, "CHECK_EVERY_S", 0.01)
    monkeypatch.setattr(speculation, "HOLD_MAX_S", 0.05)
    world = World()
    hold = world.specs.hold(KEY, upstream="vad")
    await send(world, hold, "transcript")
    assert not await world.specs.settle(hold)
    assert world.published == []


async def test_a_failed_flush_raises_to_the_runtime() -> None:
    world = World()
    hold = world.specs.hold(KEY, upstream="vad")

    async def broken() -> None:
        raise TimeoutError("nats is away")

    await hold.send(broken)
    world.specs.note(Release(*KEY, kind="vad"))
    with pytest.raises(TimeoutError):
        await world.specs.finish(hold)
    assert world.released == []


async def test_forget_leaves_no_hold_behind() -> None:
    world = World()
    hold = world.specs.hold(KEY, upstream="vad")
    world.specs.forget(hold)
    assert world.specs.holds == {}
