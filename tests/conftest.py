"""Fixtures shared by every layer: a real nats-server per test, on a free port."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import hypothesis  # noqa: F401  (see below)
import pytest
import pytest_asyncio
from nats.aio.client import Client
from nats.js import JetStreamContext

from processors import registry
from streams import bus, definitions, embedded
from streams.settings import Settings

# hypothesis's pytest plugin imports hypothesis lazily in the terminal summary; on
# CPython 3.11.7 that late import can hit "AST constructor recursion depth mismatch"
# (a CPython bug fixed in 3.11.8) in pytest's assertion rewriter. Importing it up front
# (above) avoids the late import.


@pytest_asyncio.fixture
async def nats_server(tmp_path: Path) -> AsyncIterator[embedded.EmbeddedNats]:
    async with await embedded.start(store_dir=tmp_path / "nats") as srv:
        yield srv


@pytest.fixture
def settings(nats_server: embedded.EmbeddedNats, tmp_path: Path) -> Settings:
    return Settings(
        nats_url=nats_server.url,
        data_dir=tmp_path / "data",
        claim_ack_wait_s=2.0,
        work_ack_wait_s=10.0,
        http_port=0,
    )


@pytest_asyncio.fixture
async def nc(settings: Settings) -> AsyncIterator[Client]:
    client = await bus.connect(settings, "test")
    try:
        yield client
    finally:
        await client.drain()


@pytest_asyncio.fixture
async def js(nc: Client, settings: Settings) -> JetStreamContext:
    ctx = nc.jetstream()
    await definitions.apply(ctx, settings, shipped_consumers(settings))
    return ctx


def shipped_consumers(settings: Settings) -> list[definitions.Consumer]:
    """The consumers of every built-in kind (workers make their own; tests that play a
    kind's part, or read what was sent to it, need them before any worker runs)."""
    return [
        consumer
        for kind in registry.BUILT_IN
        for _, consumer in registry.spec(kind).consumers(settings)
    ]
