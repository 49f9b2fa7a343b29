"""Run real processors inside a test: in this process, or as a child process to kill."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.micro.request import Request

from processors.announce import announced
from processors.runtime import Worker
from processors.spec import Spec, WorkQueue
from schemas import Message, decode
from streams import definitions
from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[2]


@asynccontextmanager
async def running(
    spec: Spec, settings: Settings, tiers: tuple[str, ...] = ("cpu",)
) -> AsyncIterator[Worker]:
    """A worker serving until the block ends, then drained as on SIGTERM."""
    worker = Worker(spec, settings, tiers)
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(worker.serve(stop, ready))
    waiter = asyncio.create_task(ready.wait())
    await asyncio.wait({task, waiter}, timeout=300, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        waiter.cancel()
        task.result()  # raises what made it fail
    if not waiter.done():  # still loading its models: say so rather than go on unready
        waiter.cancel()
        stop.set()
        task.cancel()
        raise TimeoutError(f"{spec.kind} worker not ready after 300 s")
    try:
        yield worker
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)


def env_of(settings: Settings, **extra: str) -> dict[str, str]:
    """Environment that makes a child process build the same Settings."""
    env = dict(os.environ)
    for name, value in settings.model_dump().items():
        if value is not None and not isinstance(value, dict | list):
            env[f"MORGAN_{name.upper()}"] = str(value)
    env.update(extra)
    env["PYTHONPATH"] = str(ROOT)
    return env


class ChildWorker:
    """``python -m processors KIND`` as a real process, so a test can SIGKILL it."""

    def __init__(self, kind: str, settings: Settings, env: Mapping[str, str] | None = None):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "processors", kind],
            env={**env_of(settings), **(env or {})},
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        self.log: list[bytes] = []
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()

    async def wait_ready(self, timeout: float = 120.0) -> None:
        """Wait for its 'ready' log line (the log is read on a thread so it never blocks)."""
        deadline = asyncio.get_running_loop().time() + timeout
        while not self._ready.is_set():
            if self.proc.poll() is not None or asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(b"".join(self.log).decode(errors="replace"))
            await asyncio.sleep(0.05)

    def _read_log(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.log.append(line)
            if b" ready on " in line:
                self._ready.set()

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self._reap(10)

    def terminate(self) -> int:
        self.proc.terminate()
        return self._reap(60)

    def _reap(self, timeout: float) -> int:
        code = self.proc.wait(timeout)
        self._reader.join(timeout)
        assert self.proc.stderr is not None
        self.proc.stderr.close()
        return code


@asynccontextmanager
async def gpu_tier_taker(
    nc: Client, js: JetStreamContext, settings: Settings, kind: str
) -> AsyncIterator[list[Message]]:
    """A gpu-tier worker as the bus sees one: announced with tiers=gpu, pulling
    ``<kind>-gpu`` and acking. Yields the messages it took."""
    spec = idle_tiered_spec(kind)
    sub = await js.pull_subscribe_bind(f"{kind}-gpu", stream=definitions.WORK)
    taken: list[Message] = []

    async def pull() -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                for raw in await sub.fetch(1, timeout=1.0):
                    await raw.ack()
                    taken.append(decode(raw.headers, raw.data))

    async with announced(nc, spec, settings, ("gpu",), None, _empty_status):
        task = asyncio.create_task(pull())
        try:
            yield taken
        finally:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task
            await sub.unsubscribe()


def idle_tiered_spec(kind: str) -> Spec:
    """A tiered kind that loads nothing and does nothing: a worker as the registry and
    the router see it, for tests that play a worker's part."""
    return Spec(
        kind=kind,
        input=WorkQueue(tiered=True),
        accepts=(Message,),
        publishes=(),
        load=_nothing,
        handle=_nothing,
    )


async def _nothing(*_: Any) -> None:
    return None


async def _empty_status(req: Request) -> None:
    await req.respond(b"{}")
