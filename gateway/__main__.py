"""``python -m gateway``: serve on MORGAN_HTTP_HOST:MORGAN_HTTP_PORT and print the URL."""

from __future__ import annotations

import asyncio

from gateway.server import run
from streams import logs
from streams.settings import Settings


def main(settings: Settings | None = None) -> None:
    """Serve with ``settings`` (``morgan run gateway`` passes its own), else the env's."""
    settings = settings or Settings.from_env()
    logs.setup(settings, "gateway", worker=logs.default_worker("gateway"))
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
