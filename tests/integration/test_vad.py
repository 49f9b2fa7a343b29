"""The VAD processor against a real nats-server and the real Silero model."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import signal
import uuid
from types import SimpleNamespace
from typing import cast

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError

from processors import claims, vad
from processors.context import BusContext
from schemas import (
    AudioFrame,
    Cancel,
    SessionClaim,
    SessionEnd,
    SpeechStarted,
    SpeechStopped,
    Subjects,
    Unavailable,
    Utterance,
)
from streams import bus, definitions
from streams.settings import Settings
from testbed.audio import silence, speak, steady_turn, transcribe
from tests.integration.bus_helpers import Inbox, stream_inbox, until, work_inbox
from tests.integration.workers import ChildWorker, running

FRAME = 1024  # bytes: 32 ms at 16 kHz


class Mic:
    """Plays the gateway's part: numbered frames of one session onto the bus."""

    def __init__(self, js: JetStreamContext, settings: Settings) -> None:
        self.js, self.sid, self.seq, self.offset = js, uuid.uuid4().hex, 0, 0
        self.subjects = Subjects(settings.prefix)

    async def claim(self) -> None:
        await bus.publish(
            self.js, self.subjects.work("vad"), SessionClaim(self.sid), msg_id=f"claim.{self.sid}"
        )

    async def live(self, pcm: bytes, chunk_ms: int = 100) -> None:
        """Send ``pcm`` at the pace a microphone makes it."""
        step = chunk_ms * 32  # bytes
        for i in range(0, len(pcm), step):
            await self.send(pcm[i : i + step])
            await asyncio.sleep(chunk_ms / 1000)

    async def send(self, pcm: bytes) -> None:
        for i in range(0, len(pcm), FRAME):
            part = pcm[i : i + FRAME]
            self.seq += 1
            frame = AudioFrame(self.sid, self.seq, offset=self.offset, pcm=part)
            await bus.publish(self.js, self.subjects.audio_in(self.sid), frame)
            self.offset += len(part) // 2


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """These tests read utterances off STT's confirmed queue: no speculation (its tests
    are in test_speculation.py)."""
    return settings.model_copy(update={"vad_speculate_ms": 0})


@pytest.fixture(scope="module")
def sentence() -> bytes:
    return speak("please tell me a short story about a brave little fox")


async def test_speech_between_silences_becomes_one_transcribable_utterance(
    settings: Settings, js: JetStreamContext, sentence: bytes
) -> None:
    mic = Mic(js, settings)
    async with (
        work_inbox(js, "stt-cpu") as stt,
        stream_inbox(js, mic.subjects.events(mic.sid)) as events,
        running(vad.SPEC, settings),
    ):
        await mic.claim()
        await mic.send(silence(600) + sentence + silence(1200))
        utt = await stt.next(Utterance)
        started = await events.next(SpeechStarted)
        stopped = await events.next(SpeechStopped)
    assert stopped.turn == started.turn
    assert utt.sid == mic.sid and utt.turn == started.turn == "u1"
    words = transcribe(utt.pcm).lower()
    assert "fox" in words and "story" in words
    # pre-roll and tail: close to the spoken length, well under the whole input
    assert len(sentence) * 0.9 < len(utt.pcm) < len(sentence) + 2 * 16000


async def test_speech_during_a_reply_cancels_the_previous_turn(
    settings: Settings, js: JetStreamContext, nc: Client, sentence: bytes
) -> None:
    mic = Mic(js, settings)
    control = Inbox()
    await nc.subscribe(mic.subjects.control(mic.sid), cb=control.on_msg)
    async with work_inbox(js, "stt-cpu") as stt, running(vad.SPEC, settings):
        await mic.claim()
        await mic.send(silence(300) + sentence + silence(900))
        turn1 = await stt.next(Utterance)
        await mic.send(sentence + silence(900))
        cancel = await control.next(Cancel, timeout=30)
        turn2 = await stt.next(Utterance)
    assert cancel.turn == turn1.turn and cancel.reason == "barge-in"
    assert turn2.turn != turn1.turn


async def test_claim_moves_to_another_worker_when_the_first_dies_mid_utterance(
    settings: Settings, js: JetStreamContext, sentence: bytes
) -> None:
    mic = Mic(js, settings)
    first_worker = ChildWorker("vad", settings)
    async with (
        work_inbox(js, "stt-cpu") as stt,
        stream_inbox(js, mic.subjects.events(mic.sid)) as events,
    ):
        await first_worker.wait_ready()
        await mic.claim()
        half = len(sentence) // 4 * 2
        await mic.send(silence(600) + sentence[:half])
        started = await events.next(SpeechStarted)
        first_worker.kill()  # a crash: no drain, no acks
        await mic.send(sentence[half:] + silence(1200))
        async with running(vad.SPEC, settings):
            utt = await stt.next(Utterance)
            again = await stt.quiet_for(3.0)
            info = await js.stream_info(definitions.WORK)
    assert started.turn == utt.turn  # the same turn id on the new worker
    words = transcribe(utt.pcm).lower()
    assert "story" in words and "fox" in words
    assert again == []  # exactly one utterance for that turn
    assert info.state.messages >= 1  # the claim is still held, by the new worker


async def test_an_owner_cut_off_past_the_takeover_reads_no_more_frames_and_stops(
    settings: Settings, js: JetStreamContext, sentence: bytes
) -> None:
    """Split brain: the first owner is frozen (SIGSTOP, as a stalled link would leave it)
    until the claim moved, then wakes while the new owner is reading the session.

    The default 4 s claim ack wait: with the tests' 2 s a loaded machine can delay the
    new owner's heartbeat enough to move the claim once more (legitimately)."""
    settings = settings.model_copy(update={"claim_ack_wait_s": 4.0})
    mic = Mic(js, settings)
    first_worker = ChildWorker("vad", settings)
    try:
        async with (
            work_inbox(js, "stt-cpu") as stt,
            stream_inbox(js, mic.subjects.events(mic.sid)) as events,
        ):
            await first_worker.wait_ready()
            await mic.claim()
            await mic.send(silence(600) + sentence + silence(1200))
            first = await stt.next(Utterance)
            first_worker.proc.send_signal(signal.SIGSTOP)
            async with running(vad.SPEC, settings) as second:
                await until(lambda: bool(second.in_flight), timeout=30)  # claim moved
                first_worker.proc.send_signal(signal.SIGCONT)
                for _ in range(3):  # speech while both are awake
                    await mic.send(sentence + silence(1200))
                    await events.next(SpeechStopped, timeout=30)
                later = [await stt.next(Utterance) for _ in range(3)]
                extra = await stt.quiet_for(3.0)
                log = first_worker.log
                stopped = until(lambda: b"another worker" in b"".join(log), timeout=10)
                try:
                    await stopped
                except AssertionError:
                    raise AssertionError(b"".join(log).decode(errors="replace")) from None
                assert second.in_flight  # the new owner still holds the session
    finally:
        first_worker.kill()
    turns = [u.turn for u in [first, *later]]
    assert len(set(turns)) == 4 and extra == [], (turns, extra)
    for utt in later:  # every frame of every utterance reached the new owner
        assert len(sentence) * 0.9 < len(utt.pcm) < len(sentence) + 2 * 16000
        assert "short story" in transcribe(utt.pcm).lower()


async def test_a_takeover_that_failed_midway_is_redone_without_remaking_its_consumer(
    settings: Settings, js: JetStreamContext
) -> None:
    """During an election any takeover step can fail and the claim comes back; the retry
    must not delete the consumer the failed try made (a new R3 consumer waits out a raft
    election each time, which made takeovers during a partition take 20-40 s), nor try
    to remake it from the last owner's later ack floor (JetStream refuses to move a
    consumer's start, which kept a session without a VAD for over a minute)."""
    mic = Mic(js, settings)
    await mic.send(silence(300))
    ctx = cast(BusContext, SimpleNamespace(js=js, settings=settings, raw=None))

    def delivery() -> claims.Owner:  # the session's claim, delivered once more
        return claims.Owner("vad", mic.sid, ctx, ack_wait_s=4.0)

    await delivery().take_over()  # owner 1
    failing = delivery()  # owner 2: makes its consumer, then its record write fails

    async def refused(**changes: object) -> None:
        raise Unavailable("JetStream system temporarily unavailable")

    failing.save = refused  # type: ignore[method-assign]
    with pytest.raises(Unavailable):
        await failing.take_over()
    made = await js.consumer_info(definitions.AUDIO, f"vad-{mic.sid}-2")
    await mic.send(silence(300))  # meanwhile the cut-off owner 1 acknowledges more audio,
    reader = await js.pull_subscribe_bind(f"vad-{mic.sid}-1", stream=definitions.AUDIO)
    for frame in await reader.fetch(1000, timeout=2):  # so the retry finds a later ack floor
        await frame.ack_sync()
    retry = delivery()
    await retry.take_over()
    kept = await js.consumer_info(definitions.AUDIO, f"vad-{mic.sid}-2")
    names = {c.name for c in await js.consumers_info(definitions.AUDIO)}
    assert retry.durable == f"vad-{mic.sid}-2" and kept.created == made.created
    assert f"vad-{mic.sid}-1" not in names  # the last real owner's consumer is gone
    assert retry.record["owner"] == 2


async def test_session_end_releases_the_claim_and_the_session_consumer(
    settings: Settings, js: JetStreamContext, nc: Client
) -> None:
    mic = Mic(js, settings)
    async with running(vad.SPEC, settings) as worker:
        await mic.claim()
        await mic.send(silence(200))
        await until(lambda: bool(worker.in_flight))
        await bus.publish_core(nc, mic.subjects.control(mic.sid), SessionEnd(mic.sid))
        await until(lambda: not worker.in_flight)
    work = await js.stream_info(definitions.WORK)
    assert work.state.messages == 0
    names = [c.name for c in await js.consumers_info(definitions.AUDIO)]
    assert not [n for n in names if n.startswith(f"vad-{mic.sid}")]


async def test_a_stopping_worker_hands_its_sessions_over_at_once(
    settings: Settings, js: JetStreamContext, sentence: bytes
) -> None:
    slow = settings.model_copy(update={"claim_ack_wait_s": 30.0})
    mic = Mic(js, slow)
    async with work_inbox(js, "stt-cpu") as stt:
        async with running(vad.SPEC, slow) as a:
            await mic.claim()
            await mic.send(silence(200))
            await until(lambda: bool(a.in_flight))
        # the first worker drained and released the claim rather than let it time out (30 s)
        async with running(vad.SPEC, slow):
            await mic.send(sentence + silence(1200))
            utt = await stt.next(Utterance, timeout=20)
    assert utt.sid == mic.sid


def held(names: set[str], mics: list[Mic]) -> list[str]:
    """The sids of ``mics`` that have a VAD session consumer among ``names``."""
    return [m.sid for m in mics if any(n.startswith(f"vad-{m.sid}-") for n in names)]


async def audio_consumers(js: JetStreamContext) -> set[str]:
    return {c.name for c in await js.consumers_info(definitions.AUDIO)}


IDLE_MARGIN_S = 2.0
"""How long past ``session_idle_s`` a silent session may stay held: its last fetch (0.25 s)
and the ack, with room for a loaded machine. Before the fix a silent session counted as
heard whenever a fetch returned: with ``[]`` (nats-py ends about one idle fetch in ten
so) or with its own unacknowledged pre-roll frames, redelivered every ack wait."""


async def test_sessions_whose_client_went_silent_are_released_after_the_idle_limit(
    settings: Settings, js: JetStreamContext
) -> None:
    """Clients that vanished without session.end send nothing more: their sessions give
    back their slots as session.end would, claim acked and session consumer deleted."""
    idle = settings.model_copy(update={"session_idle_s": 2.0})
    mics = [Mic(js, idle) for _ in range(8)]
    async with running(vad.SPEC, idle) as worker:
        for mic in mics:
            await mic.claim()
            await mic.send(silence(200))
        await until(lambda: len(worker.in_flight) == len(mics))
        released = lambda: worker.handled == len(mics) and not worker.in_flight  # noqa: E731
        await until(released, timeout=idle.session_idle_s + IDLE_MARGIN_S)
        work = await js.stream_info(definitions.WORK)
        assert work.state.messages == 0  # every claim acked, none handed back
        assert held(await audio_consumers(js), mics) == []


async def test_a_session_that_keeps_sending_silence_outlives_the_idle_limit(
    settings: Settings, js: JetStreamContext
) -> None:
    idle = settings.model_copy(update={"session_idle_s": 1.0})
    mic = Mic(js, idle)
    async with running(vad.SPEC, idle) as worker:
        await mic.claim()
        await mic.send(silence(100))
        await until(lambda: bool(worker.in_flight))
        await mic.live(silence(4000 * int(idle.session_idle_s)))
        assert worker.in_flight and worker.handled == 0
        assert held(await audio_consumers(js), [mic]) == [mic.sid]


async def test_a_worker_full_of_abandoned_sessions_serves_new_ones_once_they_expire(
    settings: Settings, js: JetStreamContext, sentence: bytes
) -> None:
    idle = settings.model_copy(update={"session_idle_s": 2.0})
    spec = dataclasses.replace(vad.SPEC, concurrency=3)
    gone = [Mic(js, idle) for _ in range(spec.concurrency)]
    new = [Mic(js, idle) for _ in range(spec.concurrency)]
    async with (
        stream_inbox(js, f"{idle.prefix}.events.>") as events,
        running(spec, idle) as worker,
    ):
        for mic in gone:
            await mic.claim()
            await mic.send(silence(200))
        await until(lambda: len(worker.in_flight) == spec.concurrency)
        for mic in new:  # queued behind the abandoned sessions
            await mic.claim()
            await mic.send(silence(300) + sentence + silence(1200))
        heard: set[str] = set()
        async with asyncio.timeout(idle.session_idle_s + IDLE_MARGIN_S + 3):
            while len(heard) < len(new):
                heard.add((await events.next(SpeechStopped)).sid)
    assert heard == {mic.sid for mic in new}


async def test_a_worker_stopped_while_holding_many_sessions_logs_no_traceback(
    settings: Settings, js: JetStreamContext
) -> None:
    """Sessions left their subscriptions behind; one with a message taken off its queue
    by ``fetch`` (never marked done) kept nc.drain() waiting until the runtime cancelled
    it, which logged nats-py's ``_GatheringFuture exception was never retrieved``."""
    mics = [Mic(js, settings) for _ in range(20)]
    worker = ChildWorker("vad", settings)
    try:
        await worker.wait_ready()
        for mic in mics:
            await mic.claim()
            await mic.send(silence(200))

        async def all_held() -> bool:
            return len(held(await audio_consumers(js), mics)) == len(mics)

        await until(all_held, timeout=60)
        await asyncio.sleep(3)  # not a wait for anything: sessions sit idle between turns

        async def talk() -> None:  # and the clients keep sending while the worker stops
            while True:
                for mic in mics:
                    await mic.send(silence(32))
                await asyncio.sleep(0.03)

        talking = asyncio.create_task(talk())
        try:
            code = await asyncio.to_thread(worker.terminate)
        finally:
            talking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await talking
    finally:
        if worker.proc.poll() is None:
            worker.kill()
    log = b"".join(worker.log).decode(errors="replace")
    assert code == 0, log
    for bad in ("Traceback", "never retrieved", "exception was never"):
        assert bad not in log, log


async def test_audio_redelivered_during_a_long_utterance_is_not_heard_twice(
    settings: Settings, js: JetStreamContext, sentence: bytes
) -> None:
    """Frames held unacknowledged (an open utterance, pre-roll) come back from JetStream
    after the consumer's ack wait; they are audio the session already has."""
    quick = settings.model_copy(update={"claim_ack_wait_s": 1.0})
    mic = Mic(js, quick)
    async with work_inbox(js, "stt-cpu") as stt, running(vad.SPEC, quick):
        await mic.claim()
        await mic.live(silence(600) + sentence + silence(1200))
        utt = await stt.next(Utterance)
    assert len(sentence) * 0.9 < len(utt.pcm) < len(sentence) + 2 * 16000
    words = transcribe(utt.pcm).lower()
    assert "fox" in words and "story" in words


async def test_a_second_claim_for_a_held_session_takes_it_over_once_and_settles(
    settings: Settings, js: JetStreamContext, sentence: bytes
) -> None:
    """A gateway claims a session again (audio after a long silence) while its VAD still
    holds it: the second claim takes the session over, the first is dropped rather than
    redelivered every ack wait to take it back, and speech is heard once."""
    mic = Mic(js, settings)
    kv = await definitions.key_value(js, settings, definitions.OWNERS)

    async def owned_by(n: int) -> bool:
        with contextlib.suppress(KeyNotFoundError):
            return bool(json.loads((await kv.get(f"vad.{mic.sid}")).value or b"{}")["owner"] == n)
        return False

    async with (
        work_inbox(js, "stt-cpu") as stt,
        running(vad.SPEC, settings) as worker,
    ):
        await mic.claim()
        await mic.send(silence(300))
        await until(lambda: worker.in_flight != set())
        await bus.publish(
            js, mic.subjects.work("vad"), SessionClaim(mic.sid), msg_id=f"claim.{mic.sid}.2"
        )
        await until(lambda: owned_by(2))
        # Three claim ack waits: a redelivered first claim would have taken it back.
        await asyncio.sleep(3 * settings.claim_ack_wait_s)
        assert await owned_by(2) and len(worker.in_flight) == 1
        await mic.send(sentence + silence(1200))
        utt = await stt.next(Utterance)
        assert await stt.quiet_for(2.0) == []
    assert "fox" in transcribe(utt.pcm).lower()


async def test_the_end_of_turn_model_ends_a_finished_question_long_before_its_maximum(
    settings: Settings, js: JetStreamContext
) -> None:
    by_model = settings.model_copy(
        update={"vad_turn_model": True, "vad_turn_ask_ms": 200, "vad_turn_max_silence_ms": 1500}
    )
    mic = Mic(js, by_model)
    async with work_inbox(js, "stt-cpu") as stt, running(vad.SPEC, by_model):
        await mic.claim()
        await mic.send(silence(300) + steady_turn("Can you tell me a joke?") + silence(2000))
        utt = await stt.next(Utterance)
    assert utt.vad_tail_ms < 800  # "complete" after 200 ms of silence, not 1500


async def test_the_end_of_turn_model_waits_through_a_pause_in_an_unfinished_sentence(
    settings: Settings, js: JetStreamContext
) -> None:
    by_model = settings.model_copy(update={"vad_turn_model": True, "vad_silence_ms": 500})
    mic = Mic(js, by_model)
    async with work_inbox(js, "stt-cpu") as stt, running(vad.SPEC, by_model):
        await mic.claim()
        first, rest = steady_turn("My sister's name is"), steady_turn("Anna")
        await mic.send(silence(300) + first + silence(700) + rest + silence(2500))
        utt = await stt.next(Utterance)
        more = await stt.quiet_for(1.0)
    assert more == []  # one turn: a 900 ms pause is more than the 500 ms silence alone
    assert "anna" in transcribe(utt.pcm).lower()
