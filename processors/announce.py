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
from processors.spec import Endpoint, Spec
from schemas import MorganError
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
    for name, answer in spec.endpoints.items():
        subject = f"{settings.prefix}.svc.{spec.kind}.{name}"
        await service.add_endpoint(name=name, subject=subject, handler=_answering(answer, state))
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
            watch = asyncio.create_task(report_health(nc, reg, _own_health(spec, state)))
            try:
                yield reg
            finally:
                watch.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await watch
    finally:
        await service.stop()


def _own_health(spec: Spec, state: Any) -> Callable[[], Awaitable[str]]:
    async def own() -> str:
        return "" if spec.health is None else await spec.health(state)

    return own


def _answering(answer: Endpoint, state: Any) -> Callable[[Request], Awaitable[None]]:
    """A micro handler for one of the kind's endpoints: its reply, or its error."""

    async def handler(req: Request) -> None:
        try:
            reply = await answer(state, req.data)
        except MorganError as exc:
            await req.respond_error(exc.code, str(exc))
            return
        await req.respond(reply)

    return handler


async def report_health(
    nc: Client, reg: registry.Registration, own: Callable[[], Awaitable[str]], every_s: float = 1.0
) -> None:
    """Consul shows the worker ``warning`` while it is cut off from NATS (it does no work)
    or its kind says why it is degraded (``Spec.health``: a store away), until both pass."""
    while True:
        reason = "NATS disconnected: reconnecting" if not nc.is_connected else await own()
        if reason and (reg.status == registry.PASSING or reg.output != reason):
            reg.degraded(reason)
        elif not reason and reg.status != registry.PASSING:
            reg.healthy()
        await asyncio.sleep(every_s)
