"""Container HEALTHCHECK for every Morgan image: exit 0 when this container's process answers.

What it asks depends on what the container runs (the arguments of PID 1, or argv[1]):

- ``gateway``: ``GET /health`` on MORGAN_HTTP_PORT must return 200.
- ``processors KIND``: ``GET /metrics`` on MORGAN_METRICS_PORT must return 200; with no
  metrics port there is nothing to ask, and the container is healthy while PID 1 lives.

Ports come from the same Settings the process itself read, so they always agree.
Usage: ``python /usr/local/bin/morgan-healthcheck [gateway|processors]``.
"""

from __future__ import annotations

import sys
import urllib.error
import urllib.request
from pathlib import Path

from streams.settings import Settings

TIMEOUT_S = 3.0


def role(argv: list[str]) -> str:
    """``gateway`` or ``processors``: argv[1] if given, else read from PID 1's command line."""
    if len(argv) > 1:
        return argv[1]
    try:
        args = Path("/proc/1/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "unknown"
    return "gateway" if b"gateway" in args else "processors"


def probe_url(kind: str, settings: Settings) -> str | None:
    if kind == "gateway":
        return f"http://127.0.0.1:{settings.http_port}/health"
    if settings.metrics_port:
        return f"http://127.0.0.1:{settings.metrics_port}/metrics"
    return None


def main(argv: list[str]) -> int:
    url = probe_url(role(argv), Settings.from_env())
    if url is None:
        return 0
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as resp:
            ok = resp.status == 200
    except (urllib.error.URLError, OSError) as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return 1
    if not ok:
        print(f"unhealthy: {url}: status {resp.status}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
