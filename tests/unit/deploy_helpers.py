"""Helpers for tests/unit/test_deploy.py: load deploy/ files, find a process's ports."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

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
