"""A client that stops reading cannot grow the gateway's memory (issue 11, item 5).

For the memory tests the gateway runs as its own process (``python -m gateway``)
against a real nats-server, so its memory is measured alone: the peak resident set
(``VmHWM`` in /proc) against the resident set before the flood. A producer plays the
TTS and LLM workers' part, publishing straight onto the session's subjects
(``audio.out.<sid>``, ``events.<sid>.reply.delta``).

- A client that stops reading (a tiny socket receive buffer, nothing taken from it)
  while 200 MB of reply audio and events come for its session: the gateway's peak
  memory grows by far less than that, the session is closed with 4008
  ``slow_consumer`` (docs/protocol.md) once its bounded outbox is full, and another
  client's session on the same gateway goes on answering.
- Reply audio whose first sentence never comes (a lost TTS request, a misbehaving
  publisher): the gateway holds at most its reorder limit, then skips the gap, so a
  reading client gets the rest, in order, and the memory stays bounded.

The timing rules run in process, with their timeouts shortened: a socket that takes no
message for ``SEND_TIMEOUT_S`` is closed with 4008 at once, and one that never reads
its close frame is cut off after ``CLOSE_TIMEOUT_S``.

The memory tests need Linux (/proc).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import random
import re
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from nats.js import JetStreamContext
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from gateway import session, ws_protocol
from gateway.audio_order import REORDER_LIMIT
from gateway.server import RunningGateway
from gateway.session import OUTBOX_BYTES, SLOW_CONSUMER
from schemas import AudioChunk, ReplyDelta, Subjects
from streams import bus
from streams.settings import Settings
from tests.integration.gateway_helpers import Client

MB = 1024 * 1024
CHUNK = 256 * 1024
"""Bytes of PCM per published chunk (the server takes 4 MB messages)."""
FLOOD = 200 * MB
"""Reply audio published for the stalled client's session."""
GROWTH_LIMIT = 60 * MB
"""How much the gateway's peak memory may grow while the flood comes."""
TIMEOUT = 20.0
SLOW_CONSUMERS = r'morgan_gateway_rejections_total\{reason="slow_consumer"\}'
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def no_tracebacks(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """In-process gateways log no traceback and nothing at ERROR (a gateway process's
    log is read by ``GatewayProcess.bad_log_lines``)."""
    caplog.set_level(logging.INFO)
    yield
    bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not bad, [r.getMessage() for r in bad]


@dataclass
class GatewayProcess:
    proc: asyncio.subprocess.Process
    url: str
    log: Path

    @property
    def ws_url(self) -> str:
        return self.url.replace("http://", "ws://") + "/ws"

    def memory(self) -> tuple[int, int]:
        """(resident now, peak resident), bytes."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        found = dict(re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB$", status, re.M))
        return int(found["VmRSS"]) * 1024, int(found["VmHWM"]) * 1024

    def bad_log_lines(self) -> list[str]:
        """Records at ERROR or above, and any traceback, in the gateway's JSON log."""
        bad = []
        for line in self.log.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                bad.append(line)  # not a log record: a crash's output
                continue
            if record.get("level") in ("ERROR", "CRITICAL") or "exc_info" in record:
                bad.append(line)
        return bad


@pytest_asyncio.fixture
async def gateway_process(
    settings: Settings, js: JetStreamContext, tmp_path: Path
) -> AsyncIterator[GatewayProcess]:
    """``python -m gateway`` on a free port, logging JSON lines to a file."""
    if not Path("/proc/self/status").exists():
        pytest.skip("measuring a process's memory needs Linux's /proc")
    inherited = {k: v for k, v in os.environ.items() if not k.startswith("MORGAN_")}
    env = {
        **inherited,
        "PYTHONPATH": str(ROOT),
        "MORGAN_NATS_URL": settings.nats_url,
        "MORGAN_DATA_DIR": str(tmp_path / "gateway"),
        "MORGAN_HTTP_HOST": "127.0.0.1",
        "MORGAN_HTTP_PORT": "0",
        "MORGAN_LOG_FORMAT": "json",
    }
    log = tmp_path / "gateway.log"
    with log.open("wb") as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "gateway",
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=err,
        )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 60)
        found = re.search(rb"(http://[\d.]+:\d+)/", line)
        assert found, f"the gateway did not start: {line!r}\n{log.read_text()}"
        yield GatewayProcess(proc, found[1].decode(), log)
        assert proc.returncode is None, f"the gateway died:\n{log.read_text()}"
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


async def stalled_client(url: str) -> ClientConnection:
    """A WebSocket client that will read nothing after its handshake: a receive buffer of
    a few KiB, and at most one message taken into the client library."""
    host, port = url.removeprefix("ws://").split("/")[0].split(":")
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: no scaling
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, int(port)))
    return await connect(url, sock=sock, max_queue=1, max_size=None, compression=None)


async def start_session(conn: ClientConnection) -> str:
    await conn.send('{"type":"session.start"}')
    ready = json.loads(await asyncio.wait_for(conn.recv(), TIMEOUT))
    assert ready["type"] == "session.ready", ready
    return str(ready["session_id"])


async def publish_audio(
    js: JetStreamContext, sid: str, total: int, *, first_seq: int = 0, events: bool = False
) -> int:
    """``total`` bytes of reply audio for turn ``u1``, one sentence per chunk from
    ``first_seq``, 8 publishes in flight; a ``reply.delta`` every 16 chunks when
    ``events``. Returns the sentences published."""
    s = Subjects()
    pcm = random.Random(7).randbytes(CHUNK)  # noise: deflate cannot shrink it
    count = total // CHUNK
    pending: list[Awaitable[Any]] = []
    for n in range(count):
        seq = first_seq + n
        pending.append(
            bus.publish(js, s.audio_out(sid), AudioChunk(sid, "u1", seq, 0, True, 22050, 0, pcm))
        )
        if events and n % 16 == 0:
            delta = ReplyDelta(sid, "u1", n // 16, f"sentence {seq} ")
            pending.append(bus.publish(js, s.events(sid, delta.TYPE), delta))
        if len(pending) >= 8:
            await asyncio.gather(*pending)
            pending.clear()
    await asyncio.gather(*pending)
    return count


async def metric(http: httpx.AsyncClient, pattern: str) -> float:
    """A value on /metrics (0 when the line is not there)."""
    text = (await http.get("/metrics")).text
    found = re.search("^" + pattern + r" (\S+)$", text, re.M)
    return float(found[1]) if found else 0.0


async def read_to_close(conn: ClientConnection) -> tuple[list[dict[str, Any]], int | None]:
    """Every text message until the server's close (binary frames are checked against
    the header before them), and the close code (None: no close frame came)."""
    got: list[dict[str, Any]] = []
    with contextlib.suppress(ConnectionClosed):
        while True:
            raw = await asyncio.wait_for(conn.recv(), TIMEOUT)
            if isinstance(raw, bytes):
                assert got and got[-1]["type"] == "audio" and got[-1]["bytes"] == len(raw)
                continue
            got.append(json.loads(raw))
    return got, conn.close_code if conn.protocol.close_rcvd is not None else None


async def test_a_client_that_stops_reading_is_closed_4008_and_memory_stays_bounded(
    gateway_process: GatewayProcess, js: JetStreamContext
) -> None:
    gw = gateway_process
    stalled = await stalled_client(gw.ws_url)
    sid = await start_session(stalled)
    bystander = Client(await connect(gw.ws_url))
    await bystander.start()
    rss_before, _ = gw.memory()
    async with httpx.AsyncClient(base_url=gw.url, timeout=TIMEOUT) as http:
        flood = asyncio.create_task(publish_audio(js, sid, FLOOD, events=True))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while not await metric(http, SLOW_CONSUMERS):
            assert loop.time() < deadline, "the stalled client is still open"
            await asyncio.sleep(0.05)
        # The client reads again: what was already on its way, then the close.
        got, code = await read_to_close(stalled)
        assert (code, stalled.close_reason) == (SLOW_CONSUMER, "slow_consumer"), got[-3:]
        audio = [m for m in got if m["type"] == "audio"]
        assert [m["seq"] for m in audio] == list(range(len(audio))), "audio out of order"
        assert len(audio) * CHUNK < OUTBOX_BYTES + 16 * MB, "sent far past the outbox"
        await asyncio.wait_for(flood, 120)
        _, peak = gw.memory()
        print(
            f"gateway RSS {rss_before / MB:.1f} MB before, peak {peak / MB:.1f} MB; the "
            f"stalled client got {len(audio)} chunks ({len(audio) * CHUNK / MB:.1f} MB)"
        )
        assert peak - rss_before < GROWTH_LIMIT, f"grew {(peak - rss_before) / MB:.1f} MB"
        # Everyone else is served.
        await bystander.send({"type": "text", "text": "still here?"})
        answer = await bystander.recv()
        assert (answer["type"], answer["text"]) == ("transcript", "still here?"), answer
        assert (await http.get("/health")).status_code == 200
        assert await metric(http, "morgan_gateway_active_sessions") == 1
    await bystander.conn.close()
    assert not gw.bad_log_lines(), gw.bad_log_lines()


async def test_a_client_that_takes_nothing_for_the_send_timeout_is_closed_4008_at_once(
    gateway: RunningGateway, js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The other way to 4008: the outbox has room, but the socket took no message in
    ``SEND_TIMEOUT_S``. What waited is dropped; the close goes at once."""
    monkeypatch.setattr(session, "SEND_TIMEOUT_S", 0.5)
    monkeypatch.setattr(session, "OUTBOX_BYTES", 1024 * MB)  # never full here
    stalled = await stalled_client(gateway.ws_url)
    sid = await start_session(stalled)
    bystander = Client(await connect(gateway.ws_url))
    await bystander.start()
    await publish_audio(js, sid, 16 * MB)  # more than the sockets' buffers take
    async with httpx.AsyncClient(base_url=gateway.url, timeout=TIMEOUT) as http:
        async with asyncio.timeout(TIMEOUT):
            while not await metric(http, SLOW_CONSUMERS):
                await asyncio.sleep(0.05)
        got, code = await read_to_close(stalled)
        assert (code, stalled.close_reason) == (SLOW_CONSUMER, "slow_consumer"), got[-3:]
        audio = [m for m in got if m["type"] == "audio"]
        assert 0 < len(audio) < 16 * MB // CHUNK, "all of it was sent, or none"
        assert [m["seq"] for m in audio] == list(range(len(audio))), "audio out of order"
        await bystander.send({"type": "text", "text": "still here?"})
        answer = await bystander.recv()
        assert (answer["type"], answer["text"]) == ("transcript", "still here?"), answer
        assert await metric(http, "morgan_gateway_active_sessions") == 1


async def test_a_client_that_never_reads_again_is_cut_off_after_the_close_timeout(
    gateway: RunningGateway, js: JetStreamContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The 4008 close frame waits behind the bytes the client has not read; a client that
    never reads them does not hold the connection (and its buffer) for ever."""
    monkeypatch.setattr(session, "SEND_TIMEOUT_S", 0.5)
    monkeypatch.setattr(ws_protocol, "CLOSE_TIMEOUT_S", 0.5)
    connections = gateway.server.server_state.connections
    stalled = await stalled_client(gateway.ws_url)
    sid = await start_session(stalled)
    bystander = Client(await connect(gateway.ws_url))
    await bystander.start()
    assert len(connections) == 2
    await publish_audio(js, sid, 16 * MB)
    async with asyncio.timeout(TIMEOUT):
        while len(connections) > 1:  # the stalled one, cut off by the gateway
            await asyncio.sleep(0.05)
    with pytest.raises(ConnectionClosed):
        while True:  # what was on its way, then the end (no close frame: it was cut)
            await asyncio.wait_for(stalled.recv(), TIMEOUT)
    assert stalled.protocol.close_rcvd is None
    await bystander.send({"type": "text", "text": "still here?"})
    answer = await bystander.recv()
    assert (answer["type"], answer["text"]) == ("transcript", "still here?"), answer


async def test_audio_behind_a_sentence_that_never_comes_is_bounded_then_skipped(
    gateway_process: GatewayProcess, js: JetStreamContext
) -> None:
    gw = gateway_process
    conn = await connect(gw.ws_url, max_size=None, compression=None)
    sid = await start_session(conn)
    rss_before, _ = gw.memory()
    heard = Heard(conn)
    held = REORDER_LIMIT // CHUNK + 1  # this many chunks pass the limit: the gap is skipped
    await publish_audio(js, sid, held * CHUNK, first_seq=1)  # seq 0 never comes
    await heard.reach(held)
    for seq in range(held + 1, held + 33):  # then more, never far ahead of the client
        await heard.reach(seq - 8)
        await publish_audio(js, sid, CHUNK, first_seq=seq)
    await heard.reach(held + 32)
    _, peak = gw.memory()
    print(f"gateway RSS {rss_before / MB:.1f} MB before, peak {peak / MB:.1f} MB")
    assert heard.seqs == list(range(1, held + 33)), "the gap was not skipped in order"
    assert peak - rss_before < REORDER_LIMIT + 16 * MB, f"grew {(peak - rss_before) / MB:.1f} MB"
    await conn.close()
    heard.task.cancel()
    assert not gw.bad_log_lines(), gw.bad_log_lines()


class Heard:
    """The seq of every audio chunk a client receives, read as fast as they come."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn = conn
        self.seqs: list[int] = []
        self.changed = asyncio.Event()
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        with contextlib.suppress(ConnectionClosed):
            async for raw in self.conn:
                if isinstance(raw, str) and (msg := json.loads(raw))["type"] == "audio":
                    self.seqs.append(msg["seq"])
                    self.changed.set()
        self.changed.set()

    async def reach(self, seq: int) -> None:
        """Wait until chunk ``seq`` (or a later one) has come."""
        async with asyncio.timeout(TIMEOUT):
            while not self.seqs or self.seqs[-1] < seq:
                assert not self.task.done(), f"the socket closed: {self.conn.close_code}"
                self.changed.clear()
                await self.changed.wait()
