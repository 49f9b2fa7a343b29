"""A worker's Consul check follows its own health as well as its NATS connection
(processors.announce.report_health): a kind's ``health`` reason shows as ``warning``
until it clears, without a restart."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from processors.announce import report_health
from streams import registry


async def test_a_kind_reason_shows_as_warning_and_clears_by_itself() -> None:
    reg = registry.Registration("morgan-llm-1", "service:morgan-llm-1", {})
    nc = SimpleNamespace(is_connected=True)
    reason = ["context cache: Redis read failed"]

    async def own() -> str:
        return reason[0]

    watch = asyncio.create_task(report_health(nc, reg, own, every_s=0.01))  # type: ignore[arg-type]
    try:
        await asyncio.sleep(0.05)
        assert (reg.status, reg.output) == (registry.WARNING, "context cache: Redis read failed")
        reason[0] = ""
        await asyncio.sleep(0.05)
        assert (reg.status, reg.output) == (registry.PASSING, "")
        nc.is_connected = False
        await asyncio.sleep(0.05)
        assert reg.status == registry.WARNING and "NATS" in reg.output
    finally:
        watch.cancel()
