"""Service registration in Consul: register, keep a TTL check alive, deregister.

    async with registered(settings, "stt", tier_tags=("gpu", "cpu"), hw_tags={"cuda": True},
                          model="tiny.en", nats_client_id=str(nc.client_id)) as reg:
        ...                      # serve; reg.degraded("reloading model") / reg.healthy()

The service is ``morgan-<kind>``, one instance per process (ID kind-host-pid),
tagged ``<kind>``, ``tier=<t>`` per tier, ``cuda=yes|no``, ``os=``, ``arch=``,
``model=``. Its TTL check (``consul_ttl_s``) is refreshed every TTL/3 by a
background task; if the process hangs the check goes critical and Consul
deregisters the service after ``consul_deregister_after_s``. Consul down at
start or later is retried with capped exponential backoff in the background;
a check update answered 404 means the agent forgot us (restarted empty, or
reaped us) and re-registers at once. Without CONSUL_HTTP_ADDR this is a no-op:
NATS micro services already answer discovery.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import platform
import random
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from typing import Any

from streams.consul import Consul, ConsulError, NotFound, ServiceEntry, go_duration
from streams.settings import Settings

log = logging.getLogger("morgan.registry")

PASSING, WARNING = "passing", "warning"


def service_name(kind: str) -> str:
    return f"morgan-{kind}"


def service_tags(
    kind: str,
    *,
    tier_tags: Iterable[str],
    hw_tags: Mapping[str, object],
    model: str,
    extra_tags: Iterable[str] = (),
) -> list[str]:
    """``kind``, ``tier=..``, ``cuda=yes|no``, ``os=``, ``arch=``, ``model=``, other hw, extras."""
    hw = dict(hw_tags)
    cuda = hw.pop("cuda", False)
    os_name = hw.pop("os", platform.system().lower())
    arch = hw.pop("arch", platform.machine().lower())
    tags = [kind, *(f"tier={t}" for t in tier_tags)]
    tags += [f"cuda={_yes_no(cuda)}", f"os={os_name}", f"arch={arch}", f"model={model}"]
    tags += [f"{k}={_yes_no(v) if isinstance(v, bool) else v}" for k, v in hw.items()]
    return tags + list(extra_tags)


def _yes_no(value: object) -> str:
    if isinstance(value, str):
        return "yes" if value.lower() in ("yes", "true", "1") else "no"
    return "yes" if value else "no"


def _version() -> str:
    try:
        return metadata.version("morgan")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def backoff(failures: int, cap: float) -> float:
    """Seconds before registration attempt n+1: 0.2, 0.4, 0.8 ... up to ``cap``, jittered."""
    return float(min(cap, 0.2 * 2 ** (failures - 1)) * random.uniform(0.75, 1.0))


@dataclass
class Registration:
    """This process's registration. ``degraded``/``healthy`` set what the TTL check reports."""

    service_id: str
    check_id: str
    definition: dict[str, Any]
    status: str = PASSING
    output: str = ""
    registered: bool = False
    """Whether Consul has the service, as far as this process knows."""
    attempts: int = 0
    """Registration requests sent (retries included)."""
    registrations: int = 0
    """Registrations that succeeded (more than 1 after a Consul restart)."""
    task: asyncio.Task[None] | None = None
    """The keepalive task (cancel it to play a hung process)."""
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _tried: asyncio.Event = field(default_factory=asyncio.Event)

    def degraded(self, reason: str) -> None:
        """Report ``warning`` with ``reason`` (still routable, but visibly unwell)."""
        self.status, self.output = WARNING, reason
        self._wake.set()

    def healthy(self) -> None:
        self.status, self.output = PASSING, ""
        self._wake.set()

    async def keep_alive(self, consul: Consul, ttl_s: float) -> None:
        failures = 0
        while True:
            delay = ttl_s / 3
            self._wake.clear()
            try:
                if not self.registered:
                    self.attempts += 1
                    await consul.register_service(self.definition)
                    self.registered = True
                    self.registrations += 1
                    log.info("consul: registered %s", self.service_id)
                await consul.update_check(self.check_id, self.status, self.output)
                failures = 0
            except NotFound:
                if self.registered:
                    log.warning("consul forgot %s; registering again", self.service_id)
                    self.registered = False
                    continue
                failures += 1
                delay = backoff(failures, ttl_s)
            except ConsulError as exc:
                failures += 1
                delay = backoff(failures, ttl_s)
                log.warning("consul: %s (retry %d in %.1fs)", exc, failures, delay)
            finally:
                self._tried.set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)


@contextlib.asynccontextmanager
async def registered(
    settings: Settings,
    kind: str,
    *,
    tier_tags: Iterable[str],
    hw_tags: Mapping[str, object],
    model: str,
    nats_client_id: str,
    port: int | None = None,
    extra_tags: Iterable[str] = (),
) -> AsyncIterator[Registration]:
    """Register ``morgan-<kind>`` for the life of the block (no-op without Consul)."""
    host = platform.node() or "localhost"
    service_id = f"morgan-{kind}-{host}-{os.getpid()}"
    check_id = f"service:{service_id}"
    definition: dict[str, Any] = {
        "ID": service_id,
        "Name": service_name(kind),
        "Tags": service_tags(
            kind, tier_tags=tier_tags, hw_tags=hw_tags, model=model, extra_tags=extra_tags
        ),
        "Meta": {
            "version": _version(),
            "nats_client_id": nats_client_id,
            "kind": kind,
            "host": host,
            "pid": str(os.getpid()),
        },
        "Check": {
            "CheckID": check_id,
            "Name": f"morgan {kind} keepalive",
            "Notes": "TTL check refreshed by the process every TTL/3",
            "TTL": go_duration(settings.consul_ttl_s),
            "DeregisterCriticalServiceAfter": go_duration(settings.consul_deregister_after_s),
        },
    }
    if port is not None:
        definition["Port"] = port
    reg = Registration(service_id, check_id, definition)
    consul = Consul.from_settings(settings)
    if consul is None:
        yield reg
        return
    reg.task = asyncio.create_task(reg.keep_alive(consul, settings.consul_ttl_s))
    try:
        # Wait for the first attempt only: a Consul that is down must not hold up startup.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reg._tried.wait(), consul.timeout)
        yield reg
    finally:
        reg.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reg.task
        if reg.registered or reg.attempts:
            try:
                await consul.deregister_service(service_id)
                log.info("consul: deregistered %s", service_id)
            except NotFound:
                pass
            except ConsulError as exc:
                log.warning("consul: deregistering %s failed: %s", service_id, exc)
        await consul.aclose()


async def live_services(
    consul: Consul, kind: str, *, tier: str | None = None
) -> list[ServiceEntry]:
    """Instances of ``kind`` whose checks all pass (optionally only those tagged ``tier=``)."""
    tags = [f"tier={tier}"] if tier else []
    _, entries = await consul.health_service(service_name(kind), passing=True, tags=tags)
    return entries
