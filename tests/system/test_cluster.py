"""A 3-node JetStream cluster across 3 namespaced hosts, started with ``morgan nats``."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio
from nats.aio.client import Client
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig

from streams import bus, definitions
from testbed import netns
from testbed.deployment import NATS_PORT, Deployment

pytestmark = pytest.mark.netns
NAMES = ["n1", "n2", "n3"]
PARTITION_S = 30.0


@pytest.fixture(scope="module")
def cluster(
    network_factory: type[netns.Network], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    net = network_factory(NAMES, tmp_path_factory.mktemp("cluster")).up()
    try:
        dep = Deployment(net)
        asyncio.run(dep.start_cluster(NAMES))
        asyncio.run(dep.apply_definitions())
        yield dep
    finally:
        net.down()


@pytest_asyncio.fixture
async def healthy(cluster: Deployment) -> AsyncIterator[Deployment]:
    """The cluster with every node up and no faults, before and after each test."""
    async with cluster.healed():
        yield cluster


def host_of(dep: Deployment, url: str) -> netns.Host:
    return next(h for h in dep.nodes if f"{h.ip}:{NATS_PORT}" in url)


def stream_state(dep: Deployment, host: netns.Host, stream: str) -> dict[str, Any] | None:
    """The stream as this node's own replica sees it (its /jsz), or None if it has none."""
    jsz = dep.monitor(host, "/jsz?streams=true")
    for account in jsz.get("account_details") or []:
        for detail in account.get("stream_detail") or []:
            if detail["name"] == stream:
                state: dict[str, Any] = detail["state"]
                return state
    return None


async def publish_acked(js: JetStreamContext, subject: str, i: int, deadline: float) -> None:
    """Publish message ``i`` until the cluster acknowledges it (same id: dedup on retry)."""
    while True:
        try:
            await js.publish(subject, str(i).encode(), headers={bus.MSG_ID: f"{subject}.{i}"},
                             timeout=2.0)  # fmt: skip
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


class Reader:
    """A durable R3 pull consumer that records every message body delivered to it."""

    def __init__(self, js: JetStreamContext, subject: str, durable: str) -> None:
        self.js, self.subject, self.durable = js, subject, durable
        self.seen: list[int] = []

    async def run(self, stop: asyncio.Event) -> None:
        cfg = ConsumerConfig(
            durable_name=self.durable,
            filter_subject=self.subject,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=5.0,
            num_replicas=3,
        )
        deadline = time.monotonic() + 30
        while True:  # a consumer leader is being elected just now: ask again
            try:
                await definitions.ensure_consumer(self.js, definitions.EVENTS, cfg)
                break
            except (NatsError, TimeoutError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
        sub = await self.js.pull_subscribe_bind(self.durable, stream=definitions.EVENTS)
        while not stop.is_set():
            try:
                msgs = await sub.fetch(50, timeout=1.0)
            except Exception:  # timeout, or the node went away: ask again
                continue
            for m in msgs:
                # Delivered is what counts: an ack whose reply is lost in the failover
                # may still have reached the server, and then it never comes again.
                self.seen.append(int(m.data))
                with contextlib.suppress(Exception):
                    await m.ack_sync(timeout=2.0)


async def test_three_namespaced_hosts_form_one_cluster_with_r3_streams(
    healthy: Deployment,
) -> None:
    for host in healthy.nodes:
        routes = healthy.monitor(host, "/routez")
        assert {r["remote_name"] for r in routes["routes"]} == {
            h.name for h in healthy.nodes if h is not host
        }
        assert all(r["ip"].startswith("10.77.") for r in routes["routes"])
    nc = await healthy.connect()
    try:
        js = nc.jetstream()
        for name in (definitions.AUDIO, definitions.WORK, definitions.EVENTS):
            info = await js.stream_info(name)
            assert info.config.num_replicas == 3
            assert info.cluster is not None and info.cluster.leader in NAMES
            assert len(info.cluster.replicas or []) == 2
    finally:
        await nc.close()


async def test_a_client_keeps_publishing_and_consuming_when_its_node_is_killed(
    healthy: Deployment,
) -> None:
    nc: Client = await healthy.connect("kill-probe")
    js = nc.jetstream()
    subject = f"morgan.events.probe-kill-{time.monotonic_ns()}.x"
    reader = Reader(js, subject, f"probe-kill-{time.monotonic_ns()}")
    stop = asyncio.Event()
    reading = asyncio.create_task(reader.run(stop))
    total, acked = 300, 0
    killed: netns.Host | None = None
    try:
        deadline = time.monotonic() + 90
        for i in range(total):
            if i == 100:
                assert nc.connected_url is not None
                killed = host_of(healthy, nc.connected_url.netloc)
                killed.kill(healthy.nats[killed.name])
            await publish_acked(js, subject, i, deadline)
            acked += 1
        assert killed is not None
        assert nc.connected_url is not None and killed.ip not in nc.connected_url.netloc
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(120):  # a new consumer leader, redelivery after ack_wait
                while set(reader.seen) < set(range(total)):
                    await asyncio.sleep(0.2)
        stored = (await js.stream_info(definitions.EVENTS, subjects_filter=subject)).state
    finally:
        stop.set()
        try:
            await asyncio.wait_for(reading, 10)
        finally:
            await nc.close()  # even when the reader failed: no socket left for later tests
    assert acked == total
    assert stored.messages == total, "the stream lost an acknowledged message"
    missing = sorted(set(range(total)) - set(reader.seen))
    assert not missing, f"stored but never delivered to the consumer: {missing[:20]}"


async def test_a_partitioned_node_rejoins_and_catches_up_after_heal(healthy: Deployment) -> None:
    n1, n3 = healthy.net["n1"], healthy.net["n3"]
    nc = await bus.connect(healthy.settings(nats_url=healthy.urls([n1, healthy.net["n2"]])), "p")
    js = nc.jetstream()
    subject = f"morgan.events.probe-part-{time.monotonic_ns()}.x"
    try:
        await publish_acked(js, subject, -1, time.monotonic() + 30)
        healthy.net.partition(n3)
        cut_at = time.monotonic()
        i = 0
        while time.monotonic() - cut_at < PARTITION_S:  # the majority keeps accepting writes
            await publish_acked(js, subject, i, cut_at + PARTITION_S + 30)
            i += 1
            await asyncio.sleep(0.05)
        leader_state = stream_state(healthy, n1, definitions.EVENTS)
        lagging = stream_state(healthy, n3, definitions.EVENTS)
        assert leader_state is not None and lagging is not None
        assert lagging["last_seq"] < leader_state["last_seq"], "n3 was not cut off"
        healthy.net.heal(n3)
        healed_at = time.monotonic()
        async with asyncio.timeout(60):
            while True:
                state = stream_state(healthy, n3, definitions.EVENTS)
                if state is not None and state["last_seq"] >= leader_state["last_seq"]:
                    break
                await asyncio.sleep(0.5)
        caught_up_s = time.monotonic() - healed_at
        await healthy.wait_formed()
    finally:
        await nc.close()
    assert i > 100, f"only {i} writes acknowledged while n3 was partitioned"
    print(f"n3 cut off {PARTITION_S:.0f} s, {i} writes meanwhile, caught up {caught_up_s:.1f} s")


async def test_a_client_through_the_delay_proxy_sees_the_added_latency(
    healthy: Deployment,
) -> None:
    n1, n2 = healthy.net["n1"], healthy.net["n2"]
    proxy = healthy.net.delay(n2, 14222, f"{n1.ip}:{NATS_PORT}", 40.0)
    await proxy.wait_ready(30)
    direct = await bus.connect(healthy.settings(nats_url=f"nats://{n1.ip}:{NATS_PORT}"), "d")
    slow = await bus.connect(healthy.settings(nats_url=f"nats://{n2.ip}:14222"), "s")
    try:
        times: dict[str, float] = {}
        for name, client in (("direct", direct), ("slow", slow)):
            started = time.monotonic()
            for _ in range(5):
                await client.flush(timeout=5)
            times[name] = (time.monotonic() - started) / 5
        ack = await slow.jetstream().publish("morgan.events.probe-delay.x", b"1", timeout=5)
    finally:
        await direct.close()
        await slow.close()
        n2.kill(proxy)
    assert ack.stream == definitions.EVENTS
    assert times["slow"] >= 0.08 > times["direct"], times  # 2 x 40 ms per round trip
