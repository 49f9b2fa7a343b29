"""Traefik in front, for real: the real Traefik, configured from deploy/traefik/, finds two
real gateways in Consul (the fake agent) and carries HTTPS and WebSocket traffic to them;
when the gateway serving a conversation is SIGKILLed, the client reconnects through
Traefik, lands on the other gateway and resumes from the streams, and every event and
every audio chunk of the session reaches it exactly once.

What runs: nats-server (embedded), the fake Consul agent over HTTPS requiring client
certificates, ``python -m gateway`` twice and ``python -m processors`` for vad, llm and
tts, all registered in Consul over mTLS with the certificates of a test CA
(tests/tls_helpers.py), and Traefik (testbed/traefik.py) whose consulCatalog provider
reads the agent over mTLS and whose ``websecure`` entrypoint serves the deployed
tls.yml's certificate. The gateways' Consul tags are gateway/traefik_tags.txt as they
ship. Turns are typed (``text`` messages): what is under test is the path between the
client and the gateways, not speech recognition.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from websockets.asyncio.client import ClientConnection, connect
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed, InvalidStatus

from schemas import Subjects
from streams import bus, embedded
from streams.definitions import AUDIO, EVENTS
from streams.settings import Settings
from testbed.ports import free_port
from testbed.traefik import ROOT, ConsulEndpoint, Traefik
from tests.fakes.consul import FakeConsul, TLSFiles
from tests.tls_helpers import CertAuthority

pytestmark = pytest.mark.system

API_KEY = "k-traefik-test"
COOKIE = "morgan_gw"
"""The sticky cookie gateway/traefik_tags.txt names."""
READY_S = 120.0
"""Most time a gateway or processor may take to start (models load on 2 busy cores)."""
TURN_S = 60.0


# --- processes ------------------------------------------------------------------------


@dataclass
class Child:
    """A Morgan process started by the test; its output goes to ``log_path``."""

    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path

    def log(self, tail: int = 4000) -> str:
        return self.log_path.read_bytes()[-tail:].decode(errors="replace")

    async def wait_for(self, marker: bytes, timeout: float = READY_S) -> None:
        deadline = time.monotonic() + timeout
        while marker not in self.log_path.read_bytes():
            if self.popen.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready:\n{self.log()}")
            await asyncio.sleep(0.1)


def spawn(name: str, args: list[str], env: dict[str, str], workdir: Path) -> Child:
    log_path = workdir / f"{name}.log"
    with log_path.open("wb") as out:
        popen = subprocess.Popen(
            [sys.executable, *args],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Child(name, popen, log_path)


async def stop_all(children: list[Child], timeout: float = 15.0) -> None:
    """SIGTERM to all, then SIGKILL to any still running after ``timeout``. Waits in the
    event loop: a gateway deregisters from the fake agent, which answers from this loop."""
    for child in children:
        if child.popen.poll() is None:
            child.popen.terminate()
    deadline = time.monotonic() + timeout
    while any(c.popen.poll() is None for c in children) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    for child in children:
        if child.popen.poll() is None:
            child.popen.kill()
            child.popen.wait(5)


# --- the deployment -------------------------------------------------------------------


@dataclass
class Stack:
    consul: FakeConsul
    traefik: Traefik
    gateways: dict[str, Child]
    """Gateway URL (as Traefik names its server) -> process."""
    processors: list[Child]
    ca: CertAuthority
    nats_url: str

    def client_tls(self) -> ssl.SSLContext:
        """What a browser of this deployment trusts: the CA that signed Traefik's cert."""
        return ssl.create_default_context(cafile=self.ca.cert_file)

    def logs(self) -> str:
        parts = [f"--- {c.name} ---\n{c.log()}" for c in self.gateways.values()]
        parts += [f"--- {c.name} ---\n{c.log(2000)}" for c in self.processors]
        return "\n".join([*parts, f"--- traefik ---\n{self.traefik.log()}"])


@contextlib.asynccontextmanager
async def deployment(
    workdir: Path,
    nats: embedded.EmbeddedNats,
    kinds: tuple[str, ...],
    responding_timeouts: dict[str, str] | None = None,
) -> AsyncIterator[Stack]:
    ca = CertAuthority("morgan-test-ca", workdir / "pki")
    agent = ca.issue("consul", hosts=("127.0.0.1", "localhost"))
    morgan = ca.issue("morgan", client=True, server=False)
    proxy = ca.issue("traefik-consul", client=True, server=False)
    public = ca.issue("morgan-public", hosts=("127.0.0.1", "localhost"))
    tls = TLSFiles(agent.cert, agent.key, client_ca=ca.cert_file)
    async with FakeConsul(tls=tls, reap_interval_s=1.0) as consul:
        base = {k: v for k, v in os.environ.items() if not k.startswith(("MORGAN_", "CONSUL_"))}
        base |= {
            "PYTHONPATH": str(ROOT),
            "MORGAN_NATS_URL": nats.url,
            "MORGAN_API_KEYS": f"alice:{API_KEY}",
            "MORGAN_LOG_LEVEL": "INFO",
            "CONSUL_HTTP_ADDR": consul.url,
            "CONSUL_CACERT": str(ca.cert_file),
            "CONSUL_CLIENT_CERT": str(morgan.cert),
            "CONSUL_CLIENT_KEY": str(morgan.key),
        }
        children: list[Child] = []
        traefik = Traefik(
            workdir / "traefik",
            ConsulEndpoint(consul.addr, ca=ca.cert_file, cert=proxy.cert, key=proxy.key),
            cert=public.cert,
            key=public.key,
            responding_timeouts=responding_timeouts,
        )
        try:
            for kind in kinds:
                env = base | {"MORGAN_DATA_DIR": str(workdir / kind)}
                children.append(spawn(kind, ["-m", "processors", kind], env, workdir))
            gateways = {}
            for name in ("gw-a", "gw-b"):
                port = free_port()
                env = base | {
                    "MORGAN_DATA_DIR": str(workdir / name),
                    "MORGAN_HTTP_HOST": "127.0.0.1",
                    "MORGAN_HTTP_PORT": str(port),
                }
                gateways[f"http://127.0.0.1:{port}"] = spawn(name, ["-m", "gateway"], env, workdir)
            children += gateways.values()
            await traefik.start()
            ready = [g.wait_for(b"Morgan gateway:") for g in gateways.values()]
            ready += [p.wait_for(b" ready on ") for p in children if p not in gateways.values()]
            await asyncio.gather(*ready)
            stack = Stack(consul, traefik, gateways, children[: len(kinds)], ca, nats.url)
            await traefik.wait_servers(set(gateways))
            yield stack
        finally:
            await traefik.stop()
            await stop_all(children)


@pytest_asyncio.fixture
async def front(tmp_path: Path, nats_server: embedded.EmbeddedNats) -> AsyncIterator[Stack]:
    """Traefik and two gateways (no processors)."""
    async with deployment(tmp_path, nats_server, ()) as stack:
        yield stack


@pytest_asyncio.fixture
async def impatient_front(
    tmp_path: Path, nats_server: embedded.EmbeddedNats
) -> AsyncIterator[Stack]:
    """Traefik and two gateways, with every entrypoint's read and idle timeouts 1 s."""
    timeouts = {"readTimeout": "1s", "idleTimeout": "1s"}
    async with deployment(tmp_path, nats_server, (), timeouts) as stack:
        yield stack


@pytest_asyncio.fixture
async def stack(tmp_path: Path, nats_server: embedded.EmbeddedNats) -> AsyncIterator[Stack]:
    """Traefik, two gateways and the processors a typed turn needs."""
    async with deployment(tmp_path, nats_server, ("vad", "llm", "tts")) as s:
        yield s


# --- a client that resumes, as the browser page does -----------------------------------


@dataclass
class Resumer:
    """A WebSocket client of docs/protocol.md that keeps its resume cursors and Traefik's
    sticky cookie, and when the socket drops reconnects (502/503 and refused connections
    are tried again, waiting 0.5 s doubling to 8 s as gateway/static/app.js does) and
    resumes the session."""

    url: str
    tls: ssl.SSLContext
    sid: str = ""
    token: str = ""
    cookie: str = ""
    cookies: list[str] = field(default_factory=list)
    """Every Set-Cookie of the sticky cookie, in full (attributes included)."""
    last_event: int = 0
    last_audio: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    audio: list[dict[str, Any]] = field(default_factory=list)
    """Headers of the audio chunks received whole (header and binary frame)."""
    readies: list[dict[str, Any]] = field(default_factory=list)
    retries: list[str] = field(default_factory=list)
    """Why each connection attempt after a drop failed (``502``, ``ConnectionRefusedError``)."""
    dropped_at: float = 0.0
    resumed_at: float = 0.0
    ws: ClientConnection | None = None
    changed: asyncio.Event = field(default_factory=asyncio.Event)
    _reader: asyncio.Task[None] | None = None
    _ended: bool = False

    async def open(self) -> None:
        ws = await self._connect()
        await self._start(ws)
        self._reader = asyncio.create_task(self._run(ws))

    async def _connect(self) -> ClientConnection:
        tries = 0
        while True:
            headers = {"Authorization": f"Bearer {API_KEY}"}
            if self.cookie:
                headers["Cookie"] = self.cookie
            try:
                ws = await connect(
                    self.url, ssl=self.tls, additional_headers=headers, max_size=None,
                    open_timeout=10,
                )  # fmt: skip
            except InvalidStatus as exc:
                if exc.response.status_code not in (502, 503, 504):
                    raise
                self.retries.append(str(exc.response.status_code))
            except (OSError, TimeoutError) as exc:
                self.retries.append(type(exc).__name__)
            else:
                assert ws.response is not None
                self._keep_cookie(ws.response.headers)
                return ws
            await asyncio.sleep(min(0.5 * 2**tries, 8.0))
            tries += 1

    def _keep_cookie(self, headers: Headers) -> None:
        for value in headers.get_all("Set-Cookie"):
            if value.startswith(f"{COOKIE}="):
                self.cookies.append(value)
                self.cookie = value.split(";", 1)[0]

    async def _start(self, ws: ClientConnection) -> None:
        start: dict[str, Any] = {"type": "session.start", "rate": 16000, "format": "s16le"}
        if self.sid:
            start |= {
                "session_id": self.sid,
                "resume_token": self.token,
                "last_event": self.last_event,
                "last_audio": self.last_audio,
            }
        await ws.send(json.dumps(start))
        ready = json.loads(await asyncio.wait_for(ws.recv(), 30))
        assert ready["type"] == "session.ready", ready
        self.readies.append(ready)
        if not self.sid:
            self.sid, self.token = ready["session_id"], ready["resume_token"]
        self.ws = ws

    async def _run(self, ws: ClientConnection) -> None:
        try:
            while True:
                await self._read(ws)
                if self._ended:
                    return
                self.dropped_at = time.monotonic()
                while True:
                    ws = await self._connect()
                    try:
                        await self._start(ws)
                        break
                    except ConnectionClosed:
                        self.retries.append("closed before session.ready")
                self.resumed_at = time.monotonic()
        finally:
            self.changed.set()  # wait_until sees the end (and raises what ended it)

    async def _read(self, ws: ClientConnection) -> None:
        """Until the socket closes. An audio header whose binary frame never came is
        dropped (its chunk was not received, so the cursor stays before it)."""
        header: dict[str, Any] | None = None
        try:
            async for frame in ws:
                if isinstance(frame, bytes):
                    assert header is not None, "binary frame without an audio header"
                    assert len(frame) == header["bytes"], header
                    self.audio.append(header)
                    self.last_audio = header["id"]
                    header = None
                else:
                    msg = json.loads(frame)
                    if msg["type"] == "audio":
                        header = msg
                        continue
                    self.events.append(msg)
                    self.last_event = msg.get("id", self.last_event)
                self.changed.set()
        except ConnectionClosed:
            pass  # a dead gateway: Traefik cuts the client's connection
        self.ws = None
        self.changed.set()

    async def say(self, text: str) -> None:
        assert self.ws is not None, "not connected"
        await self.ws.send(json.dumps({"type": "text", "text": text}))

    async def wait_until(self, cond: Callable[[], bool], timeout: float = TURN_S) -> None:
        async with asyncio.timeout(timeout):
            while not cond():
                if self._reader is not None and self._reader.done():
                    self._reader.result()  # a reconnect that failed for good raises here
                    raise AssertionError("the client stopped reading")
                self.changed.clear()
                await self.changed.wait()

    def turns(self) -> list[str]:
        """Turn ids in the order their transcripts came."""
        return [e["turn"] for e in self.events if e["type"] == "transcript"]

    def done(self, turn: str) -> dict[str, Any] | None:
        dones = (e for e in self.events if e["type"] == "reply.done" and e["turn"] == turn)
        return next(dones, None)

    def complete(self, turn: str) -> bool:
        done = self.done(turn)
        lasts = sum(1 for a in self.audio if a["turn"] == turn and a["last"])
        return done is not None and lasts >= done["sentences"]

    async def close(self) -> None:
        self._ended = True
        if self.ws is not None:
            with contextlib.suppress(ConnectionClosed):
                await self.ws.send(json.dumps({"type": "session.end"}))
                await asyncio.wait_for(self.ws.wait_closed(), 10)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader


# --- what the streams hold ------------------------------------------------------------


async def stream_ids(js: JetStreamContext, stream: str, subject: str) -> list[int]:
    """Stream sequence numbers of every message on ``subject`` (the ids the client sees)."""
    config = ConsumerConfig(deliver_policy=DeliverPolicy.ALL, ack_policy=AckPolicy.NONE)
    sub = await js.pull_subscribe(subject, stream=stream, config=config)
    ids: list[int] = []
    try:
        while (pending := (await sub.consumer_info()).num_pending or 0) > 0:
            ids += [m.metadata.sequence.stream for m in await sub.fetch(pending, timeout=5)]
    finally:
        await sub.unsubscribe()
    return ids


async def session_ids(nats_url: str, sid: str) -> tuple[list[int], list[int]]:
    """(EVENTS ids, AUDIO ids of reply audio) of the session."""
    nc = await bus.connect(Settings(nats_url=nats_url), "test-traefik", keep_trying=False)
    try:
        js, s = nc.jetstream(), Subjects()
        return await stream_ids(js, EVENTS, s.events(sid)), await stream_ids(
            js, AUDIO, s.audio_out(sid)
        )
    finally:
        await nc.close()


async def serving(stack: Stack) -> list[str]:
    """The gateways that hold an open WebSocket session now (their own /metrics)."""
    holding = []
    async with httpx.AsyncClient(timeout=5.0) as http:
        for url, child in stack.gateways.items():
            if child.popen.poll() is not None:
                continue
            try:
                text = (await http.get(f"{url}/metrics")).text
            except httpx.TransportError:
                continue  # killed a moment ago, not reaped yet
            found = re.search(r"^morgan_gateway_active_sessions (\S+)$", text, re.M)
            if found and float(found.group(1)) > 0:
                holding.append(url)
    return holding


def assert_turn_whole(client: Resumer, turn: str) -> None:
    """The turn's reply text in order without gaps, and its audio: each sentence's chunks
    0..n once, ``last`` only on the final one, for every sentence reply.done announced."""
    done = client.done(turn)
    assert done is not None, turn
    deltas = [e for e in client.events if e["type"] == "reply.delta" and e["turn"] == turn]
    assert [d["index"] for d in deltas] == list(range(len(deltas))), deltas
    assert "".join(d["text"] for d in deltas) == done["text"]
    chunks = [(a["seq"], a["chunk"], a["last"]) for a in client.audio if a["turn"] == turn]
    assert done["sentences"] >= 1, done
    expected = []
    for seq in range(done["sentences"]):
        count = sum(1 for c in chunks if c[0] == seq)
        expected += [(seq, i, i == count - 1) for i in range(count)]
    assert sorted(chunks) == expected, chunks


# --- the tests ------------------------------------------------------------------------


async def test_traefik_serves_the_deployed_certificate_redirects_http_and_balances_new_clients(
    front: Stack,
) -> None:
    traefik = front.traefik
    async with httpx.AsyncClient(timeout=10.0) as plain:
        r = await plain.get(f"{traefik.http_url}/health")
    assert r.status_code in (301, 308), r
    assert r.headers["Location"] == f"{traefik.https_url}/health"

    # Verified against the test CA alone: Traefik serves the certificate the deployed
    # dynamic/tls.yml names (its own default certificate would fail verification).
    cookies = []
    async with httpx.AsyncClient(verify=front.client_tls(), timeout=10.0) as browser:
        values: set[str] = set()
        for _ in range(10):  # no cookie sent: round robin over both gateways
            browser.cookies.clear()
            r = await browser.get(f"{traefik.https_url}/health")
            assert r.status_code == 200 and r.json()["nats"] == "connected", r.text
            cookies += [c for c in r.headers.get_list("set-cookie") if c.startswith(COOKIE)]
            values = {c.split(";", 1)[0] for c in cookies}
            if len(values) == 2:
                break
    assert len(values) == 2, cookies
    attributes = {a.strip().lower() for a in cookies[0].split(";")[1:]}
    assert {"secure", "httponly", "samesite=lax"} <= attributes, cookies[0]

    registered = [s for s in front.consul.services.values() if s.name == "morgan-gateway"]
    assert sorted(f"http://127.0.0.1:{s.port}" for s in registered) == sorted(front.gateways)
    assert front.consul.tls_refusals == []  # gateways and Traefik all presented valid certs


async def test_a_websocket_through_traefik_outlives_the_entrypoints_read_and_idle_timeouts(
    impatient_front: Stack,
) -> None:
    """They bound reading a request and idle keep-alive connections, not an upgraded
    WebSocket: the deployed 60 s readTimeout does not cut a voice session at a minute."""
    traefik = impatient_front.traefik
    # The control: a connection that sends no request is closed after the 1 s.
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", traefik.ports["websecure"], ssl=impatient_front.client_tls()
    )
    opened = time.monotonic()
    assert await asyncio.wait_for(reader.read(), 10) == b""
    assert time.monotonic() - opened >= 0.9
    writer.close()

    client = Resumer(
        traefik.https_url.replace("https", "wss", 1) + "/ws", impatient_front.client_tls()
    )
    await client.open()
    try:
        for _ in range(2):
            await asyncio.sleep(2.5)  # idle past both timeouts (the thing under test)
            assert client.ws is not None, "the socket was closed while idle"
            await client.ws.send(json.dumps({"type": "no-such-message"}))
            await client.wait_until(lambda: len(client.events) == 1, timeout=10)
            assert client.events.pop()["code"] == "unknown_type"
        assert client.ws is not None and client.dropped_at == 0.0
    finally:
        await client.close()


async def test_killing_the_gateway_mid_reply_resumes_through_traefik_with_every_event_once(
    stack: Stack,
) -> None:
    client = Resumer(stack.traefik.https_url.replace("https", "wss", 1) + "/ws", stack.client_tls())
    await client.open()
    try:
        await client.say("Say hello to my friend Sam.")
        await client.wait_until(
            lambda: len(client.turns()) == 1 and client.complete(client.turns()[0])
        )
        [first_gateway] = await serving(stack)
        first_cookie = client.cookie

        await client.say("Tell me a long story about a dragon and a knight.")
        await client.wait_until(
            lambda: (
                len(client.turns()) == 2
                and any(a["turn"] == client.turns()[1] for a in client.audio)
            )
        )
        victim = stack.gateways[first_gateway]
        victim.popen.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        story = client.turns()[1]
        mid_reply = not client.complete(story)

        await client.wait_until(lambda: client.resumed_at > 0 and client.complete(story))
        resumed_s = client.resumed_at - killed_at
        story_s = time.monotonic() - killed_at
        [survivor] = await serving(stack)

        await client.say("What color is the sky?")
        await client.wait_until(
            lambda: len(client.turns()) == 3 and client.complete(client.turns()[2])
        )
        await stack.traefik.wait_servers({survivor})  # its TTL check lapsed in Consul
        removed_s = time.monotonic() - killed_at
    except BaseException:
        print(stack.logs())
        raise
    finally:
        await client.close()
    events, audio = await session_ids(stack.nats_url, client.sid)
    print(
        f"traefik failover: resumed {resumed_s:.1f} s after the kill "
        f"(tries: {client.retries}), the story complete {story_s:.1f} s after it, "
        f"the dead gateway out of Traefik's servers {removed_s:.1f} s after it"
    )

    assert mid_reply, "the reply was complete before the kill: the test proved nothing"
    assert survivor != first_gateway
    assert [r["resumed"] for r in client.readies] == [False, True]
    assert client.cookie != first_cookie  # Traefik moved the sticky cookie to the survivor
    event_ids = [e["id"] for e in client.events if "id" in e]
    audio_ids = [a["id"] for a in client.audio]
    assert [i for i, n in Counter(event_ids).items() if n > 1] == []
    assert [i for i, n in Counter(audio_ids).items() if n > 1] == []
    assert sorted(event_ids) == sorted(events)
    assert sorted(audio_ids) == sorted(audio)
    for turn in client.turns():
        assert_turn_whole(client, turn)
