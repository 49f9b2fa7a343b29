"""The data stores a gateway uses: history (conversations API), the context cache's
Redis (forgetting), and how each is doing (``/health``).

No database configured: the conversations API answers 503 ``no_history``. PostgreSQL or
Redis unreachable: ``/health`` says ``degraded`` (the voice loop does not need them) and
each call tries again, so the gateway recovers by itself. ``watch`` checks the stores
every ``CHECK_S`` in the background, so ``/health`` answers at once from the last check
however long an unreachable host takes to time out.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from schemas import Unavailable
from store.context_cache import ContextCache
from store.history import History
from streams.settings import Settings

log = logging.getLogger("morgan.gateway.stores")
CHECK_S = 2.0
"""Seconds between two checks of the stores for ``/health``."""


@dataclass
class Stores:
    settings: Settings
    cache: ContextCache
    """Its L2 (Redis) is what the gateway touches: forgetting deletes a user's keys."""
    history: History | None = None
    """Writes and deletes (the primary); None without a database or while unreachable."""
    reads: History | None = None
    """Conversation reads (``database_read_url``, may be a replica)."""
    report: dict[str, str] = field(default_factory=dict)
    """Each store's state at the last check: ``ok``, ``none`` (not configured) or why not."""

    @classmethod
    async def open(cls, settings: Settings) -> Stores:
        stores = cls(settings, ContextCache(settings, None))
        if settings.database_url:
            await stores._connect()
        stores.report = await stores.health()
        return stores

    async def watch(self) -> None:
        """Check the stores every ``CHECK_S`` until cancelled (``report``)."""
        while True:
            await asyncio.sleep(CHECK_S)
            self.report = await self.health()

    async def _connect(self) -> None:
        """Open the pools that are not open yet; unreachable ones are tried next time."""
        s = self.settings
        try:
            if self.history is None:
                self.history = await History.open(s.database_url, pool_size=s.database_pool_size)
            if self.reads is None:
                same = s.read_url == s.database_url
                self.reads = self.history if same else await History.open(s.read_url, migrate=False)
        except Unavailable as exc:
            log.warning("gateway: history database unreachable: %s", exc)

    async def writer(self) -> History:
        """The history's primary, or ``Unavailable``/``NoHistory``."""
        return await self._pool(lambda: self.history)

    async def reader(self) -> History:
        """Where conversations are read (a replica, when configured)."""
        return await self._pool(lambda: self.reads)

    async def _pool(self, which: Callable[[], History | None]) -> History:
        if not self.settings.database_url:
            raise NoHistory()
        await self._connect()
        pool = which()
        if pool is None:
            raise Unavailable("the history database is unreachable")
        return pool

    async def health(self) -> dict[str, str]:
        """Each store: ``ok``, ``none`` (not configured) or why it is not ok."""
        report = {"redis": await self._redis()}
        if not self.settings.database_url:
            report["postgres"] = "none"
        else:
            try:
                await (await self.reader()).ping()
                report["postgres"] = "ok"
            except Unavailable as exc:
                report["postgres"] = str(exc)
        return report

    async def _redis(self) -> str:
        if self.cache.l2 is None:
            return "none"
        return "ok" if await self.cache.check() == "ok" else self.cache.reason

    async def close(self) -> None:
        await self.cache.close()
        for pool in {id(p): p for p in (self.history, self.reads) if p is not None}.values():
            await pool.close()


class NoHistory(LookupError):
    """This gateway has no history database configured."""
