"""The gateway follows live config (area ``gateway``) without a restart: from NATS KV,
and from Consul KV when CONSUL_HTTP_ADDR is set. Real nats-server, real uvicorn."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from fastapi import FastAPI
from nats.js import JetStreamContext
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from gateway.server import RunningGateway
from gateway.state import Gateway
from schemas import LlmRequest, Subjects
from streams import bus
from streams.config_source import ensure_bucket
from streams.consul import Consul
from streams.settings import Settings
from tests.fakes.consul import FakeConsul
from tests.integration.bus_helpers import until
from tests.integration.gateway_helpers import open_client, serving


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeConsul]:
    async with FakeConsul() as f:
        yield f


def state_of(srv: RunningGateway) -> Gateway:
    """The running gateway's shared state (what its live config swaps)."""
    app = srv.server.config.app
    assert isinstance(app, FastAPI)
    gw = app.state.gateway
    assert isinstance(gw, Gateway)
    return gw


async def refused_status(url: str) -> tuple[int, str | None]:
    """(status, Retry-After) of a refused WebSocket handshake; fails if it is accepted."""
    with pytest.raises(InvalidStatus) as info:
        await connect(url)
    response = info.value.response
    return response.status_code, response.headers.get("Retry-After")


async def test_api_keys_from_nats_kv_apply_without_a_restart(
    settings: Settings, js: JetStreamContext
) -> None:
    async with serving(settings) as srv:
        gw = state_of(srv)
        anyone = await open_client(srv)
        await anyone.start()  # no keys yet: anyone may open a session
        kv = await ensure_bucket(js, settings)
        await kv.put("secrets.api_keys", b"k1\n")
        await until(lambda: gw.settings.api_key_set == frozenset({"k1"}))
        assert await refused_status(srv.ws_url) == (401, None)
        keyed = await open_client(srv, additional_headers={"Authorization": "Bearer k1"})
        await keyed.start()
        async with httpx.AsyncClient(base_url=srv.url) as http:
            unkeyed = await http.post("/api/text", json={"text": "hi"})
        assert unkeyed.status_code == 401
        assert "k1" not in repr(gw.settings)
        await anyone.conn.close()
        await keyed.conn.close()


async def test_queue_limit_and_retry_after_from_nats_kv_apply_without_a_restart(
    settings: Settings, js: JetStreamContext
) -> None:
    async with serving(settings) as srv:
        gw = state_of(srv)
        for i in range(3):  # well below the default max_queue_depth (50)
            await bus.publish(js, Subjects().work("llm"), LlmRequest("s", f"t{i}", "hi"))
        await until(lambda: gw.load.depth == 3)
        assert not gw.load.overloaded
        kv = await ensure_bucket(js, settings)
        await kv.put("gateway", json.dumps({"max_queue_depth": 2, "retry_after_s": 17}).encode())
        await until(lambda: gw.load.overloaded)
        assert await refused_status(srv.ws_url) == (503, "17")
        await kv.delete("gateway")  # back to the defaults
        await until(lambda: not gw.load.overloaded)
        client = await open_client(srv)
        await client.start()
        await client.conn.close()


async def test_sessions_per_client_from_nats_kv_apply_without_a_restart(
    settings: Settings, js: JetStreamContext
) -> None:
    async with serving(settings) as srv:
        gw = state_of(srv)
        first = await open_client(srv)
        await first.start()
        kv = await ensure_bucket(js, settings)
        await kv.put("global", json.dumps({"max_sessions_per_client": 1}).encode())
        await until(lambda: gw.quota.settings.max_sessions_per_client == 1)
        assert await refused_status(srv.ws_url) == (429, str(settings.retry_after_s))
        await first.conn.close()


async def test_gateway_starts_with_its_consul_area_and_follows_changes(
    settings: Settings, js: JetStreamContext, fake: FakeConsul, tmp_path: Path
) -> None:
    settings = settings.model_copy(
        update={"consul_http_addr": fake.addr, "config_watch_wait_s": 5.0}
    )
    async with Consul(settings) as consul:
        assert await consul.kv_put("morgan/config/gateway", json.dumps({"retry_after_s": 9}))
        assert await consul.kv_put("morgan/config/vad", json.dumps({"retry_after_s": 99}))
        async with serving(settings) as srv:
            gw = state_of(srv)
            assert gw.settings.retry_after_s == 9  # the store's value from the first request
            assert gw.settings.api_key_set == frozenset()
            assert await consul.kv_put("morgan/secrets/api_keys", "k2")
            await until(lambda: gw.settings.api_key_set == frozenset({"k2"}))
            assert await refused_status(srv.ws_url) == (401, None)
            keyed = await open_client(srv, additional_headers={"Authorization": "Bearer k2"})
            await keyed.start()
            await keyed.conn.close()
