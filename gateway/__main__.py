"""``python -m gateway``: serve on MORGAN_HTTP_HOST:MORGAN_HTTP_PORT and print the URL."""

from __future__ import annotations

import asyncio
import logging

from gateway.server import run
from streams.settings import Settings


def main() -> None:
    settings = Settings.from_env()
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(name)s %(message)s")
    asyncio.run(run(settings))


if __name__ == "__main__":
    main()
