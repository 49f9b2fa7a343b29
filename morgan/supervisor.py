"""Child processes of ``morgan up``: started, watched, restarted, stopped cleanly."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
from dataclasses import dataclass, field

from streams import logs

log = logging.getLogger("morgan.up")


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    ready_marker: bytes
    proc: asyncio.subprocess.Process | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    restarts: int = 0

    async def start(self) -> None:
        self.ready.clear()
        self.proc = await asyncio.create_subprocess_exec(
            *self.argv,
            env=self.env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )

    async def pump_log(self) -> None:
        """Echo the child's log with its name; notice its 'ready' line."""
        assert self.proc is not None and self.proc.stderr is not None
        while line := await self.proc.stderr.readline():
            if self.ready_marker in line and not self.ready.is_set():
                self.ready.set()
            sys.stderr.write(child_line(self.name, line.decode(errors="replace")))


def child_line(name: str, line: str, *, readable: bool | None = None) -> str:
    """A child's stderr line as ``morgan up`` writes it. ``readable`` (default: our stderr
    is a terminal): ``[name]`` and the line, a JSON log line (streams/logs.py) shown as one
    readable line. Otherwise a JSON log line goes out as it is, for a log shipper to parse
    (its ``kind`` field names the child), and any other line after ``[name]``."""
    if readable is None:
        readable = sys.stderr.isatty()
    if readable:
        return f"[{name}] {logs.render(line)}"
    return line if logs.parse(line) is not None else f"[{name}] {line}"


class Supervisor:
    """Keeps every child running until ``stop``; a crashed child restarts with backoff."""

    def __init__(self, children: list[Child]) -> None:
        self.children = children
        self.stopping = False
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        for child in self.children:
            self._tasks.append(asyncio.create_task(self._keep(child)))

    async def _keep(self, child: Child) -> None:
        delay = 0.5
        while not self.stopping:
            started = time.monotonic()
            await child.start()
            assert child.proc is not None
            await asyncio.gather(child.pump_log(), child.proc.wait())
            if self.stopping:
                return
            code = child.proc.returncode
            if time.monotonic() - started > 30:
                delay = 0.5
            log.warning("%s exited with %s; restarting in %.1f s", child.name, code, delay)
            child.restarts += 1
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM everyone (they drain), then SIGKILL whatever outlives ``timeout``."""
        self.stopping = True
        procs = [c.proc for c in self.children if c.proc and c.proc.returncode is None]
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        waits = [asyncio.create_task(p.wait()) for p in procs]
        if waits:
            _, pending = await asyncio.wait(waits, timeout=timeout)
            for proc in procs:
                if proc.returncode is None:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
            if pending:
                await asyncio.wait(pending)
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def child_env(extra: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(extra)
    return env
