"""A processor in Consul: registered with its tags, warning while cut off from NATS."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest_asyncio

from processors import vad
from streams import embedded
from streams.settings import Settings
from testbed.ports import free_port
from tests.fakes.consul import FakeConsul
from tests.integration.bus_helpers import until
from tests.integration.workers import running


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeConsul]:
    async with FakeConsul(reap_interval_s=0.05, min_deregister_s=0.0) as f:
        yield f


def check_of(fake: FakeConsul, service: str) -> str:
    ids = [cid for cid in fake.checks if service in cid]
    return fake.checks[ids[0]].status if ids else "absent"


async def test_a_worker_registers_goes_warning_without_nats_and_deregisters_on_exit(
    settings: Settings, fake: FakeConsul, nats_server: embedded.EmbeddedNats, tmp_path: Path
) -> None:
    s = settings.model_copy(update={"consul_http_addr": fake.addr, "consul_ttl_s": 1.0})
    async with running(vad.SPEC, s):
        [service] = [v for v in fake.services.values() if v.name == "morgan-vad"]
        assert {"vad", "cuda=no", "model=silero-vad onnx"} <= set(service.tags)
        assert service.meta["nats_client_id"]
        await until(lambda: check_of(fake, "morgan-vad") == "passing")
        await nats_server.kill()
        await until(lambda: check_of(fake, "morgan-vad") == "warning", timeout=20)
        async with await embedded.start(store_dir=tmp_path / "nats", port=nats_server.port):
            await until(lambda: check_of(fake, "morgan-vad") == "passing", timeout=30)
    assert not [v for v in fake.services.values() if v.name == "morgan-vad"]


async def test_a_worker_serving_metrics_registers_its_metrics_port_for_prometheus(
    settings: Settings, fake: FakeConsul
) -> None:
    """Prometheus finds processors through Consul: the registered port is /metrics."""
    port = free_port()
    s = settings.model_copy(update={"consul_http_addr": fake.addr, "metrics_port": port})
    async with running(vad.SPEC, s):
        [service] = [v for v in fake.services.values() if v.name == "morgan-vad"]
        assert service.port == port
        async with httpx.AsyncClient() as http:
            scraped = await http.get(f"http://127.0.0.1:{port}/metrics")
        assert 'morgan_processor_model_load_seconds{kind="vad"}' in scraped.text
