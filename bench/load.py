"""A load test of a whole ``morgan up`` with locust: starts it, runs bench/locustfile.py
headless against it, prints locust's summary and the gateway's own counters, stops all.

    .venv/bin/python bench/load.py --users 10 --spawn-rate 2 --time 60s

Each locust user gets an API key of its own (MORGAN_API_KEYS), so it is a client with its
own shares (docs/protocol.md, "Overload and fair shares") as separate people are. Locust's
exit status is this command's: 1 when any request failed.
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from testbed.morgan_process import MorganUp

LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
GATEWAY_COUNTERS = (
    "morgan_gateway_turns_total",
    "morgan_gateway_rejections_total",
    "morgan_gateway_first_audio_seconds_count",
    "morgan_gateway_first_audio_seconds_sum",
)


def gateway_counters(url: str) -> list[str]:
    """The gateway's own view of the run (/metrics): turns by outcome, refusals, first
    audio; the series that are not zero."""
    text = httpx.get(url + "/metrics", timeout=10).text
    return [
        line
        for line in text.splitlines()
        if line.startswith(GATEWAY_COUNTERS) and float(line.rsplit(" ", 1)[1]) != 0
    ]


def run(args: argparse.Namespace) -> int:
    keys = [secrets.token_hex(16) for _ in range(args.users)]
    print(
        f"machine: {platform.node()} {platform.machine()}, {os.cpu_count()} cores; load "
        f"average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; kinds: {args.kinds}",
        flush=True,
    )
    with tempfile.TemporaryDirectory() as tmp:
        up = MorganUp(
            Path(tmp),
            MORGAN_KINDS=args.kinds,
            MORGAN_API_KEYS=",".join(f"bench{i}:{key}" for i, key in enumerate(keys)),
        )
        try:
            up.wait_ready(600.0)
            command = [
                sys.executable,
                "-m",
                "locust",
                "-f",
                str(LOCUSTFILE),
                "--headless",
                "--only-summary",
                "-u",
                str(args.users),
                "-r",
                str(args.spawn_rate),
                "-t",
                args.time,
                "--stop-timeout",
                str(int(args.turn_timeout_s) + 30),
                "--host",
                up.url,
                *(["--csv", args.csv] if args.csv else []),
                *args.classes,
            ]
            print("$ " + " ".join(command[2:]), flush=True)
            env = {
                **os.environ,
                "MORGAN_BENCH_KEYS": ",".join(keys),
                "MORGAN_BENCH_TURN_TIMEOUT_S": str(args.turn_timeout_s),
            }
            code = subprocess.run(command, env=env, check=False).returncode
            print("gateway /metrics (not zero):")
            for line in gateway_counters(up.url):
                print("  " + line)
            return code
        finally:
            up.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--users", type=int, default=4, help="locust users at most (-u)")
    p.add_argument("--spawn-rate", type=float, default=1.0, help="users started a second (-r)")
    p.add_argument("--time", default="60s", help="how long locust runs (-t), e.g. 60s, 5m")
    p.add_argument("--kinds", default="vad,stt,llm,tts", help="MORGAN_KINDS for morgan up")
    p.add_argument("--turn-timeout-s", type=float, default=60.0)
    p.add_argument("--csv", default="", help="locust's --csv prefix (stats as CSV files)")
    p.add_argument(
        "classes", nargs="*", help="user classes to run (default: VoiceUser and TextUser)"
    )
    code = run(p.parse_args())
    sys.exit(code)


if __name__ == "__main__":
    main()
