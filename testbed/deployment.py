"""Morgan across namespaced hosts: a 3-node NATS JetStream cluster, processors, gateways.

Every node is started the way an operator starts one on a real host
(``python -m morgan nats --name n1 --host <ip> --cluster-name morgan --route ...``);
processors are ``python -m processors KIND`` and gateways ``python -m gateway``
inside the host's namespace, configured only through MORGAN_* variables.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.aio.client import Client

from morgan import certs
from processors import permissions
from streams import bus, definitions, nats_auth
from streams.settings import Settings
from testbed.netns import Host, Network, Proc

NATS_PORT = 4222
HTTP_PORT = 8222
ROUTE_PORT = 6222
GATEWAY_PORT = 8080
DELAY_PORT = 14222
"""First port of the delay proxies a slow client's host runs (one per node)."""
LINK_DELAY_MS = 40.0
"""Added latency each way between the second gateway and every NATS node."""
READY = {"gateway": b"Morgan gateway:", "nats": b"nats-server "}

FAST_FAILOVER = {
    "MORGAN_CLAIM_ACK_WAIT_S": "4",
    "MORGAN_VAD_SILENCE_MS": "500",
    "MORGAN_LLM_MAX_TOKENS": "40",
    "MORGAN_LOG_LEVEL": "INFO",
}
"""Settings for the failover tests: claims move in 4 s, short replies (a dead worker's
work moves within each kind's declared ack wait, 3 s)."""


@dataclass
class Deployment:
    net: Network
    nats: dict[str, Proc] = field(default_factory=dict)
    workers: dict[str, tuple[Host, list[str], dict[str, str], Proc]] = field(default_factory=dict)
    extra_env: dict[str, str] = field(default_factory=dict)
    route_names: list[str] = field(default_factory=list)
    _credentials: tuple[dict[str, Path], str] | None = None
    restart_nice: int = 0
    """Niceness of workers that ``restore`` restarts: on a machine where every "host"
    shares the same cores, a restarted worker's model load then takes CPU only from
    idle time, as it would on a host of its own (bench/scale.py --restart-nice)."""

    @property
    def nodes(self) -> list[Host]:
        return [self.net[n] for n in self.nats]

    def credentials(self) -> tuple[dict[str, Path], str]:
        """Every role's seed and the nodes' authorization block, as ``morgan nats-auth``
        makes them: the cluster runs locked, as deployed."""
        if self._credentials is None:
            self._credentials = permissions.credentials(Settings(), self.net.workdir / "auth")
        return self._credentials

    def seed(self, role: str) -> Path:
        return self.credentials()[0][role]

    def tls(self) -> Path:
        """A CA, a certificate per host and one per role, as ``morgan certs`` makes them:
        nodes, routes and every client speak mTLS, as deployed. A node's certificate
        names every host's address, since the delay proxies on another host forward its
        TLS unchanged."""
        out = self.net.workdir / "tls"
        if not certs.ca_files(out).cert.exists():
            certs.make_ca(out)
            ips = [h.ip for h in self.net.hosts.values()]
            for host in self.net.hosts.values():
                certs.issue_host(out, out, host.name, ips=ips)
            for role in self.credentials()[0]:
                certs.issue_client(out, out, role)
        return out

    def tls_env(self, role: str) -> dict[str, str]:
        out = self.tls()
        files = certs.leaf_files(out, role)
        return {
            "MORGAN_NATS_TLS_CA": str(certs.ca_files(out).cert),
            "MORGAN_NATS_TLS_CERT": str(files.cert),
            "MORGAN_NATS_TLS_KEY": str(files.key),
        }

    def urls(self, hosts: Iterable[Host] | None = None) -> str:
        chosen = list(hosts) if hosts is not None else self.nodes
        return ",".join(f"nats://{h.ip}:{NATS_PORT}" for h in chosen)

    def settings(self, **overrides: Any) -> Settings:
        base: dict[str, Any] = {
            "nats_url": self.urls(),
            "replicas": 3,
            "nats_seed_file": str(self.seed(nats_auth.ADMIN)),  # tests act as the admin
            **{k.removeprefix("MORGAN_").lower(): v for k, v in self.tls_env("admin").items()},
        }
        return Settings(**{**base, **overrides})

    def env(self, host: Host, **extra: str) -> dict[str, str]:
        return {
            "MORGAN_NATS_URL": self.urls(),
            "MORGAN_REPLICAS": "3",
            "MORGAN_DATA_DIR": str(host.workdir / "data"),
            **self.extra_env,
            **extra,
        }

    # --- NATS ---

    def start_node(self, host: Host) -> Proc:
        routes = [
            arg
            for other in self.nodes_for_routes()
            if other is not host
            for arg in ("--route", f"nats-route://{other.ip}:{ROUTE_PORT}")
        ]
        argv = ["-m", "morgan", "nats", "--name", host.name, "--host", host.ip]
        argv += ["--port", str(NATS_PORT), "--http-port", str(HTTP_PORT)]
        argv += ["--cluster-name", "morgan", "--cluster-port", str(ROUTE_PORT), *routes]
        auth = self.net.workdir / "auth" / "auth.conf"
        if not auth.exists():
            auth.write_text(self.credentials()[1])
        argv += ["--auth", str(auth)]
        tls = self.tls()
        files = certs.leaf_files(tls, host.name)
        argv += ["--tls-cert", str(files.cert), "--tls-key", str(files.key)]
        argv += ["--tls-ca", str(certs.ca_files(tls).cert)]
        env = {"MORGAN_DATA_DIR": str(host.workdir / "data")}
        proc = host.python("nats", argv, env, ready=READY["nats"] + host.name.encode())
        self.nats[host.name] = proc
        return proc

    def nodes_for_routes(self) -> list[Host]:
        return [self.net[n] for n in self.route_names]

    async def start_cluster(self, names: list[str]) -> None:
        self.route_names = names
        procs = [self.start_node(self.net[n]) for n in names]
        await asyncio.gather(*(p.wait_ready(60) for p in procs))
        await self.wait_formed()

    def monitor(self, host: Host, path: str) -> dict[str, Any]:
        """The node's monitoring endpoint, read from inside its own namespace."""
        body = host.http_get(f"http://{host.ip}:{HTTP_PORT}{path}")
        data: dict[str, Any] = json.loads(body)
        return data

    async def wait_formed(self, timeout: float = 60.0, hosts: list[Host] | None = None) -> None:
        """Every node routes to the others and JetStream has a meta leader."""
        hosts = hosts or self.nodes
        deadline = time.monotonic() + timeout
        while True:
            try:
                ok = all(self._formed(h) for h in hosts)
            except (RuntimeError, ValueError, KeyError):
                ok = False
            if ok:
                return
            if time.monotonic() > deadline:
                raise TimeoutError("cluster did not form")
            await asyncio.sleep(0.5)

    def _formed(self, host: Host) -> bool:
        routez = self.monitor(host, "/routez")
        peers = {r.get("remote_name") for r in routez.get("routes", [])}
        others = {h.name for h in self.nodes if h is not host}
        jsz = self.monitor(host, "/jsz")
        leader = (jsz.get("meta_cluster") or {}).get("leader")
        return others <= peers and bool(leader)

    async def connect(self, name: str = "test") -> Client:
        return await bus.connect(self.settings(), name)

    async def apply_definitions(self, settings: Settings | None = None) -> None:
        nc = await self.connect("definitions")
        try:
            js = nc.jetstream()
            deadline = time.monotonic() + 60
            while True:  # the meta leader may still be settling: retry with a deadline
                try:
                    await definitions.apply(js, settings or self.settings())
                    return
                except Exception:
                    if time.monotonic() > deadline:
                        raise
                    await asyncio.sleep(0.5)
        finally:
            await nc.close()

    # --- processors and gateways ---

    def start_worker(
        self, key: str, host: Host, args: list[str], env: dict[str, str], nice: int = 0
    ) -> Proc:
        """``python -m processors KIND`` (or ``-m gateway``) on ``host``, remembered by key."""
        full_env = self.env(host, **env)
        ready = READY["gateway"] if args[-1] == "gateway" else b" ready on "
        proc = host.python(key, args, full_env, ready=ready, nice=nice)
        self.workers[key] = (host, args, env, proc)
        return proc

    async def delayed_urls(self, host: Host, ms: float) -> str:
        """NATS URLs for a client on ``host`` whose every byte to or from any node takes
        ``ms`` longer each way (a delay proxy per node, run on ``host``)."""
        proxies = [
            self.net.delay(host, DELAY_PORT + i, f"{node.ip}:{NATS_PORT}", ms)
            for i, node in enumerate(self.nodes)
        ]
        await asyncio.gather(*(p.wait_ready(30) for p in proxies))
        return ",".join(f"nats://{host.ip}:{DELAY_PORT + i}" for i in range(len(proxies)))

    def processor(self, key: str, host: Host, kind: str, **env: str) -> Proc:
        env = {"MORGAN_NATS_SEED_FILE": str(self.seed(kind)), **self.tls_env(kind), **env}
        return self.start_worker(key, host, ["-m", "processors", kind], env)

    def gateway(self, key: str, host: Host, **env: str) -> Proc:
        env = {
            "MORGAN_HTTP_HOST": host.ip,
            "MORGAN_HTTP_PORT": str(GATEWAY_PORT),
            "MORGAN_NATS_SEED_FILE": str(self.seed(nats_auth.GATEWAY)),
            **self.tls_env(nats_auth.GATEWAY),
            **env,
        }
        return self.start_worker(key, host, ["-m", "gateway"], env)

    def url_of(self, key: str) -> str:
        host = self.workers[key][0]
        return f"http://{host.ip}:{GATEWAY_PORT}"

    def proc(self, key: str) -> Proc:
        return self.workers[key][3]

    def kill(self, key: str) -> None:
        host, _, _, proc = self.workers[key]
        host.kill(proc)

    async def restore(self) -> None:
        """Restart every NATS node and worker that a test killed; wait until all are ready."""
        restarted = [
            self.start_node(self.net[n]) for n, p in list(self.nats.items()) if not p.alive
        ]
        await asyncio.gather(*(p.wait_ready(60) for p in restarted))
        if restarted:
            await self.wait_formed()
        for key, (host, args, env, proc) in list(self.workers.items()):
            if not proc.alive:
                restarted.append(self.start_worker(key, host, args, env, self.restart_nice))
        await asyncio.gather(*(p.wait_ready() for p in restarted))

    @asynccontextmanager
    async def healed(self) -> AsyncIterator[Deployment]:
        """Every host reachable and every node and worker running, before and after."""
        for host in self.nodes:
            self.net.heal(host)
        await self.restore()
        try:
            yield self
        finally:
            for host in self.nodes:
                self.net.heal(host)

    async def ready(self) -> None:
        await asyncio.gather(*(w[3].wait_ready() for w in self.workers.values()))

    def diagnose(self) -> str:
        """Each live node's routes, JetStream health and client connections, and the
        TCP state of every host's sockets: what to read when a turn goes missing."""
        parts = []
        for host in self.nodes:
            if not self.nats[host.name].alive:
                continue
            for path in ("/routez", "/healthz", "/connz?limit=1024&subs=0"):
                url = f"http://{host.ip}:{HTTP_PORT}{path}"
                try:
                    parts.append(f"--- {host.name} {path} ---\n{host.http_get(url)}")
                except Exception as exc:
                    parts.append(f"--- {host.name} {path}: {exc!r}")
            parts.append(f"--- {host.name} ss ---\n{host.run(['ss', '-tino']).stdout}")
        return "\n".join(parts)

    def violations(self) -> list[str]:
        """Log lines, from every process this deployment ran (killed ones too), where a
        NATS node refused a role a subject: the generated permissions must cover all."""
        found = []
        for host in self.net.hosts.values():
            for proc in host.procs:
                with contextlib.suppress(OSError):
                    text = proc.log_path.read_text(errors="replace")
                    found += [
                        f"{proc.name}: {line}" for line in text.splitlines() if _refused(line)
                    ]
        return found

    def logs(self) -> str:
        parts = []
        for key, (_, _, _, proc) in self.workers.items():
            parts.append(f"--- {key} ---\n{proc.log(6000)}")
        return "\n".join(parts)


def _refused(line: str) -> bool:
    return "permissions violation" in line.lower()


HOSTS = ["cpu", "gpu1", "gpu2"]


async def start_morgan(net: Network, *, spare_llm: bool = False, **env: str) -> Deployment:
    """The failover topology: NATS on every host; VAD, LLM and the cpu tier of STT/TTS
    on ``cpu``; gpu-tier STT/TTS (declared by MORGAN_TIERS=gpu) on ``gpu1`` and ``gpu2``;
    a second VAD on ``gpu2``; the gateway ``gw`` on ``cpu`` and a second one, ``gw2``,
    on ``gpu2`` that reaches every NATS node through a link 40 ms slower each way.
    ``spare_llm``: a second LLM worker on ``gpu1``, so that every kind has a survivor
    when one worker dies (otherwise an LLM death waits for its restart)."""
    dep = Deployment(net, extra_env={**FAST_FAILOVER, **env})
    await dep.start_cluster(HOSTS)
    await dep.apply_definitions()
    cpu, gpu1, gpu2 = (net[h] for h in HOSTS)
    dep.processor("vad-a", cpu, "vad")
    dep.processor("llm", cpu, "llm")
    dep.processor("stt-cpu", cpu, "stt", MORGAN_TIERS="cpu")
    dep.processor("tts-cpu", cpu, "tts", MORGAN_TIERS="cpu")
    dep.processor("stt-gpu1", gpu1, "stt", MORGAN_TIERS="gpu")
    dep.processor("tts-gpu1", gpu1, "tts", MORGAN_TIERS="gpu")
    dep.processor("stt-gpu2", gpu2, "stt", MORGAN_TIERS="gpu")
    dep.processor("tts-gpu2", gpu2, "tts", MORGAN_TIERS="gpu")
    dep.processor("vad-b", gpu2, "vad")
    if spare_llm:
        dep.processor("llm-b", gpu1, "llm")
    dep.gateway("gw", cpu)
    dep.gateway("gw2", gpu2, MORGAN_NATS_URL=await dep.delayed_urls(gpu2, LINK_DELAY_MS))
    await dep.ready()
    return dep


def connections(dep: Deployment, name_prefix: str) -> list[tuple[Host, dict[str, Any]]]:
    """Client connections whose name starts with ``name_prefix``, on every live node."""
    found = []
    for host in dep.nodes:
        if not dep.nats[host.name].alive:
            continue
        for conn in dep.monitor(host, "/connz?limit=1024").get("connections") or []:
            if str(conn.get("name", "")).startswith(name_prefix):
                found.append((host, conn))
    return found
