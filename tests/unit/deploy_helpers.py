"""Helpers for tests/unit/test_deploy.py: load deploy/ files, find a process's ports."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from morgan import certs
from processors import permissions
from streams.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE_HOSTS = ("gpu-linux", "gpu-wsl", "cpu-linux", "mac-m1")


def load_yaml(path: Path) -> Any:
    with path.open() as f:
        return yaml.safe_load(f)


def compose(host: str) -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(DEPLOY / "compose" / f"{host}.yml")
    return data


def stack() -> dict[str, Any]:
    data: dict[str, Any] = load_yaml(DEPLOY / "swarm" / "stack.yml")
    return data


def is_morgan(service: dict[str, Any]) -> bool:
    """A service running a Morgan image (as opposed to NATS, Postgres, ...)."""
    return "/morgan:" in str(service.get("image", ""))


def morgan_services() -> Iterator[tuple[str, dict[str, Any]]]:
    """``where/name`` and the service, for every Morgan service in compose and the stack."""
    for host in COMPOSE_HOSTS:
        for name, svc in compose(host)["services"].items():
            if is_morgan(svc):
                yield f"{host}/{name}", svc
    for name, svc in stack()["services"].items():
        if is_morgan(svc):
            yield f"swarm/{name}", svc


def secret_names(service: dict[str, Any]) -> set[str]:
    """The secrets a service mounts (short or long syntax)."""
    return {s if isinstance(s, str) else s["source"] for s in service.get("secrets", [])}


def env_of(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {str(k): str(v) for k, v in env.items()}


def listening_ports(pid: int) -> set[int]:
    """TCP ports a process listens on, read from /proc (no fixed ports, no extra tools)."""
    inodes: set[str] = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports: set[int] = set()
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            cols = line.split()
            local, state, inode = cols[1], cols[3], cols[9]
            if state == "0A" and inode in inodes:  # 0A = LISTEN
                ports.add(int(local.rsplit(":", 1)[1], 16))
    return ports


TLS_DIR = "/etc/morgan/tls"
"""Where deploy/ mounts the files ``morgan certs`` makes, in every container."""


def nats_conf_with_certs(conf: Path, tmp: Path) -> str:
    """A shipped NATS config whose TLS files exist: a throwaway CA and the certificate of
    the host the config names, made by ``morgan certs`` under ``tmp``, in place of the
    files under /etc/morgan/tls (nats-server reads them even for ``-t``)."""
    text = conf.read_text()
    hosts = set(re.findall(rf'cert_file: "{TLS_DIR}/([\w.-]+)\.pem"', text))
    assert len(hosts) == 1, f"{conf}: expected one host certificate, found {hosts}"
    certs.make_ca(tmp)
    certs.issue_host(tmp, tmp, hosts.pop())
    return text.replace(f'"{TLS_DIR}/', f'"{tmp}/')


SEED_DIR = "/etc/morgan/nats"
"""Where deploy/ mounts a service's NKey seed (``<role>.nk``, ``morgan nats-auth``)."""
NATS_CONF = "/etc/nats/nats.conf"
"""Where deploy/ mounts a node's deploy/nats/*.conf."""
AUTH_CONF = "/etc/nats/auth.conf"
"""Where deploy/ mounts auth.conf, the block ``include "auth.conf"`` reads (beside NATS_CONF)."""


def write_auth_conf(directory: Path) -> dict[str, Path]:
    """``directory/auth.conf`` as ``morgan nats-auth`` writes it (the NKey users of every
    role of the default kinds), with the roles' seeds under ``directory/seeds``: role ->
    seed file. Configs copied into ``directory`` find it by their include."""
    seeds, block = permissions.credentials(Settings(), directory / "seeds")
    (directory / "auth.conf").write_text(block)
    return seeds
