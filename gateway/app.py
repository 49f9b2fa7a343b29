"""The gateway's FastAPI app: ``create_app(settings)``.

    GET  /          the browser page          (open)
    GET  /health    NATS state + queue depth  (open)
    GET  /metrics   Prometheus text           (open)
    GET  /ws        WebSocket voice session   (API key; 503 when overloaded, 429 past the
                                               client's share of sessions)
    POST /api/text  typed turn -> text + WAV  (API key; 503 when overloaded, 429 past the
                                               client's share of turns)
    /api/conversations..., /api/users/{id}/memory  the user's history and memory (API key;
                                               gateway/conversations.py)

The lifespan connects to NATS, applies the stream definitions, starts the live
config (area ``gateway``: Consul KV, else NATS KV; docs/consul.md lists what
applies live) and the queue-depth poller. docs/protocol.md describes what clients
send and receive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import platform
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI, Query
from fastapi.exceptions import RequestValidationError
from nats.errors import Error as NatsError
from starlette.requests import HTTPConnection, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from gateway import auth, conversations, http_guard, presence, text_api
from gateway.errors import error_response
from gateway.metrics import CONTENT_TYPE, Metrics
from gateway.overload import Load
from gateway.quota import Quota
from gateway.session import Session
from gateway.session_book import SessionBook
from gateway.state import Gateway, gateway_of
from gateway.stores import Stores
from streams import bus, definitions
from streams.config_source import ConfigSource
from streams.settings import Settings

log = logging.getLogger("morgan.gateway")
STATIC = Path(__file__).with_name("static")
PAGE_HEADERS = {
    "Content-Security-Policy": "frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}
"""The page asks for the microphone and may carry an API key in its URL: no other site
may frame it (a click-jacked permission prompt), and its URL is sent to no one."""


def create_app(settings: Settings) -> FastAPI:
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nc = await bus.connect(settings, f"morgan-gateway-{platform.node()}")
        js = nc.jetstream()
        await definitions.apply(js, settings)
        config = ConfigSource(settings, "gateway", nc=nc)
        live = await config.start()  # the store's settings, else a fresh cache's, else these
        load = Load(live, metrics)
        await load.poll_once(js)
        book = await SessionBook.open(js, settings)
        stores = await Stores.open(live)
        gw = Gateway(live, nc, js, metrics, load, book, Quota(live), stores)
        config.subscribe(gw.reconfigure)
        app.state.gateway = gw
        await gw.watch_turn_ends()
        poller = asyncio.create_task(load.run(js))
        checker = asyncio.create_task(stores.watch())
        try:
            async with presence.registered(settings, nc, settings.http_port):
                yield
        finally:
            for task in (poller, checker):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await config.stop()
            await stores.close()
            try:
                await asyncio.wait_for(nc.drain(), 5)
            except (NatsError, TimeoutError) as exc:  # closed already, or slow to flush
                log.warning("gateway: NATS drain: %r", exc)

    app = FastAPI(title="Morgan gateway", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    host_rule = http_guard.HostRule.from_settings(settings)  # 421 bad_host, every route
    app.add_middleware(http_guard.HostGuard, rule=host_rule, metrics=metrics)

    @app.get("/")
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    @app.get("/health")
    async def health(request: Request) -> JSONResponse:
        """``ok``; ``degraded`` (200) when a data store is away (the voice loop goes on);
        ``unavailable`` (503) without the bus."""
        gw = gateway_of(request)
        up = gw.nc.is_connected
        stores = gw.stores.report
        whole = all(state in ("ok", "none") for state in stores.values())
        body = {
            "status": ("ok" if whole else "degraded") if up else "unavailable",
            "nats": "connected" if up else "disconnected",
            "queue_depth": gw.load.depth,
            "stores": stores,
        }
        return JSONResponse(body, status_code=200 if up else 503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.websocket("/ws")
    async def voice(websocket: WebSocket) -> None:
        gw = gateway_of(websocket)
        refused = http_guard.origin_refusal(websocket, gw.settings, gw.metrics)  # 403
        if refused is None:
            refused = refusal(websocket, gw, new_session=True)
        client = auth.client_of(websocket, gw.settings.api_key_set)
        if refused is None and not gw.quota.open_session(client):
            limit = gw.settings.max_sessions_per_client
            message = f"this client already has {limit} open sessions"
            refused = _refuse(gw, 429, "too_many_sessions", message, _retry(gw))
        if refused is not None:
            try:
                await websocket.send_denial_response(refused)
            except RuntimeError:  # the server lacks the denial-response extension
                await websocket.close(code=4000 + refused.status_code)
            return
        try:
            await websocket.accept()
            principal = auth.principal(websocket, gw.settings.api_key_users)
            await Session(gw, websocket, client, principal).run()
        finally:
            gw.quota.close_session(client)

    @app.post("/api/text")
    async def text(request: Request) -> Response:
        gw = gateway_of(request)
        refused = http_guard.origin_refusal(request, gw.settings, gw.metrics)  # 403
        refused = refused or http_guard.content_type_refusal(request, gw.metrics)  # 415
        if refused is None:
            refused = refusal(request, gw)
        if refused is not None:
            return refused
        return await text_api.post_text(request, gw)

    conversation_routes(app)
    return app


def conversation_routes(app: FastAPI) -> None:
    """The user's conversations and memory (``gateway.conversations``)."""

    def allowed(request: Request) -> JSONResponse | None:
        gw = gateway_of(request)
        if not auth.authorized(request, gw.settings.api_key_set):
            return _refuse(gw, 401, "unauthorized", "a valid API key is required", _bearer())
        return http_guard.origin_refusal(request, gw.settings, gw.metrics)

    @app.get("/api/conversations", summary="The caller's conversations, newest first")
    async def conversations_page(
        request: Request,
        limit: int = Query(conversations.PAGE, ge=1, le=conversations.MAX_PAGE),
        before: float | None = Query(None, description="the previous page's `next`"),
    ) -> Response:
        gw = gateway_of(request)
        return allowed(request) or await conversations.list_conversations(
            request, gw, limit, before
        )

    @app.get("/api/conversations/{sid}", summary="One conversation's messages and timings")
    async def conversation(request: Request, sid: str) -> Response:
        gw = gateway_of(request)
        return allowed(request) or await conversations.get_conversation(request, gw, sid)

    @app.post("/api/conversations/{sid}/resume", summary="A fresh resume token to continue it")
    async def resume(request: Request, sid: str) -> Response:
        gw = gateway_of(request)
        return allowed(request) or await conversations.resume_conversation(request, gw, sid)

    @app.delete("/api/conversations/{sid}", summary="Delete a conversation", status_code=204)
    async def delete(request: Request, sid: str) -> Response:
        gw = gateway_of(request)
        return allowed(request) or await conversations.delete_conversation(request, gw, sid)

    @app.delete("/api/users/{user}/memory", summary="Forget the user: history, cache, memories")
    async def forget(request: Request, user: str) -> Response:
        gw = gateway_of(request)
        return allowed(request) or await conversations.forget_user(request, gw, user)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        where = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', '')}"
            for e in exc.errors()
        )
        return error_response(422, "bad_request", where or "malformed request")


def _bearer() -> dict[str, str]:
    return {"WWW-Authenticate": "Bearer"}


def refusal(conn: HTTPConnection, gw: Gateway, *, new_session: bool = False) -> JSONResponse | None:
    """Why a new session or request is refused (401, 503), or None to serve it."""
    s = gw.settings
    if not auth.authorized(conn, s.api_key_set):
        return _refuse(gw, 401, "unauthorized", "a valid API key is required", _bearer())
    if not gw.nc.is_connected:
        return _refuse(gw, 503, "unavailable", "the message bus is unavailable", _retry(gw))
    if gw.load.overloaded:
        message = f"work queue depth {gw.load.depth} exceeds {s.max_queue_depth}"
        return _refuse(gw, 503, "overloaded", message, _retry(gw))
    if new_session and gw.load.vad_full:
        message = "no voice activity worker has room for another session"
        return _refuse(gw, 503, "overloaded", message, _retry(gw))
    return None


def _retry(gw: Gateway) -> dict[str, str]:
    return {"Retry-After": str(gw.settings.retry_after_s)}


def _refuse(
    gw: Gateway, status: int, code: str, message: str, headers: dict[str, str]
) -> JSONResponse:
    return error_response(status, code, message, headers=headers, metrics=gw.metrics)
