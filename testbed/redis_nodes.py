"""Private ``redis-server`` processes for tests: one node, or a Redis Cluster.

Each node listens on 127.0.0.1 on a free port, keeps its files in its own temp dir and
persists nothing (no RDB, no AOF). ``stop``/``kill`` and ``start`` again on the same port
play a Redis outage (it comes back empty); ``pause``/``resume`` a Redis that hangs. The
context managers always stop what they started.

    with redis_node() as node:              # node.url = redis://127.0.0.1:PORT/0
        ...
    with redis_cluster(3) as nodes:         # cluster_nodes(nodes) = "127.0.0.1:P1,..."
        ...
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

from testbed.ports import bindable

CLUSTER_BUS_OFFSET = 10000
"""A cluster node also listens on its port + this (Redis's cluster bus)."""


def installed() -> bool:
    return shutil.which("redis-server") is not None and shutil.which("redis-cli") is not None


def free_port(cluster: bool = False) -> int:
    """A free port; for a cluster node, one whose bus port (+10000) is free too."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if not cluster or (
            port + CLUSTER_BUS_OFFSET < 65536 and bindable(port + CLUSTER_BUS_OFFSET)
        ):
            return port


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisNode:
    """One ``redis-server`` on ``port`` with its files in ``dir``."""

    def __init__(self, dir: Path, *, cluster: bool = False) -> None:
        self.dir = dir
        self.cluster = cluster
        self.port = free_port(cluster)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        """Start (again, on the same port) and wait until it answers PING."""
        args = ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--dir", str(self.dir), "--save", "", "--appendonly", "no"]
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            args += ["--cluster-node-timeout", "2000"]
        log = (self.dir / "redis.log").open("ab")
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while not _ping(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                tail = (self.dir / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server on {self.port} did not start:\n{tail}")
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM and wait (a clean shutdown; nothing is saved)."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL and wait (a crash)."""
        self._end(signal.SIGKILL)

    def pause(self) -> None:
        """SIGSTOP: connections are accepted (by the kernel) but nothing answers."""
        if self.proc is not None:
            self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is not None:
            self.proc.send_signal(signal.SIGCONT)

    def _end(self, sig: signal.Signals) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        proc.send_signal(signal.SIGCONT)  # a paused node handles SIGTERM only once resumed
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def redis_node(*, cluster: bool = False) -> Iterator[RedisNode]:
    """A started node in a temp dir; stopped and removed on exit."""
    with tempfile.TemporaryDirectory(prefix="morgan-redis-") as tmp:
        node = RedisNode(Path(tmp), cluster=cluster)
        try:
            node.start()
            yield node
        finally:
            node.kill()


def cluster_nodes(nodes: list[RedisNode]) -> str:
    """``host:port,...``, as ``MORGAN_REDIS_CLUSTER_NODES`` takes them."""
    return ",".join(node.address for node in nodes)


def _cluster_ok(node: RedisNode) -> bool:
    info = subprocess.run(
        ["redis-cli", "-p", str(node.port), "cluster", "info"],
        capture_output=True,
        text=True,
        timeout=5,
    ).stdout
    return "cluster_state:ok" in info


def wait_cluster_ok(nodes: list[RedisNode], timeout: float = 30.0) -> None:
    """Wait until every node reports ``cluster_state:ok`` (e.g. after one was restarted)."""
    deadline = time.monotonic() + timeout
    while not all(_cluster_ok(node) for node in nodes):
        if time.monotonic() > deadline:
            raise RuntimeError("the Redis cluster did not reach cluster_state:ok")
        time.sleep(0.1)


@contextmanager
def redis_cluster(n: int = 3, timeout: float = 30.0) -> Iterator[list[RedisNode]]:
    """``n`` primaries (no replicas) forming one cluster, every node reporting
    ``cluster_state:ok``; all stopped and removed on exit."""
    with ExitStack() as stack:
        nodes = [stack.enter_context(redis_node(cluster=True)) for _ in range(n)]
        created = subprocess.run(
            ["redis-cli", "--cluster", "create", *(node.address for node in nodes)]
            + ["--cluster-replicas", "0", "--cluster-yes"],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{created.stdout}")
        wait_cluster_ok(nodes, timeout)
        yield nodes
