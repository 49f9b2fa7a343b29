"""Service registration against the fake Consul: tags, TTL keepalive, reaping, outages."""

from __future__ import annotations

import asyncio
import os
import platform
import time
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import Any

import pytest_asyncio

from streams.consul import Consul
from streams.registry import Registration, backoff, live_services, registered
from streams.settings import Settings
from tests.fakes.consul import FakeConsul
from tests.integration.bus_helpers import until


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeConsul]:
    async with FakeConsul(reap_interval_s=0.05, min_deregister_s=0.0) as f:
        yield f


TTL_S = 1.0


def consul_settings(tmp_path: Path, addr: str, **more: Any) -> Settings:
    fields: dict[str, Any] = {"consul_ttl_s": TTL_S, "consul_deregister_after_s": 0.5, **more}
    return Settings(data_dir=tmp_path, consul_http_addr=addr, **fields)


HW = {"cuda": True, "os": "linux", "arch": "x86_64"}
SERVICE_ID = f"morgan-stt-{platform.node()}-{os.getpid()}"
CHECK_ID = f"service:{SERVICE_ID}"


def stt(settings: Settings) -> AbstractAsyncContextManager[Registration]:
    return registered(
        settings,
        "stt",
        tier_tags=("gpu", "cpu"),
        hw_tags=HW,
        model="tiny.en",
        nats_client_id="42",
    )


async def test_registration_carries_name_tags_meta_and_a_passing_ttl_check(
    fake: FakeConsul, tmp_path: Path
) -> None:
    async with stt(consul_settings(tmp_path, fake.addr)) as reg:
        assert reg.registered
        service = fake.services[SERVICE_ID]
        assert service.name == "morgan-stt"
        assert service.tags == [
            "stt",
            "tier=gpu",
            "tier=cpu",
            "cuda=yes",
            "os=linux",
            "arch=x86_64",
            "model=tiny.en",
        ]
        assert service.meta["nats_client_id"] == "42"
        assert service.meta["version"]
        check = fake.checks[CHECK_ID]
        assert (check.ttl_s, check.deregister_after_s) == (TTL_S, 0.5)
        await until(lambda: check.status == "passing")
        async with Consul(consul_settings(tmp_path, fake.addr)) as consul:
            [live] = await live_services(consul, "stt", tier="gpu")
            assert live.id == SERVICE_ID
            assert live.tag_values("tier") == ("gpu", "cpu")
            assert live.tag("cuda") == "yes"


async def test_keepalive_holds_the_check_passing_across_many_ttls(
    fake: FakeConsul, tmp_path: Path
) -> None:
    async with stt(consul_settings(tmp_path, fake.addr)):
        check = fake.checks[CHECK_ID]
        await until(lambda: check.status == "passing")
        loop = asyncio.get_running_loop()
        end = loop.time() + 2 * TTL_S
        while loop.time() < end:  # two TTLs: never critical meanwhile
            assert check.status == "passing"
            await asyncio.sleep(0.02)


async def test_clean_exit_deregisters(fake: FakeConsul, tmp_path: Path) -> None:
    async with stt(consul_settings(tmp_path, fake.addr)):
        assert SERVICE_ID in fake.services
    assert SERVICE_ID not in fake.services
    assert CHECK_ID not in fake.checks


async def test_a_hung_process_goes_critical_and_consul_reaps_it(
    fake: FakeConsul, tmp_path: Path
) -> None:
    async with stt(consul_settings(tmp_path, fake.addr)) as reg:
        check = fake.checks[CHECK_ID]
        await until(lambda: check.status == "passing")
        assert reg.task is not None
        reg.task.cancel()  # the process stops refreshing
        started = time.monotonic()
        await until(lambda: check.status == "critical")
        critical_after = time.monotonic() - started
        await until(lambda: SERVICE_ID not in fake.services)
        reaped_after = time.monotonic() - started
    assert critical_after <= TTL_S + 0.5
    assert reaped_after >= 0.5  # deregister-after counts from going critical


async def test_degraded_reports_warning_and_healthy_returns_to_passing(
    fake: FakeConsul, tmp_path: Path
) -> None:
    settings = consul_settings(tmp_path, fake.addr)
    async with stt(settings) as reg, Consul(settings) as consul:
        check = fake.checks[CHECK_ID]
        await until(lambda: check.status == "passing")
        reg.degraded("model reloading")
        await until(lambda: check.status == "warning")
        assert check.output == "model reloading"
        assert await live_services(consul, "stt") == []  # routing skips a warning worker
        reg.healthy()
        await until(lambda: check.status == "passing")
        assert [s.id for s in await live_services(consul, "stt")] == [SERVICE_ID]


async def test_registration_retries_with_backoff_until_consul_starts(tmp_path: Path) -> None:
    down = FakeConsul(reap_interval_s=0.05, min_deregister_s=0.0)
    down.reserve()  # the address exists but refuses connections
    try:
        async with stt(consul_settings(tmp_path, down.addr)) as reg:
            assert not reg.registered  # startup went on without Consul
            await until(lambda: reg.attempts >= 3)
            await down.start()
            await until(lambda: SERVICE_ID in down.services)
            await until(lambda: down.checks[CHECK_ID].status == "passing")
            assert reg.registrations == 1
    finally:
        await down.close()


async def test_reregisters_after_consul_restarts_empty(fake: FakeConsul, tmp_path: Path) -> None:
    async with stt(consul_settings(tmp_path, fake.addr)) as reg:
        await until(lambda: fake.checks[CHECK_ID].status == "passing")
        await fake.stop()
        fake.reset()  # a dev-mode agent forgets its services
        await fake.start()
        await until(lambda: CHECK_ID in fake.checks and fake.checks[CHECK_ID].status == "passing")
        assert reg.registrations == 2
        assert fake.services[SERVICE_ID].meta["nats_client_id"] == "42"


async def test_without_consul_registration_is_a_noop(tmp_path: Path) -> None:
    async with stt(Settings(data_dir=tmp_path, consul_http_addr="")) as reg:
        reg.degraded("still fine to call")
        assert reg.task is None and not reg.registered


async def test_the_acl_token_is_sent(tmp_path: Path) -> None:
    async with FakeConsul(token="s3cret") as secured:
        good = consul_settings(tmp_path, secured.addr, consul_http_token="s3cret")
        async with stt(good) as reg:
            assert reg.registered
        bad = consul_settings(tmp_path, secured.addr, consul_http_token="wrong")
        async with stt(bad) as reg:
            assert not reg.registered and reg.attempts == 1
        assert "s3cret" not in repr(good)


def test_retry_backoff_doubles_and_is_capped() -> None:
    delays = [backoff(n, cap=2.0) for n in range(1, 8)]
    assert 0.15 <= delays[0] <= 0.2
    assert delays[2] > delays[0]
    assert all(d <= 2.0 for d in delays) and delays[-1] >= 1.5
