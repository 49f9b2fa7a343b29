"""The gateway's HTTP edge over a real socket (uvicorn) and a real nats-server: body
limits while reading, deadlines on heads, bodies and idle connections, Host and Origin
checks, and secrets kept out of uvicorn's logs.

Raw asyncio sockets play the clients no library would be (half a request, a body that
stops); waits past a deadline are bounded by ``asyncio.wait_for``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.js import JetStreamContext
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin

from gateway.server import RunningGateway
from gateway.text_api import MAX_BODY_BYTES
from streams.settings import Settings
from tests.integration.gateway_helpers import serving

TIMEOUT = 10.0


class Raw:
    """A client on a bare TCP socket: sends what it is told, reads what comes back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    @asynccontextmanager
    async def open(cls, gw: RunningGateway) -> AsyncIterator[Raw]:
        reader, writer = await asyncio.open_connection(gw.host, gw.port)
        try:
            yield cls(reader, writer)
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def until_closed(self, timeout: float = TIMEOUT) -> tuple[bytes, float]:
        """Everything the server sends until it closes, and the seconds that took."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        data = await asyncio.wait_for(self.reader.read(), timeout)
        return data, loop.time() - began

    async def response(self) -> tuple[int, bytes]:
        """One response with a Content-Length, leaving the connection open."""
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), TIMEOUT)
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        body = await asyncio.wait_for(self.reader.readexactly(length), TIMEOUT)
        return int(head.split(b" ", 2)[1]), body


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1])


def body_of(raw: bytes) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(raw.partition(b"\r\n\r\n")[2])
    return body


def status_bytes(field: str) -> int:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of this process, which runs the gateway."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/self/status")


def reset_peak_rss() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS (Linux >= 4.0)


# ---- request bodies ------------------------------------------------------------------


async def test_a_huge_streamed_body_is_refused_while_reading_without_holding_it(
    gateway: RunningGateway,
) -> None:
    chunk = b"a" * 65536
    total = 150 * 1024 * 1024

    async def body() -> AsyncIterator[bytes]:
        for _ in range(total // len(chunk)):
            yield chunk

    reset_peak_rss()
    before = status_bytes("VmRSS")
    async with httpx.AsyncClient(base_url=gateway.url, timeout=TIMEOUT) as http:
        response = await http.post(
            "/api/text", content=body(), headers={"Content-Type": "application/json"}
        )
    grown = status_bytes("VmHWM") - before
    assert response.status_code == 413 and response.json()["error"] == "too_large"
    assert grown < 20 * 1024 * 1024, f"peak RSS grew by {grown / 2**20:.0f} MiB"


async def test_a_declared_content_length_past_the_limit_is_413_before_any_body_is_sent(
    settings: Settings, js: JetStreamContext
) -> None:
    async with serving(settings, http_body_timeout_s=0.5) as gw:
        async with Raw.open(gw) as client:
            await client.send(
                b"POST /api/text HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                b"Expect: 100-continue\r\n"
                + f"Content-Length: {MAX_BODY_BYTES + 1}\r\n\r\n".encode()
            )
            status, body = await client.response()  # no "100 Continue" first
            assert status == 413 and json.loads(body)["error"] == "too_large"
            # The body that never comes is waited for no longer than the body timeout.
            rest, took = await client.until_closed()
    assert rest == b"" and took < 5


async def test_a_body_that_stops_arriving_is_408_after_the_body_timeout(
    settings: Settings, js: JetStreamContext
) -> None:
    async with serving(settings, http_body_timeout_s=0.5) as gw:
        async with Raw.open(gw) as client:
            await client.send(
                b"POST /api/text HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n" + b'{"text": "'
            )
            raw, took = await client.until_closed()
    assert status_of(raw) == 408
    assert body_of(raw) == {"error": "timeout", "message": "body not received in 0.5 s"}
    assert 0.4 < took < 5


# ---- slow and idle connections -------------------------------------------------------


async def test_a_connection_that_sends_half_a_request_head_is_closed_with_408(
    settings: Settings, js: JetStreamContext
) -> None:
    async with serving(settings, http_header_timeout_s=0.5) as gw:
        async with Raw.open(gw) as client:
            await client.send(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
            raw, took = await client.until_closed()
    assert status_of(raw) == 408 and body_of(raw)["error"] == "timeout"
    assert 0.4 < took < 5


async def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(
    settings: Settings, js: JetStreamContext
) -> None:
    async with serving(settings, http_header_timeout_s=0.5) as gw:
        async with Raw.open(gw) as client:
            raw, took = await client.until_closed()
    assert raw == b"" and 0.4 < took < 5


async def test_a_later_request_on_a_kept_alive_connection_gets_the_header_timeout_too(
    settings: Settings, js: JetStreamContext
) -> None:
    async with serving(settings, http_header_timeout_s=0.5, http_keep_alive_s=60) as gw:
        async with Raw.open(gw) as client:
            await client.send(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            status, _ = await client.response()
            assert status == 200
            await client.send(b"GET /health HTTP/1.1\r\nHost: 127.0")
            raw, took = await client.until_closed()
    assert status_of(raw) == 408 and took < 5


async def test_an_idle_kept_alive_connection_is_closed_after_the_keep_alive_time(
    settings: Settings, js: JetStreamContext
) -> None:
    async with serving(settings, http_keep_alive_s=1, http_header_timeout_s=60) as gw:
        async with Raw.open(gw) as client:
            await client.send(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            status, _ = await client.response()
            raw, took = await client.until_closed(timeout=4)
    assert status == 200 and raw == b"" and 0.8 < took < 4


async def test_whole_requests_and_websockets_outlive_the_header_timeout(
    settings: Settings, js: JetStreamContext
) -> None:
    async with serving(settings, http_header_timeout_s=0.5) as gw:
        async with httpx.AsyncClient(base_url=gw.url) as http:
            assert (await http.get("/health")).status_code == 200
        async with connect(gw.ws_url) as ws:
            await asyncio.sleep(1.5)  # three header timeouts on an upgraded connection
            pong = await ws.ping()
            await asyncio.wait_for(pong, TIMEOUT)


# ---- cross-site use ------------------------------------------------------------------


def ws_as(gw: RunningGateway, host: str | None, **kw: Any) -> connect:
    """A WebSocket to the gateway whose handshake names ``host`` (default: its address)."""
    if host is None:
        return connect(gw.ws_url, **kw)
    return connect(f"ws://{host}/ws", host=gw.host, port=gw.port, **kw)


async def refused_ws(
    gw: RunningGateway, host: str | None = None, **kw: Any
) -> tuple[int, dict[str, Any]]:
    with pytest.raises(InvalidStatus) as info:
        async with ws_as(gw, host, **kw):
            pass
    body: dict[str, Any] = json.loads(info.value.response.body or b"{}")
    return info.value.response.status_code, body


async def test_a_websocket_from_another_site_is_403_before_the_upgrade(
    gateway: RunningGateway,
) -> None:
    for origin in ("http://evil.example", "null", f"http://127.0.0.1:{gateway.port + 1}"):
        status, body = await refused_ws(gateway, origin=Origin(origin))
        assert status == 403 and body["error"] == "bad_origin", origin
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        metrics = (await http.get("/metrics")).text
    assert 'morgan_gateway_rejections_total{reason="bad_origin"} 3.0' in metrics


async def test_a_websocket_from_the_gateways_own_page_or_no_browser_is_served(
    gateway: RunningGateway,
) -> None:
    for origin in (f"http://127.0.0.1:{gateway.port}", None):
        async with connect(gateway.ws_url, origin=Origin(origin) if origin else None) as ws:
            await asyncio.wait_for(await ws.ping(), TIMEOUT)


async def test_allowed_origins_may_open_websockets_and_post(
    settings: Settings, js: JetStreamContext
) -> None:
    async with serving(settings, allowed_origins="https://app.example") as gw:
        async with connect(gw.ws_url, origin=Origin("https://app.example")) as ws:
            await asyncio.wait_for(await ws.ping(), TIMEOUT)
        status, _ = await refused_ws(gw, origin=Origin("https://other.example"))
        assert status == 403
        async with httpx.AsyncClient(base_url=gw.url) as http:
            ok = await http.post(
                "/api/text", json={"text": ""}, headers={"Origin": "https://app.example"}
            )
            other = await http.post(
                "/api/text", json={"text": ""}, headers={"Origin": "https://other.example"}
            )
    assert ok.status_code == 422  # judged on its merits: empty text
    assert other.status_code == 403 and other.json()["error"] == "bad_origin"


async def test_post_text_needs_a_json_content_type(gateway: RunningGateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
            headers = {"Content-Type": content_type} if content_type else {}
            r = await http.post("/api/text", content=b'{"text": ""}', headers=headers)
            assert r.status_code == 415 and r.json()["error"] == "bad_content_type"
        judged = await http.post(
            "/api/text",
            content=b'{"text": ""}',
            headers={"Content-Type": "Application/JSON; charset=utf-8"},
        )
    assert judged.status_code == 422


async def test_requests_naming_another_host_are_421_on_every_route(
    gateway: RunningGateway,
) -> None:
    evil = {"Host": "evil.example"}
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        for method, path in [
            ("GET", "/"),
            ("GET", "/health"),
            ("GET", "/metrics"),
            ("GET", "/static/app.js"),
            ("POST", "/api/text"),
        ]:
            r = await http.request(method, path, headers=evil, json={"text": "hi"})
            assert r.status_code == 421 and r.json()["error"] == "bad_host", path
            assert "evil.example" in r.json()["message"]
        status, body = await refused_ws(gateway, "evil.example")
        assert status == 421 and body["error"] == "bad_host"
        for name in (
            f"127.0.0.1:{gateway.port}",
            "localhost",
            "morgan.localhost:80",
            "[::1]:8080",
            socket.gethostname(),
        ):
            assert (await http.get("/health", headers={"Host": name})).status_code == 200, name
        metrics = (await http.get("/metrics")).text
    assert 'morgan_gateway_rejections_total{reason="bad_host"} 6.0' in metrics


async def test_allowed_hosts_lets_a_public_name_or_any_name_through(
    settings: Settings, js: JetStreamContext
) -> None:
    for allowed, ok, refused in [
        ("morgan.example", "Morgan.Example.:443", "evil.example"),
        ("*.example", "a.b.example", "example.org"),
        ("*", "evil.example", None),
    ]:
        async with serving(settings, allowed_hosts=allowed) as gw:
            async with httpx.AsyncClient(base_url=gw.url) as http:
                assert (await http.get("/health", headers={"Host": ok})).status_code == 200
                if refused is not None:
                    r = await http.get("/health", headers={"Host": refused})
                    assert r.status_code == 421, (allowed, refused)


async def test_a_public_name_behind_a_proxy_is_same_origin_for_the_browser(
    settings: Settings, js: JetStreamContext
) -> None:
    """Traefik passes Host: morgan.example; the page's Origin is https://morgan.example."""
    async with serving(settings, allowed_hosts="morgan.example") as gw:
        page = Origin("https://morgan.example")
        async with ws_as(gw, "morgan.example", origin=page) as ws:
            await asyncio.wait_for(await ws.ping(), TIMEOUT)
        status, _ = await refused_ws(gw, "morgan.example", origin=Origin("https://evil.example"))
    assert status == 403


# ---- secrets in logs -----------------------------------------------------------------


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


async def test_api_keys_never_reach_uvicorns_logs(settings: Settings, js: JetStreamContext) -> None:
    collect = Collect()
    loggers = [logging.getLogger(n) for n in ("uvicorn.access", "uvicorn.error")]
    async with serving(settings, api_keys="s3cret", log_level="DEBUG") as gw:
        for logger in loggers:
            logger.addHandler(collect)
        try:
            async with httpx.AsyncClient(base_url=gw.url) as http:
                assert (await http.get("/health?api_key=s3cret")).status_code == 200
                r = await http.post("/api/text?API-Key=s3cret&x=1", json={"text": ""})
                assert r.status_code == 401  # not the parameter auth reads, still a secret
            bearer = {"Authorization": "Bearer s3cret"}
            with pytest.raises(InvalidStatus):  # refused: 400 key_in_url
                await connect(gw.ws_url + "?api_key=s3cret", additional_headers=bearer)
            async with connect(gw.ws_url, additional_headers=bearer) as ws:
                await asyncio.wait_for(await ws.ping(), TIMEOUT)
        finally:
            for logger in loggers:
                logger.removeHandler(collect)
    text = "\n".join(collect.lines)
    assert "s3cret" not in text
    assert "/health?api_key=***" in text and "/api/text?API-Key=***&x=1" in text
    assert '"WebSocket /ws?api_key=***"' in text
