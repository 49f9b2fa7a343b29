"""The embedded nats-server, idempotent stream definitions, and service discovery."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import ConsumerConfig, RetentionPolicy, StreamConfig

from processors import stt, vad
from processors.spec import EventTap, Spec
from schemas import Transcript
from streams import definitions, embedded
from streams.settings import Settings
from tests.integration.workers import running


async def test_embedded_server_reports_its_chosen_ports_and_serves_monitoring(
    tmp_path: Path,
) -> None:
    async with await embedded.start(store_dir=tmp_path / "n") as srv:
        async with httpx.AsyncClient() as http:
            varz = (await http.get(srv.monitor_url + "/varz")).json()
        jsz = varz["jetstream"]["config"]
    assert srv.port > 0 and varz["port"] == srv.port
    assert jsz["store_dir"].startswith(str(tmp_path))
    assert srv.process.returncode is not None  # stopped by the context manager


async def test_a_server_that_cannot_start_says_why(tmp_path: Path) -> None:
    async with await embedded.start(store_dir=tmp_path / "a") as first:
        with pytest.raises(embedded.ServerError, match="address already in use"):
            await embedded.start(store_dir=tmp_path / "b", port=first.port)


async def test_applying_the_definitions_twice_changes_nothing(
    js: JetStreamContext, settings: Settings
) -> None:
    before = {s.config.name: s.config for s in await js.streams_info()}
    await definitions.apply(js, settings)
    after = {s.config.name: s.config for s in await js.streams_info()}
    assert before.keys() == after.keys() == {"AUDIO", "WORK", "EVENTS"}
    assert all(before[n].subjects == after[n].subjects for n in before)


async def test_a_start_over_an_older_config_updates_it_in_place(
    nc: Client, settings: Settings
) -> None:
    js = nc.jetstream()
    # what an older Morgan left behind: other limits, another ack wait
    await js.add_stream(StreamConfig(name="EVENTS", subjects=["morgan.events.>"], max_age=60))
    await js.publish("morgan.events.s.transcript", b"{}")
    await js.add_stream(
        StreamConfig(
            name="WORK",
            subjects=["morgan.work.>"],
            retention=RetentionPolicy.WORK_QUEUE,
        )
    )
    await js.add_consumer(
        "WORK",
        ConsumerConfig(durable_name="stt-cpu", filter_subject="morgan.work.stt.cpu", ack_wait=99),
    )
    await definitions.apply(js, settings, [c for _, c in stt.SPEC.consumers(settings, ("cpu",))])
    events = await js.stream_info("EVENTS")
    stt_cpu = await js.consumer_info("WORK", "stt-cpu")
    assert events.config.max_age == settings.events_max_age_s
    assert events.state.messages == 1  # kept its data
    assert stt_cpu.config.ack_wait == stt.SPEC.ack_wait(settings) != 99
    assert (stt_cpu.config.metadata or {})[definitions.INPUT] == "work"


async def _nothing(*_: object) -> None:
    return None


async def test_a_tap_kind_gets_one_durable_on_events_that_sees_only_its_types_from_now_on(
    js: JetStreamContext, settings: Settings
) -> None:
    await js.publish("morgan.events.s1.transcript", b"{}")  # before the tap: not seen
    tap = Spec(
        kind="keywords",
        input=EventTap(types=("transcript", "reply.done")),
        accepts=(Transcript,),
        publishes=(),
        load=_nothing,
        handle=_nothing,
    )
    consumers = [c for _, c in tap.consumers(settings)]
    for _ in range(2):  # idempotent, as every worker of the kind applies them
        await definitions.apply(js, settings, consumers)
    for subject in ("transcript", "reply.delta", "reply.done"):
        await js.publish(f"morgan.events.s2.{subject}", b"{}")
    info = await js.consumer_info("EVENTS", "keywords")
    assert info.num_pending == 2
    assert (info.config.metadata or {})[definitions.INPUT] == "tap"


async def test_every_worker_answers_as_a_nats_micro_service(
    nc: Client, js: JetStreamContext, settings: Settings
) -> None:
    async with running(vad.SPEC, settings):
        ping = json.loads((await nc.request("$SRV.PING.morgan-vad", b"", timeout=5)).data)
        info = json.loads((await nc.request("$SRV.INFO.morgan-vad", b"", timeout=5)).data)
        stats = json.loads((await nc.request("$SRV.STATS.morgan-vad", b"", timeout=5)).data)
        status = json.loads((await nc.request("morgan.svc.vad.status", b"", timeout=5)).data)
    assert ping["name"] == "morgan-vad" and ping["metadata"]["tiers"] == "cpu"
    assert info["endpoints"][0]["subject"] == "morgan.svc.vad.status"
    assert stats["name"] == "morgan-vad"
    assert status["kind"] == "vad" and status["in_flight"] == 0
