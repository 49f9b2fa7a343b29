"""PostgreSQL primary + streaming replica under Patroni (etcd as its store), on netns hosts.

    net = Network(["etcd", "db1", "db2"], workdir).up()
    async with patroni.cluster(net["etcd"], [net["db1"], net["db2"]]) as pg:
        pg.dsn                          # both hosts, target_session_attrs=read-write
        old = await pg.leader()         # "db1"
        pg.kill_host(old)               # SIGKILL everything there, link down: host gone
        new = await pg.wait_promoted(60)

etcd is ONE member on its own host: enough for a test in which only a database host dies
(production runs three, on three hosts: deploy/patroni/etcd.yml). Patroni runs as the
``postgres`` user with its data in a temp folder outside pytest's (root-only) tmp dirs;
clients in the hosts' subnet (the test process's own veth included) connect as
``postgres`` with trust auth. Timings are shortened for a fast failover (see TTL_S);
deploy/patroni/*.yml keeps Patroni's production defaults.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import pwd
import shutil
import signal
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from testbed.netns import Host, Proc, sh

BIN_DIR = Path("/usr/lib/postgresql/15/bin")
PG_PORT = 5432
REST_PORT = 8008
ETCD_CLIENT_PORT = 2379
ETCD_PEER_PORT = 2380
USER = "postgres"
TTL_S = 10
"""Leader key lifetime: a dead primary's key expires at most this long after its last
renewal, then the replica takes it (production: 30)."""
LOOP_WAIT_S = 2
"""Seconds between Patroni's HA loops (production: 10)."""
RETRY_TIMEOUT_S = 4
"""How long Patroni retries etcd and PostgreSQL before giving up a loop (production:
10). Patroni needs loop_wait + 2 * retry_timeout <= ttl."""


def available() -> str | None:
    """None when a cluster can be started here, else why not."""
    for tool in ("etcd", "patroni"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (apt-get install patroni etcd-server)"
    if not (BIN_DIR / "postgres").exists():
        return f"PostgreSQL 15 is not installed ({BIN_DIR}; apt-get install postgresql-15)"
    try:
        pwd.getpwnam(USER)
    except KeyError:
        return f"no `{USER}` user to run PostgreSQL as"
    return None


def etcd_argv(host: Host, data_dir: Path) -> list[str]:
    client = f"http://{host.ip}:{ETCD_CLIENT_PORT}"
    peer = f"http://{host.ip}:{ETCD_PEER_PORT}"
    return [
        "etcd",
        f"--name={host.name}",
        f"--data-dir={data_dir}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster={host.name}={peer}",
        "--initial-cluster-state=new",
    ]


def patroni_config(host: Host, etcd: Host, home: Path, subnet: str) -> dict[str, Any]:
    """One member's Patroni configuration (JSON is YAML, so it is written as JSON)."""
    return {
        "scope": "morgan-test",
        "name": host.name,
        "restapi": {
            "listen": f"{host.ip}:{REST_PORT}",
            "connect_address": f"{host.ip}:{REST_PORT}",
        },
        "etcd3": {"hosts": [f"{etcd.ip}:{ETCD_CLIENT_PORT}"]},
        "bootstrap": {
            "dcs": {
                "ttl": TTL_S,
                "loop_wait": LOOP_WAIT_S,
                "retry_timeout": RETRY_TIMEOUT_S,
                "maximum_lag_on_failover": 1048576,
                # A commit returns once the replica has it on disk, so a promoted replica
                # has every acknowledged write (deploy/patroni/*.yml says more).
                "synchronous_mode": True,
                "postgresql": {
                    "use_pg_rewind": True,
                    "use_slots": True,
                    "parameters": {
                        "max_connections": 40,
                        "shared_buffers": "32MB",
                        "max_wal_senders": 5,
                        "max_replication_slots": 5,
                        "wal_keep_size": "64MB",
                        "wal_log_hints": "on",
                    },
                },
            },
            "initdb": [{"encoding": "UTF8"}, {"locale": "C"}],
        },
        "postgresql": {
            "listen": f"{host.ip}:{PG_PORT}",
            "connect_address": f"{host.ip}:{PG_PORT}",
            "data_dir": str(home / "data"),
            "bin_dir": str(BIN_DIR),
            "pgpass": str(home / "pgpass"),
            "use_unix_socket": True,
            # Every host shares /var/run/postgresql: a socket folder of its own each.
            "parameters": {"unix_socket_directories": str(home)},
            "authentication": {
                "superuser": {"username": USER, "password": "morgan-test"},
                "replication": {"username": "replicator", "password": "morgan-test"},
                "rewind": {"username": "rewinder", "password": "morgan-test"},
            },
            "pg_hba": [
                "local all all trust",
                f"host all all {subnet} trust",
                f"host replication replicator {subnet} trust",
            ],
        },
    }


DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
"""Straight to the namespaced hosts, whatever proxy the environment names."""


def rest(host: Host, path: str, timeout: float = 1.0) -> tuple[int, dict[str, Any]]:
    """GET Patroni's REST API on ``host``: (status, JSON body); (0, {}) if unreachable."""
    url = f"http://{host.ip}:{REST_PORT}{path}"
    try:
        with DIRECT.open(url, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as err:
        status, raw = err.code, err.read()
    except (OSError, TimeoutError):
        return 0, {}
    try:
        body = json.loads(raw) if raw else {}
    except ValueError:
        body = {}
    return status, body if isinstance(body, dict) else {}


def kill_namespace(host: Host, timeout: float = 10.0) -> None:
    """SIGKILL every process in the host's namespace until none is left; reap ours."""
    deadline = time.monotonic() + timeout
    while pids := [int(p) for p in sh("ip", "netns", "pids", host.ns, check=False).split()]:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes survive in {host.ns}: {pids}")
        time.sleep(0.05)
    for proc in host.procs:
        proc.popen.wait(timeout)


@dataclass
class Patroni:
    etcd: Host
    hosts: dict[str, Host]
    home: Path
    """The temp folder holding every member's data, config and socket."""
    procs: dict[str, Proc] = field(default_factory=dict)
    gone: set[str] = field(default_factory=set)
    killed_at: float = 0.0
    """When kill_host took the host down (monotonic)."""
    promoted_at: float = 0.0
    """When wait_promoted first saw the new primary (monotonic)."""

    @property
    def dsn(self) -> str:
        """Every database host; asyncpg keeps the first that takes writes."""
        hosts = ",".join(f"{h.ip}:{PG_PORT}" for h in self.hosts.values())
        return f"postgresql://{USER}@{hosts}/postgres?target_session_attrs=read-write"

    def dsn_of(self, name: str) -> str:
        """One host only (to read what a particular member has)."""
        return f"postgresql://{USER}@{self.hosts[name].ip}:{PG_PORT}/postgres"

    def live(self) -> list[Host]:
        return [h for n, h in self.hosts.items() if n not in self.gone]

    async def primary(self) -> str | None:
        """The live member running as primary with the leader lock, if any."""
        for host in self.live():
            status, _ = await asyncio.to_thread(rest, host, "/primary")
            if status == 200:
                return host.name
        return None

    async def leader(self, timeout: float = 120.0) -> str:
        """The primary's name, waiting for one."""
        deadline = time.monotonic() + timeout
        while (name := await self.primary()) is None:
            self._check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"no Patroni primary in {timeout:.0f} s\n{self.logs()}")
            await asyncio.sleep(0.5)
        return name

    async def streaming(self) -> str | None:
        """The name of a replica that streams from the primary as its synchronous standby."""
        name = await self.primary()
        if name is None:
            return None
        _, status = await asyncio.to_thread(rest, self.hosts[name], "/patroni")
        for row in status.get("replication") or []:
            if row.get("state") == "streaming" and row.get("sync_state") == "sync":
                return str(row.get("application_name"))
        return None

    async def wait_ready(self, timeout: float = 180.0) -> None:
        """One primary and a replica streaming from it synchronously."""
        deadline = time.monotonic() + timeout
        while await self.streaming() is None:
            self._check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"no streaming replica in {timeout:.0f} s\n{self.logs()}")
            await asyncio.sleep(0.5)

    def kill_host(self, name: str) -> None:
        """The host is gone: its link goes down first (so no connection sees a reset,
        as when a machine loses power), then every process in it gets SIGKILL."""
        host = self.hosts[name]
        sh("ip", "-n", host.ns, "link", "set", "eth0", "down")
        self.killed_at = time.monotonic()
        self.gone.add(name)
        kill_namespace(host)

    async def wait_promoted(self, timeout: float = 60.0) -> str:
        """Wait until a surviving member is primary; return its name."""
        deadline = time.monotonic() + timeout
        while (name := await self.primary()) is None:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no member promoted in {timeout:.0f} s\n{self.logs()}")
            await asyncio.sleep(0.2)
        self.promoted_at = self.promoted_at or time.monotonic()
        return name

    def logs(self, tail: int = 3000) -> str:
        return "\n".join(f"--- {name} ---\n{p.log(tail)}" for name, p in self.procs.items())

    def _check_alive(self) -> None:
        for name, proc in self.procs.items():
            if name not in self.gone and not proc.alive:
                raise RuntimeError(f"{name} exited\n{proc.log()}")

    def _start_member(self, host: Host) -> Proc:
        home = self.home / host.name
        home.mkdir(mode=0o700)
        config = home / "patroni.yml"
        network = ipaddress.ip_interface(f"{host.ip}/24").network
        config.write_text(json.dumps(patroni_config(host, self.etcd, home, str(network))))
        user = pwd.getpwnam(USER)
        for path in (home, config):
            os.chown(path, user.pw_uid, user.pw_gid)
        # As postgres, without the project on PYTHONPATH (Patroni is the system's Python).
        argv = ["runuser", "-u", USER, "--", "env", "-u", "PYTHONPATH"]
        argv += [f"HOME={user.pw_dir}", "patroni", str(config)]
        proc = host.spawn("patroni", argv)
        self.procs[host.name] = proc
        return proc


@contextlib.asynccontextmanager
async def cluster(etcd: Host, dbs: Sequence[Host]) -> AsyncIterator[Patroni]:
    """etcd on ``etcd``, Patroni + PostgreSQL on each of ``dbs``; the first bootstraps
    the primary, the others clone it. Yields once a replica streams synchronously; on
    exit kills everything on those hosts, brings their links back up (a killed host's
    too) and removes the data."""
    home = Path(tempfile.mkdtemp(prefix="mg-patroni-"))
    home.chmod(0o755)  # postgres must reach its own folder inside
    pg = Patroni(etcd, {h.name: h for h in dbs}, home)
    try:
        etcd_proc = etcd.spawn(
            "etcd", etcd_argv(etcd, home / "etcd"), ready=b"ready to serve client requests"
        )
        pg.procs[etcd.name] = etcd_proc
        await etcd_proc.wait_ready(60)
        pg._start_member(dbs[0])
        await pg.leader()
        for host in dbs[1:]:
            pg._start_member(host)
        await pg.wait_ready()
        yield pg
    finally:
        for host in [etcd, *dbs]:
            kill_namespace(host)
            sh("ip", "-n", host.ns, "link", "set", "eth0", "up")
        shutil.rmtree(home, ignore_errors=True)
