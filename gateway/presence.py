"""The gateway in Consul: ``morgan-gateway`` with the tags Traefik routes by.

Traefik's consulCatalog provider reads the tags in ``traefik_tags.txt`` (one per
line, ``{http_port}`` filled in) and sends HTTP and WebSocket traffic to every
passing instance. Without CONSUL_HTTP_ADDR this is a no-op.
"""

from __future__ import annotations

import platform
from contextlib import AbstractAsyncContextManager
from pathlib import Path

from nats.aio.client import Client

from streams import registry
from streams.settings import Settings

TAGS_FILE = Path(__file__).with_name("traefik_tags.txt")


def traefik_tags(http_port: int) -> list[str]:
    lines = TAGS_FILE.read_text().splitlines()
    return [
        line.strip().format(http_port=http_port)
        for line in lines
        if line.strip() and not line.lstrip().startswith("#")
    ]


def registered(
    settings: Settings, nc: Client, http_port: int
) -> AbstractAsyncContextManager[registry.Registration]:
    return registry.registered(
        settings,
        "gateway",
        tier_tags=(),
        hw_tags={"os": platform.system().lower(), "arch": platform.machine().lower()},
        model="",
        nats_client_id=str(nc.client_id),
        port=http_port,
        extra_tags=traefik_tags(http_port),
    )
