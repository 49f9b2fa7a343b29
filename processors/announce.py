"""Make a worker findable: a NATS micro service always, a Consul service when configured."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from nats.aio.client import Client
from nats.micro import add_service
from nats.micro.request import Request

from processors import hardware
from processors.spec import Spec
from streams import registry
from streams.settings import Settings

VERSION = "0.1.0"


@contextlib.asynccontextmanager
async def announced(
    nc: Client,
    spec: Spec,
    settings: Settings,
    tiers: tuple[str, ...],
    state: Any,
    status: Callable[[Request], Awaitable[None]],
) -> AsyncIterator[registry.Registration]:
    """``$SRV.PING/INFO/STATS`` answer for ``morgan-<kind>``; Consul gets the same, with a
    TTL check kept alive, until the block ends (then both are withdrawn)."""
    model = spec.describe(state)
    service = await add_service(
        nc,
        name=f"morgan-{spec.kind}",
        version=VERSION,
        description=f"Morgan {spec.kind} processor",
        metadata={"tiers": ",".join(tiers), "model": model},
    )
    await service.add_endpoint(
        name="status", subject=f"{settings.prefix}.svc.{spec.kind}.status", handler=status
    )
    hw = hardware.detect()
    try:
        async with registry.registered(
            settings,
            spec.kind,
            tier_tags=tiers if spec.tiered else (),
            hw_tags={"cuda": hw.cuda_devices > 0, "os": hw.os, "arch": hw.arch},
            model=model,
            nats_client_id=str(nc.client_id),
            port=settings.metrics_port or None,  # where Prometheus scrapes it
        ) as reg:
            watch = asyncio.create_task(report_bus_health(nc, reg))
            try:
                yield reg
            finally:
                watch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watch
    finally:
        await service.stop()


async def report_bus_health(nc: Client, reg: registry.Registration, every_s: float = 1.0) -> None:
    """A worker cut off from NATS does no work: Consul shows it ``warning`` until back."""
    while True:
        if not nc.is_connected and reg.status == registry.PASSING:
            reg.degraded("NATS disconnected: reconnecting")
        elif nc.is_connected and reg.status != registry.PASSING:
            reg.healthy()
        await asyncio.sleep(every_s)
