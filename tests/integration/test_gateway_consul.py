"""A gateway registers in Consul with the tags Traefik's consulCatalog routes by."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest_asyncio

from gateway import server
from gateway.presence import traefik_tags
from streams.settings import Settings
from testbed.ports import free_port
from tests.fakes.consul import FakeConsul


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeConsul]:
    async with FakeConsul(reap_interval_s=0.05, min_deregister_s=0.0) as f:
        yield f


def test_traefik_tags_route_every_path_to_the_gateway_port() -> None:
    tags = traefik_tags(8123)
    assert "traefik.enable=true" in tags
    assert "traefik.http.routers.morgan.rule=PathPrefix(`/`)" in tags
    assert "traefik.http.services.morgan.loadbalancer.server.port=8123" in tags
    assert not any(t.startswith("#") or "{" in t for t in tags)


async def test_gateway_registers_with_traefik_tags_and_deregisters_on_stop(
    settings: Settings, fake: FakeConsul
) -> None:
    port = free_port()
    s = settings.model_copy(
        update={"consul_http_addr": fake.addr, "http_port": port, "consul_ttl_s": 1.0}
    )
    gw = await server.start(s)
    try:
        async with httpx.AsyncClient(base_url=f"http://{fake.addr}") as consul:
            r = await consul.get("/v1/health/service/morgan-gateway", params={"passing": "1"})
            [entry] = r.json()
    finally:
        await gw.stop()
    service = entry["Service"]
    assert service["Port"] == port
    assert set(traefik_tags(port)) <= set(service["Tags"])
    assert "gateway" in service["Tags"]
    async with httpx.AsyncClient(base_url=f"http://{fake.addr}") as consul:
        r = await consul.get("/v1/health/service/morgan-gateway")
    assert r.json() == []
