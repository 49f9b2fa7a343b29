"""The gateway's FastAPI app: ``create_app(settings)``.

    GET  /          the browser page          (open)
    GET  /health    NATS state + queue depth  (open)
    GET  /metrics   Prometheus text           (open)
    GET  /ws        WebSocket voice session   (API key; 503 when overloaded)
    POST /api/text  typed turn -> text + WAV  (API key; 503 when overloaded)

The lifespan connects to NATS, applies the stream definitions and starts the
queue-depth poller. docs/protocol.md describes what clients send and receive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import platform
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI
from starlette.requests import HTTPConnection, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from gateway import auth, presence, text_api
from gateway.metrics import CONTENT_TYPE, Metrics
from gateway.overload import Load
from gateway.session import Session
from gateway.state import Gateway, gateway_of
from streams import bus, definitions
from streams.settings import Settings

log = logging.getLogger("morgan.gateway")
STATIC = Path(__file__).with_name("static")


def create_app(settings: Settings) -> FastAPI:
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nc = await bus.connect(settings, f"morgan-gateway-{platform.node()}")
        js = nc.jetstream()
        await definitions.apply(js, settings)
        load = Load(settings, metrics)
        await load.poll_once(js)
        app.state.gateway = Gateway(settings, nc, js, metrics, load)
        poller = asyncio.create_task(load.run(js))
        try:
            async with presence.registered(settings, nc, settings.http_port):
                yield
        finally:
            poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await poller
            with contextlib.suppress(Exception):
                await asyncio.wait_for(nc.drain(), 5)

    app = FastAPI(title="Morgan gateway", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/")
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/health")
    async def health(request: Request) -> JSONResponse:
        gw = gateway_of(request)
        up = gw.nc.is_connected
        body = {
            "status": "ok" if up else "unavailable",
            "nats": "connected" if up else "disconnected",
            "queue_depth": gw.load.depth,
        }
        return JSONResponse(body, status_code=200 if up else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.websocket("/ws")
    async def voice(websocket: WebSocket) -> None:
        gw = gateway_of(websocket)
        refused = refusal(websocket, gw)
        if refused is not None:
            try:
                await websocket.send_denial_response(refused)
            except RuntimeError:  # the server lacks the denial-response extension
                await websocket.close(code=4000 + refused.status_code)
            return
        await websocket.accept()
        await Session(gw, websocket).run()

    @app.post("/api/text")
    async def text(request: Request) -> Response:
        gw = gateway_of(request)
        refused = refusal(request, gw)
        if refused is not None:
            return refused
        return await text_api.post_text(request, gw)

    return app


def refusal(conn: HTTPConnection, gw: Gateway) -> JSONResponse | None:
    """Why a new session or request is refused (401, 503), or None to serve it."""
    s = gw.settings
    if not auth.authorized(conn, s.api_key_set):
        return _refuse(
            gw, 401, "unauthorized", "a valid API key is required", {"WWW-Authenticate": "Bearer"}
        )
    retry = {"Retry-After": str(s.retry_after_s)}
    if not gw.nc.is_connected:
        return _refuse(gw, 503, "unavailable", "the message bus is unavailable", retry)
    if gw.load.overloaded:
        message = f"work queue depth {gw.load.depth} exceeds {s.max_queue_depth}"
        return _refuse(gw, 503, "overloaded", message, retry)
    return None


def _refuse(
    gw: Gateway, status: int, code: str, message: str, headers: dict[str, str]
) -> JSONResponse:
    gw.metrics.rejections.labels(code).inc()
    return JSONResponse({"error": code, "message": message}, status_code=status, headers=headers)
