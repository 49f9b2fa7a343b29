"""Fixtures for the integration layer (the root conftest starts nats-server)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest_asyncio
from nats.js import JetStreamContext

from gateway.server import RunningGateway, start
from streams.settings import Settings


@pytest_asyncio.fixture
async def gateway(settings: Settings, js: JetStreamContext) -> AsyncIterator[RunningGateway]:
    """The gateway served in this event loop on a free port."""
    srv = await start(settings)
    try:
        yield srv
    finally:
        await srv.stop()
