"""Morgan across three namespaced hosts keeps every turn, once, through failures.

Each scenario counts at the client: every turn it started ends with exactly one
transcript, one reply.done and all the audio it announced, and nothing twice.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from streams import definitions
from testbed import netns
from testbed.audio import QUESTIONS, silence, speak
from testbed.chaos import chaos_run
from testbed.conversation import Talker
from testbed.deployment import HOSTS, Deployment, connections, start_morgan

pytestmark = pytest.mark.netns
PARTITION_S = 30.0


@pytest.fixture(scope="module")
def utterances() -> list[bytes]:
    return [silence(300) + speak(p) + silence(900) for p in QUESTIONS]


@pytest.fixture(scope="module")
def morgan(
    network_factory: type[netns.Network], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    net = network_factory(HOSTS, tmp_path_factory.mktemp("failover")).up()
    try:
        dep = asyncio.run(start_morgan(net))
        yield dep
        assert dep.violations() == [], "a role lacks a permission it needs"
    finally:
        net.down()


@pytest_asyncio.fixture
async def healthy(morgan: Deployment) -> AsyncIterator[Deployment]:
    """Every host reachable, every node and worker running, before and after the test."""
    async with morgan.healed():
        yield morgan


async def say(talker: Talker, dep: Deployment, pcm: bytes, timeout: float = 90.0) -> None:
    """Speak and wait for the complete reply; on failure, show what every part was doing."""
    started = time.monotonic()
    assert await talker.say(pcm, timeout=timeout), (
        f"no complete reply in {time.monotonic() - started:.0f} s\n{talker.describe()}\n"
        f"{dep.diagnose()}\n{dep.logs()}"
    )


def assert_every_turn_once(talker: Talker, dep: Deployment) -> None:
    tally = talker.tally()
    print(tally.line())
    assert (tally.started, tally.lost, tally.duplicated, tally.extra) == (
        tally.completed,
        0,
        0,
        0,
    ), f"{tally.line()}\n{talker.describe()}\n{dep.logs()}"


@pytest.mark.parametrize("gateway", ["gw", "gw2"])
async def test_a_conversation_across_three_hosts_gets_every_reply_once(
    healthy: Deployment, utterances: list[bytes], gateway: str
) -> None:
    """``gw`` shares a host with a node; ``gw2`` on gpu2 reaches every node through a delay
    proxy, so each audio frame, work message, event and ack crosses 40 ms more each way."""
    talker = await Talker.open(healthy.url_of(gateway))
    try:
        for pcm in utterances[:2]:
            await say(talker, healthy, pcm)
    finally:
        await talker.close()
    assert_every_turn_once(talker, healthy)
    assert all(t.transcript for t in talker.spoken_turns())


async def test_killing_a_nats_node_mid_conversation_loses_no_turn(
    healthy: Deployment, utterances: list[bytes]
) -> None:
    talker = await Talker.open(healthy.url_of("gw"))
    try:
        await say(talker, healthy, utterances[0])
        cpu = healthy.net["cpu"]
        [(node, _)] = [
            (n, c) for n, c in connections(healthy, "morgan-gateway") if c["ip"] == cpu.ip
        ]
        speaking = asyncio.create_task(talker.say(utterances[1]))
        await talker.wait_until(lambda: len(talker.spoken_turns()) >= 2, 60)
        node.kill(healthy.nats[node.name])  # the gateway's own node, mid-turn
        assert await speaking, f"{talker.describe()}\n{healthy.diagnose()}\n{healthy.logs()}"
        await say(talker, healthy, utterances[2])
    finally:
        await talker.close()
    assert_every_turn_once(talker, healthy)


async def test_a_processor_host_partitioned_for_30_s_then_healed_duplicates_no_turn(
    healthy: Deployment, utterances: list[bytes]
) -> None:
    gpu1 = healthy.net["gpu1"]
    talker = await Talker.open(healthy.url_of("gw"))
    try:
        await say(talker, healthy, utterances[0])
        cut = asyncio.create_task(say(talker, healthy, utterances[1], timeout=PARTITION_S + 60))
        await talker.wait_until(lambda: len(talker.spoken_turns()) >= 2, 60)
        healthy.net.partition(gpu1)  # its STT/TTS workers and its NATS node, mid-turn
        cut_at = time.monotonic()
        await cut  # completed by the other hosts while gpu1 is still cut off
        # the next turn, during the cut (only now: speaking over a reply would cancel it)
        await say(talker, healthy, utterances[2], timeout=60)
        await asyncio.sleep(max(0.0, PARTITION_S - (time.monotonic() - cut_at)))  # hold the cut
        healthy.net.heal(gpu1)
        await healthy.wait_formed()
        await say(talker, healthy, utterances[3])
    finally:
        await talker.close()
    assert_every_turn_once(talker, healthy)


async def test_killing_the_vad_mid_utterance_moves_the_claim_and_transcribes_once(
    healthy: Deployment, utterances: list[bytes]
) -> None:
    talker = await Talker.open(healthy.url_of("gw"))
    try:
        await say(talker, healthy, utterances[0])
        before = {(h.ip, c["cid"]): c["out_msgs"] for h, c in connections(healthy, "morgan-vad")}
        speaking = asyncio.create_task(talker.say(utterances[1], realtime=1.0))
        await asyncio.sleep(0.8)  # into the utterance (sent in real time)
        grew = {
            (h.ip, c["cid"]): c["out_msgs"] - before.get((h.ip, c["cid"]), 0)
            for h, c in connections(healthy, "morgan-vad")
        }
        holder_ip = max(grew, key=lambda k: grew[k])[0]
        victim = "vad-a" if holder_ip == healthy.net["cpu"].ip else "vad-b"
        healthy.kill(victim)  # the worker reading this session's frames right now
        assert await speaking, f"{talker.describe()}\n{healthy.diagnose()}\n{healthy.logs()}"
    finally:
        await talker.close()
    assert_every_turn_once(talker, healthy)
    transcripts = [e for e in talker.events if e["type"] == "transcript"]
    assert len(transcripts) == 2, transcripts


async def test_turns_over_links_losing_2_percent_each_way_all_complete_once(
    healthy: Deployment, utterances: list[bytes]
) -> None:
    for host in healthy.nodes:
        healthy.net.loss(host, 2.0)  # ~4 % between two hosts (out at one, in at the other)
    talker = await Talker.open(healthy.url_of("gw"))
    try:
        for pcm in utterances[:3]:
            await say(talker, healthy, pcm, timeout=120)
    finally:
        await talker.close()
    assert_every_turn_once(talker, healthy)


async def delivered(js: JetStreamContext, *durables: str) -> int:
    """Messages the consumers have delivered so far (confirmed and speculative work)."""
    infos = [await js.consumer_info(definitions.WORK, d) for d in durables]
    return sum(i.delivered.consumer_seq for i in infos)


async def test_killing_the_only_gpu_stt_mid_turn_completes_the_turn_on_cpu(
    healthy: Deployment, utterances: list[bytes]
) -> None:
    healthy.kill("stt-gpu2")  # leave one gpu-tier STT
    nc = await healthy.connect("tier-probe")
    js = nc.jetstream()
    cpu_before = await delivered(js, "stt-cpu", "stt-cpu-spec")
    talker = await Talker.open(healthy.url_of("gw"))
    try:
        sent = asyncio.Event()  # the utterance (speculative or not) went to the gpu tier

        async def on_gpu_work(_: Msg) -> None:
            sent.set()

        for subject in ("morgan.work.stt.gpu", "morgan.work.stt.gpu.spec"):
            await nc.subscribe(subject, cb=on_gpu_work)
        speaking = asyncio.create_task(talker.say(utterances[0], timeout=30))
        await asyncio.wait_for(sent.wait(), 30)
        healthy.kill("stt-gpu1")  # the utterance is on its way to (or in) the gpu worker
        assert await speaking, f"{talker.describe()}\n{healthy.diagnose()}\n{healthy.logs()}"
        cpu_after = await delivered(js, "stt-cpu", "stt-cpu-spec")
    finally:
        await talker.close()
        await nc.close()
    assert_every_turn_once(talker, healthy)
    assert cpu_after > cpu_before, "the turn was not transcribed on the cpu tier"


async def test_chaos_small_conversations_survive_random_stt_llm_tts_kills(
    healthy: Deployment, utterances: list[bytes]
) -> None:
    """VAD kills are left to ``bench/scale.py --chaos`` (see docs/multihost.md: repeated
    VAD takeovers can split one utterance into two turns)."""
    result = await chaos_run(
        healthy,
        [healthy.url_of("gw"), healthy.url_of("gw2")],
        utterances,
        conversations=3,
        turns=3,
        interval_s=5.0,
        kill_vad=False,
    )
    print(f"chaos: {result.tally.line()}; kills {result.kills} in {result.seconds:.0f} s")
    t = result.tally
    assert result.kills, "the chaos script killed nothing"
    assert (t.completed, t.lost, t.duplicated, t.extra) == (t.started, 0, 0, 0), (
        f"{t.line()}\n" + "\n".join(result.turns)
    )
