"""What the gateway's checks of client input cost, against plain parsing, in one run.

    .venv/bin/python bench/edge_cost.py

Per client message: ``json.loads`` alone (what the gateway did before issue 8) against
``protocol.parse`` (the one parser: depth and surrogate walk, field checks), for the
messages a client really sends; and how fast a poisoned message is refused. Prints
microseconds per message and the ratio to plain ``json.loads``.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway import protocol

N = 20_000
MESSAGES = {
    "typed turn": json.dumps({"type": "text", "text": "What is the weather like in Lisbon today?"}),
    "resume": json.dumps(
        {
            "type": "session.start",
            "rate": 16000,
            "format": "s16le",
            "channels": 1,
            "session_id": "9f2c" * 8,
            "resume_token": "Qx" * 16,
            "last_event": 1234,
            "last_audio": 5678,
        }
    ),
    "cancel": '{"type":"cancel"}',
}
POISON = {
    "1000-deep array": '{"type":"text","text":"hi","x":' + "[" * 1000 + "]" * 1000 + "}",
    "lone surrogate": '{"type":"text","text":"\\ud800"}',
    "5000-digit integer": '{"type":"session.start","last_event":' + "9" * 5000 + "}",
}


def per_call_us(fn: Callable[[], object], n: int = N) -> float:
    for _ in range(n // 20):
        fn()
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - start) * 1e6 / n


def refused(raw: str) -> Callable[[], object]:
    def call() -> object:
        try:
            return protocol.parse(raw)
        except protocol.ProtocolError as exc:
            return exc

    return call


def main() -> None:
    print(f"machine: {platform.node()} {platform.machine()}, python {platform.python_version()}")
    print(f"{'message':<20} {'json.loads':>12} {'parse':>12} {'ratio':>7}")
    for name, raw in MESSAGES.items():
        plain = per_call_us(partial(json.loads, raw))
        checked = per_call_us(partial(protocol.parse, raw))
        print(f"{name:<20} {plain:>10.2f}us {checked:>10.2f}us {checked / plain:>6.2f}x")
    print(f"{'refused message':<20} {'':>12} {'parse':>12}")
    for name, raw in POISON.items():
        print(f"{name:<20} {'':>12} {per_call_us(refused(raw), N // 10):>10.2f}us")


if __name__ == "__main__":
    main()
