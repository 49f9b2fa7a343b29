"""``python -m processors KIND``: run one processor until SIGTERM/SIGINT, then drain."""

from __future__ import annotations

import asyncio
import signal
import sys

from processors import hardware, registry
from processors.runtime import Worker
from streams import logs
from streams.settings import Settings


async def run(kind: str, settings: Settings) -> None:
    spec = registry.spec(kind)
    tiers = hardware.serving_tiers(settings.tier_list, hardware.detect())
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await Worker(spec, settings, tiers).serve(stop)


def main(argv: list[str], settings: Settings | None = None) -> int:
    """Run the kind ``argv[0]`` with ``settings`` (``morgan run`` passes its own), else
    the environment's."""
    if len(argv) != 1:
        print("usage: python -m processors KIND", file=sys.stderr)
        return 2
    settings = settings or Settings.from_env()
    if argv[0] not in registry.kinds():
        print(
            f"unknown processor kind {argv[0]!r}; have {sorted(registry.kinds())}", file=sys.stderr
        )
        return 2
    hardware.pin(settings.cpu_set)  # before any thread exists: threads inherit it
    logs.setup(settings, argv[0], worker=logs.default_worker(argv[0]))
    asyncio.run(run(argv[0], settings))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
