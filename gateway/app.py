"""The gateway's FastAPI app: ``create_app(settings)``.

    GET  /          the browser page          (open)
    GET  /health    NATS state + queue depth  (open)
    GET  /metrics   Prometheus text           (open)
    GET  /ws        WebSocket voice session   (API key or ticket; 503 when overloaded, 429
                                               past the client's share of sessions)
    POST /api/text  typed turn -> text + WAV  (API key; 503 when overloaded, 429 past the
                                               client's share of turns)
    POST /api/session  a single-use ticket for /ws  (API key in a header)
    /api/conversations..., /api/users/{id}/memory  the user's history and memory (API key;
                                               gateway/conversations.py)

Every route but the page, /health and /metrics takes an API key (gateway/auth.py) and
one request of the key's rate (gateway/quota.py): 400 ``key_in_url``, 401
``unauthorized`` or ``key_revoked``, 429 ``rate_limited``.

The lifespan connects to NATS, applies the stream definitions, starts the live
config (area ``gateway``: Consul KV, else NATS KV; docs/consul.md lists what
applies live), the API key watch (gateway/key_ring.py) and the queue-depth poller.
docs/protocol.md describes what clients send and receive.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import platform
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import FastAPI, Query
from fastapi import Path as PathParam
from nats.errors import Error as NatsError
from starlette.requests import HTTPConnection, Request
from starlette.responses import FileResponse, JSONResponse, Response
from starlette.staticfiles import StaticFiles
from starlette.websockets import WebSocket

from gateway import auth, conversations, errors, http_guard, presence, protocol, text_api
from gateway.errors import error_response
from gateway.key_ring import REVOKED_CLOSE, Caller, KeyRefused, KeyRing, KeyWatch
from gateway.keys import KvKeys
from gateway.metrics import CONTENT_TYPE, Metrics
from gateway.overload import Load
from gateway.quota import Quota, RateLimited
from gateway.session import Session
from gateway.session_book import TICKET_TTL_S, BadTicket, SessionBook
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
"""The page asks for the microphone and may carry an API key in its URL's fragment: no
other site may frame it (a click-jacked permission prompt), and its URL is sent to no one."""


def create_app(settings: Settings) -> FastAPI:
    metrics = Metrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        nc = await bus.connect(settings, f"morgan-gateway-{platform.node()}")
        js = nc.jetstream()
        await definitions.apply(js, settings, update=bus.may_configure(settings))
        config = ConfigSource(settings, "gateway", nc=nc)
        live = await config.start()  # the store's settings, else a fresh cache's, else these
        load = Load(live, metrics)
        await load.poll_once(js)
        book = await SessionBook.open(js, settings)
        stores = await Stores.open(live)
        keys = KeyRing(live)
        gw = Gateway(live, nc, js, metrics, load, book, Quota(live), stores, keys)
        config.subscribe(gw.reconfigure)
        app.state.gateway = gw
        await gw.watch_turn_ends()
        key_file = Path(live.api_keys_file) if live.api_keys_file else None
        bucket = await KvKeys.open(js, settings)
        key_watch = KeyWatch(keys, bucket.kv, key_file, changed=gw.close_revoked)
        await key_watch.start()  # no request is judged before the keys are read
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
            await key_watch.stop()
            await config.stop()
            await stores.close()
            try:
                await asyncio.wait_for(nc.drain(), 5)
            except (NatsError, TimeoutError) as exc:  # closed already, or slow to flush
                log.warning("gateway: NATS drain: %r", exc)

    app = FastAPI(
        title="Morgan gateway",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        responses=errors.RESPONSES,
    )
    errors.install(app)
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
        admitted = http_guard.origin_refusal(websocket, gw.settings, gw.metrics) or await admit(
            websocket, gw, new_session=True
        )  # 403, then the caller or why not
        if isinstance(admitted, Caller) and not gw.quota.open_session(admitted.client):
            limit = gw.settings.max_sessions_per_client
            message = f"this client already has {limit} open sessions"
            admitted = _refuse(gw, 429, "too_many_sessions", message, _retry(gw))
        if not isinstance(admitted, Caller):
            try:
                await websocket.send_denial_response(admitted)
            except RuntimeError:  # the server lacks the denial-response extension
                await websocket.close(code=4000 + admitted.status_code)
            return
        caller = admitted
        try:
            await websocket.accept(subprotocol=auth.subprotocol(websocket))
            session = Session(gw, websocket, caller.client, caller.user)
            # Revoking the key closes the session through its own close path.
            with gw.open_sessions.hold(caller.key, session.close):
                if caller.key is None or gw.keys.valid(caller.key):
                    await session.run()
                else:  # revoked while the socket opened
                    await session.close(REVOKED_CLOSE, "key_revoked")
        finally:
            gw.quota.close_session(caller.client)

    @app.post("/api/text", openapi_extra={"requestBody": protocol.TEXT_REQUEST_BODY})
    async def text(request: Request) -> Response:
        gw = gateway_of(request)
        refused = http_guard.origin_refusal(request, gw.settings, gw.metrics)  # 403
        refused = refused or http_guard.content_type_refusal(request, gw.metrics)  # 415
        if refused is not None:
            return refused
        admitted = await admit(request, gw)
        if not isinstance(admitted, Caller):
            return admitted
        return await text_api.post_text(request, gw, admitted)

    @app.post("/api/session", summary="A single-use ticket that opens /ws (GET /ws?ticket=...)")
    async def ticket(request: Request) -> Response:
        """For browsers, which cannot set headers on a WebSocket: the key goes in this
        request's ``Authorization`` header, the ticket in the WebSocket's URL."""
        gw = gateway_of(request)
        refused = http_guard.origin_refusal(request, gw.settings, gw.metrics)  # 403
        admitted = refused or identified(request, gw)
        if not isinstance(admitted, Caller):
            return admitted
        try:
            issued = await gw.book.new_ticket(admitted.key)
        except (NatsError, TimeoutError) as exc:
            message = f"the message bus is unavailable: {exc!r}"
            return _refuse(gw, 503, "unavailable", message, _retry(gw))
        body = {"ticket": issued, "expires_in": TICKET_TTL_S, "user": admitted.user}
        return JSONResponse(body, headers={"Cache-Control": "no-store"})

    conversation_routes(app)
    return app


SID = PathParam(pattern=protocol.SESSION_ID_PATTERN, description="the conversation's session id")


def conversation_routes(app: FastAPI) -> None:
    """The user's conversations and memory (``gateway.conversations``)."""

    def allowed(request: Request) -> JSONResponse | None:
        gw = gateway_of(request)
        refused = http_guard.origin_refusal(request, gw.settings, gw.metrics)
        admitted = refused or identified(request, gw)
        return None if isinstance(admitted, Caller) else admitted

    @app.get("/api/conversations", summary="The caller's conversations, newest first")
    async def conversations_page(
        request: Request,
        limit: int = Query(conversations.PAGE, ge=1, le=conversations.MAX_PAGE),
        before: float | None = Query(
            None, ge=0, lt=1e11, allow_inf_nan=False, description="the previous page's `next`"
        ),
    ) -> Response:
        gw = gateway_of(request)
        return allowed(request) or await conversations.list_conversations(
            request, gw, limit, before
        )

    @app.get("/api/conversations/{sid}", summary="One conversation's messages and timings")
    async def conversation(request: Request, sid: str = SID) -> Response:
        gw = gateway_of(request)
        return allowed(request) or await conversations.get_conversation(request, gw, sid)

    @app.post("/api/conversations/{sid}/resume", summary="A fresh resume token to continue it")
    async def resume(request: Request, sid: str = SID) -> Response:
        gw = gateway_of(request)
        return allowed(request) or await conversations.resume_conversation(request, gw, sid)

    @app.delete("/api/conversations/{sid}", summary="Delete a conversation", status_code=204)
    async def delete(request: Request, sid: str = SID) -> Response:
        gw = gateway_of(request)
        return allowed(request) or await conversations.delete_conversation(request, gw, sid)

    @app.delete("/api/users/{user}/memory", summary="Forget the user: history, cache, memories")
    async def forget(request: Request, user: str) -> Response:
        gw = gateway_of(request)
        return allowed(request) or await conversations.forget_user(request, gw, user)


def identified(conn: HTTPConnection, gw: Gateway) -> Caller | JSONResponse:
    """Who calls (kept as ``conn.state.caller``, taking one request of the key's rate), or
    the answer: 400 ``key_in_url``, 401 ``unauthorized`` / ``key_revoked``, 429."""
    try:
        caller = auth.identify(conn, gw.keys)
        gw.quota.take(caller.client)
    except auth.Refused as exc:
        return _refuse(gw, exc.status, exc.code, exc.message, exc.headers)
    except RateLimited as exc:
        return _refuse(gw, 429, exc.code, exc.message, {"Retry-After": str(exc.retry_after_s)})
    conn.state.caller = caller
    return caller


async def ticket_holder(conn: HTTPConnection, gw: Gateway, ticket: str) -> Caller | JSONResponse:
    """Who the ticket stands for (spending it; a rate's request), or the refusal (401
    ``bad_ticket``, ``unauthorized``, ``key_revoked``; 429; 503)."""
    try:
        auth.no_key_in_url(conn)
        digest = await gw.book.use_ticket(ticket)
        caller = gw.keys.caller_by_hash(digest, auth.address(conn))
        gw.quota.take(caller.client)
    except auth.Refused as exc:
        return _refuse(gw, exc.status, exc.code, exc.message, exc.headers)
    except BadTicket as exc:
        return _refuse(gw, 401, "bad_ticket", str(exc), {"WWW-Authenticate": "Bearer"})
    except KeyRefused as exc:
        refused = auth.unauthorized(exc)
        return _refuse(gw, refused.status, refused.code, refused.message, refused.headers)
    except RateLimited as exc:
        return _refuse(gw, 429, exc.code, exc.message, {"Retry-After": str(exc.retry_after_s)})
    except (NatsError, TimeoutError) as exc:
        message = f"the message bus is unavailable: {exc!r}"
        return _refuse(gw, 503, "unavailable", message, _retry(gw))
    conn.state.caller = caller
    return caller


async def admit(
    conn: HTTPConnection, gw: Gateway, *, new_session: bool = False
) -> Caller | JSONResponse:
    """Who calls, or why the new session or request is refused (400, 401, 429, 503).
    A WebSocket may come with a ticket (``?ticket=``) instead of a key."""
    ticket = conn.query_params.get("ticket") if conn.scope["type"] == "websocket" else None
    if ticket is not None:
        admitted = await ticket_holder(conn, gw, ticket)
    else:
        admitted = identified(conn, gw)
    if not isinstance(admitted, Caller):
        return admitted
    s = gw.settings
    if not gw.nc.is_connected:
        return _refuse(gw, 503, "unavailable", "the message bus is unavailable", _retry(gw))
    if gw.load.overloaded:
        message = f"work queue depth {gw.load.depth} exceeds {s.max_queue_depth}"
        return _refuse(gw, 503, "overloaded", message, _retry(gw))
    if new_session and gw.load.vad_full:
        message = "no voice activity worker has room for another session"
        return _refuse(gw, 503, "overloaded", message, _retry(gw))
    return admitted


def _retry(gw: Gateway) -> dict[str, str]:
    return {"Retry-After": str(gw.settings.retry_after_s)}


def _refuse(
    gw: Gateway, status: int, code: str, message: str, headers: dict[str, str]
) -> JSONResponse:
    return error_response(status, code, message, headers=headers, metrics=gw.metrics)
