"""Several 'hosts' on one Linux machine: network namespaces joined by a bridge.

    net = Network(["n1", "n2", "n3"])          # needs root and `ip netns`
    net.up()                                   # also clears leftovers of a crashed run
    proc = net["n1"].spawn([...], env, ready=b"Server is ready")
    await proc.wait_ready()
    net.loss(net["n2"], 3.0)                   # 3 % of n2's packets dropped, each way
    net.partition(net["n3"]); net.heal(net["n3"])
    net.down()                                 # kills every process, removes everything

Layout: a "switch" namespace ``mg-<pid>-sw`` holds a bridge; each host namespace
``mg-<pid>-<name>`` has ``eth0`` (a veth whose peer is on the bridge) with
``10.77.<k>.<11+i>/24`` and its own loopback. One more veth, ``mg<pid>`` in the
root namespace with ``10.77.<k>.1``, lets the test process itself be a client of
every host (it is outside all loss/partition rules, which live in each host's own
nftables table). Nothing else in the root namespace is touched.

Ports inside a namespace are private to it, so every host can use NATS's 4222.

Faults: nftables in the host's namespace (``numgen random`` for loss; drop all on
``eth0`` for a partition). The kernel here has no ``netem``, so delay is added by
``DelayProxy``: a small asyncio TCP proxy, run inside a namespace, that holds each
chunk for a fixed time before forwarding it (see docs/multihost.md).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

PREFIX = "mg-"
ROOT = Path(__file__).resolve().parents[1]
CHAOS_TABLE = "mgchaos"


def available() -> str | None:
    """None when namespaces can be made here, else why not."""
    if os.geteuid() != 0:
        return "network namespace tests need root"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"`ip netns` is unavailable: {probe.stderr.strip()}"
    return None


def sh(*argv: str, check: bool = True, input: str | None = None) -> str:
    """Run a command (no shell), return stdout; raise with its stderr on failure."""
    done = subprocess.run(argv, capture_output=True, text=True, input=input, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (children first found, recursively)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            with contextlib.suppress(OSError):
                kids = [int(k) for k in (task / "children").read_text().split()]
                found += kids
                todo += kids
    return found


def kill_tree(pid: int, sig: int = signal.SIGKILL) -> None:
    """Signal ``pid`` and all its descendants (a nats-server runs in its own session)."""
    for p in [pid, *_descendants(pid)]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, sig)


def _namespace_pids(ns: str) -> list[int]:
    out = sh("ip", "netns", "pids", ns, check=False)
    return [int(p) for p in out.split()]


def clear_leftovers() -> None:
    """Remove namespaces and veths of earlier runs whose owning process is gone."""
    for line in sh("ip", "netns", "list").splitlines():
        name = line.split()[0] if line.strip() else ""
        m = re.fullmatch(rf"{PREFIX}(\d+)-\w+", name)
        if m and not _alive(int(m.group(1))):
            for pid in _namespace_pids(name):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            sh("ip", "netns", "del", name, check=False)
    for m in re.finditer(r"^\d+: (mg(\d+))[@:]", sh("ip", "-o", "link", "show"), re.M):
        if not _alive(int(m.group(2))):
            sh("ip", "link", "del", m.group(1), check=False)


def _free_subnet() -> int:
    """A third octet k with 10.77.k.0/24 unused in the root namespace."""
    used = {int(m) for m in re.findall(r"10\.77\.(\d+)\.", sh("ip", "-4", "route", "show"))}
    for k in range(1, 255):
        if k not in used:
            return k
    raise RuntimeError("no free 10.77.k.0/24 subnet")


@dataclass
class Proc:
    """A process running inside a host namespace; its output goes to ``log_path``."""

    name: str
    host: Host
    popen: subprocess.Popen[bytes]
    log_path: Path
    ready: bytes | None

    @property
    def pid(self) -> int:
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def log(self, tail: int = 4000) -> str:
        with contextlib.suppress(OSError):
            return self.log_path.read_bytes()[-tail:].decode(errors="replace")
        return ""

    async def wait_ready(self, timeout: float = 180.0) -> None:
        """Poll the log for the ready line (with a deadline); raise with the log if it dies."""
        assert self.ready is not None
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(OSError):
                if self.ready in self.log_path.read_bytes():
                    return
            if not self.alive or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} on {self.host.name} not ready:\n{self.log()}")
            await asyncio.sleep(0.1)


@dataclass
class Host:
    name: str
    ip: str
    ns: str
    workdir: Path
    procs: list[Proc] = field(default_factory=list)

    def argv(self, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", self.ns, *argv]

    def run(
        self, argv: Sequence[str], env: Mapping[str, str] | None = None, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """Run to completion inside this host's namespace."""
        return subprocess.run(
            self.argv(argv),
            env=_env(env),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def spawn(
        self,
        name: str,
        argv: Sequence[str],
        env: Mapping[str, str] | None = None,
        ready: bytes | None = None,
    ) -> Proc:
        """Start ``argv`` in this host's namespace, in its own process group."""
        log_path = self.workdir / f"{name}.{len(self.procs)}.log"
        with log_path.open("wb") as out:
            popen = subprocess.Popen(
                self.argv(argv),
                env=_env(env),
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = Proc(name, self, popen, log_path, ready)
        self.procs.append(proc)
        return proc

    def python(
        self,
        name: str,
        args: Sequence[str],
        env: Mapping[str, str],
        ready: bytes | None = None,
        nice: int = 0,
    ) -> Proc:
        prefix = ["nice", "-n", str(nice)] if nice else []
        return self.spawn(name, [*prefix, sys.executable, *args], env, ready)

    def kill(self, proc: Proc, sig: int = signal.SIGKILL, timeout: float = 30.0) -> int:
        """Signal the process and everything it started; wait for it (reaped)."""
        if proc.alive:
            kill_tree(proc.pid, sig)
        try:
            return proc.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            kill_tree(proc.pid, signal.SIGKILL)
            return proc.popen.wait(timeout)

    def stop_all(self) -> None:
        """Terminate every process started here (SIGTERM, then SIGKILL), and reap them."""
        for proc in self.procs:
            if proc.alive:
                kill_tree(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for proc in self.procs:
            try:
                proc.popen.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill(proc)
        for pid in _namespace_pids(self.ns):  # anything that escaped its parent
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def http_get(self, url: str) -> str:
        """GET ``url`` from inside this namespace (as a program on this host would)."""
        code = (
            "import sys, urllib.request; "
            "print(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())"
        )
        done = self.run([sys.executable, "-c", code, url])
        if done.returncode != 0:
            raise RuntimeError(f"GET {url} from {self.name}: {done.stderr.strip()}")
        return done.stdout


def _env(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MORGAN_")}
    env["PYTHONPATH"] = str(ROOT)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


class Network:
    """Hosts in namespaces on one bridge, plus a veth for the test process."""

    def __init__(self, names: Sequence[str], workdir: Path) -> None:
        self.tag = f"{PREFIX}{os.getpid()}"
        self.switch = f"{self.tag}-sw"
        self.root_link = f"mg{os.getpid()}"
        self.workdir = workdir
        self.names = list(names)
        self.hosts: dict[str, Host] = {}
        self.client_ip = ""
        self._proxies: list[Proc] = []

    def __getitem__(self, name: str) -> Host:
        return self.hosts[name]

    def up(self) -> Network:
        clear_leftovers()
        k = _free_subnet()
        self.client_ip = f"10.77.{k}.1"
        try:
            sh("ip", "netns", "add", self.switch)
            sh("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
            sh("ip", "-n", self.switch, "link", "set", "br0", "up")
            sh("ip", "link", "add", self.root_link, "type", "veth", "peer", "name", "root",
               "netns", self.switch)  # fmt: skip
            sh("ip", "-n", self.switch, "link", "set", "root", "master", "br0", "up")
            sh("ip", "addr", "add", f"{self.client_ip}/24", "dev", self.root_link)
            sh("ip", "link", "set", self.root_link, "up")
            for i, name in enumerate(self.names):
                self.hosts[name] = self._add_host(name, f"10.77.{k}.{11 + i}")
        except BaseException:
            self.down()
            raise
        return self

    def _add_host(self, name: str, ip: str) -> Host:
        ns = f"{self.tag}-{name}"
        sh("ip", "netns", "add", ns)
        port = f"p-{name}"
        sh("ip", "-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", "eth0",
           "netns", ns)  # fmt: skip
        sh("ip", "-n", self.switch, "link", "set", port, "master", "br0", "up")
        sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        sh("ip", "-n", ns, "link", "set", "eth0", "up")
        sh("ip", "-n", ns, "link", "set", "lo", "up")
        workdir = self.workdir / name
        workdir.mkdir(parents=True, exist_ok=True)
        return Host(name, ip, ns, workdir)

    def down(self) -> None:
        """Kill every process, delete the namespaces (their veths go with them)."""
        for host in self.hosts.values():
            host.stop_all()
        for ns in [*(h.ns for h in self.hosts.values()), self.switch]:
            sh("ip", "netns", "del", ns, check=False)
        sh("ip", "link", "del", self.root_link, check=False)
        self.hosts.clear()

    # --- faults ---

    def _chaos(self, host: Host, rule: str | None) -> None:
        """Replace the host's chaos table with one rule on eth0 in and out (None = remove)."""
        script = f"table inet {CHAOS_TABLE}\ndelete table inet {CHAOS_TABLE}\n"
        if rule is not None:
            script += (
                f"table inet {CHAOS_TABLE} {{\n"
                "  chain input {\n    type filter hook input priority 0; policy accept;\n"
                f'    iifname "eth0" {rule}\n  }}\n'
                "  chain output {\n    type filter hook output priority 0; policy accept;\n"
                f'    oifname "eth0" {rule}\n  }}\n'
                "}\n"
            )
        sh("ip", "netns", "exec", host.ns, "nft", "-f", "-", input=script)

    def loss(self, host: Host, percent: float) -> None:
        """Drop ``percent`` % of the host's packets at random, in and out (0 = none)."""
        if percent <= 0:
            self._chaos(host, None)
            return
        per_10k = round(percent * 100)
        self._chaos(host, f"numgen random mod 10000 < {per_10k} drop")

    def partition(self, host: Host) -> None:
        """Cut the host off: every packet to or from it over the network is dropped."""
        self._chaos(host, "drop")

    def heal(self, host: Host) -> None:
        self._chaos(host, None)

    def rules(self, host: Host) -> str:
        return sh("ip", "netns", "exec", host.ns, "nft", "list", "ruleset")

    def delay(self, host: Host, listen_port: int, target: str, ms: float) -> Proc:
        """A TCP proxy on ``host:listen_port`` to ``target`` (``ip:port``), adding ``ms``
        each way. Point a client at it to see a slow link (no netem here)."""
        proc = host.python(
            f"delay-{listen_port}",
            ["-m", "testbed.netns", "delay", f"{host.ip}:{listen_port}", target, str(ms)],
            {},
            ready=b"delay proxy ready",
        )
        self._proxies.append(proc)
        return proc


class DelayProxy:
    """Forward TCP to ``target``, releasing each chunk ``delay_s`` after it arrived.

    Order is kept per direction, and chunks are not held back behind each other:
    a steady stream sees ``delay_s`` more latency, not less bandwidth.
    """

    def __init__(self, target: tuple[str, int], delay_s: float) -> None:
        self.target = target
        self.delay_s = delay_s

    async def serve(self, host: str, port: int) -> asyncio.Server:
        return await asyncio.start_server(self._client, host, port)

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        loop = asyncio.get_running_loop()

        async def release() -> None:
            while True:
                due, data = await queue.get()
                await asyncio.sleep(max(0.0, due - loop.time()))
                if not data:
                    break
                dst.write(data)
                await dst.drain()

        sender = asyncio.create_task(release())
        try:
            while data := await src.read(65536):
                queue.put_nowait((loop.time() + self.delay_s, data))
        finally:
            queue.put_nowait((loop.time() + self.delay_s, b""))
            with contextlib.suppress(Exception):
                await sender
            dst.close()


async def _run_delay(listen: str, target: str, ms: float) -> None:
    lhost, lport = listen.rsplit(":", 1)
    thost, tport = target.rsplit(":", 1)
    server = await DelayProxy((thost, int(tport)), ms / 1000).serve(lhost, int(lport))
    print("delay proxy ready", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m testbed.netns")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("delay", help="run a TCP delay proxy (inside a namespace)")
    d.add_argument("listen")
    d.add_argument("target")
    d.add_argument("ms", type=float)
    sub.add_parser("clean", help="remove leftovers of crashed runs")
    args = p.parse_args(argv)
    if args.cmd == "clean":
        clear_leftovers()
        return 0
    asyncio.run(_run_delay(args.listen, args.target, args.ms))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
