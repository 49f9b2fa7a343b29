"""Cross-site use of the gateway: DNS rebinding (Host), cross-site requests (Origin,
Content-Type).

    HostGuard          ASGI middleware, every route: 421 ``bad_host`` unless the Host is
                       an IP literal, ``localhost``/``*.localhost``, this machine's name or
                       listed in MORGAN_ALLOWED_HOSTS
    origin_refusal     /ws and /api/*: 403 ``bad_origin`` for a browser Origin that is
                       neither the gateway's own nor listed in MORGAN_ALLOWED_ORIGINS
    content_type_refusal  POST /api/text: 415 ``bad_content_type`` unless application/json

DNS rebinding needs a name the attacker controls, so IP literals are always safe. A
request without Host (HTTP/1.0; h11 already refuses HTTP/1.1 without one) is accepted:
browsers always send Host, so only non-browser clients omit it. A request without Origin
is accepted for the same reason. Refusals are JSON ``{"error", "message"}`` like the
rest of the gateway, and counted in ``morgan_gateway_rejections_total{reason=<code>}``.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import error_response
from gateway.metrics import Metrics
from streams.settings import Settings

DEFAULT_PORTS = {"http": 80, "https": 443}


def names(text: str) -> frozenset[str]:
    """``"a.example, B.example."`` -> {"a.example", "b.example"}: lower case, no final dot."""
    return frozenset(n.strip().lower().rstrip(".") for n in text.split(",") if n.strip())


def split_host(host: str) -> tuple[str, int | None]:
    """A Host header -> (name or address in lower case without brackets, port or None).

    ValueError when it is malformed (a bad port, an unclosed ``[``)."""
    host = host.strip().lower()
    port_text: str | None = None
    if host.startswith("["):
        name, bracket, rest = host[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"malformed host {host!r}")
        port_text = rest[1:] if rest else None
    elif host.count(":") == 1:
        name, _, port_text = host.partition(":")
    elif ":" in host:
        raise ValueError(f"malformed host {host!r} (an IPv6 address needs [brackets])")
    else:
        name = host
    if port_text is not None and not (port_text.isdigit() and int(port_text) <= 65535):
        raise ValueError(f"malformed port in host {host!r}")
    return name.rstrip("."), int(port_text) if port_text is not None else None


def is_ip_literal(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


@dataclass(frozen=True)
class HostRule:
    """Which Host names the gateway answers to (IP literals always)."""

    allowed: frozenset[str]
    """MORGAN_ALLOWED_HOSTS, as given to ``names``; may hold ``*`` and ``*.suffix``."""
    machine: frozenset[str]
    """This machine's host name and fully qualified name."""

    @classmethod
    def from_settings(cls, settings: Settings) -> HostRule:
        """Reads the machine's names once (``getfqdn`` may ask DNS): call at start-up."""
        return cls(
            names(settings.allowed_hosts), names(f"{socket.gethostname()},{socket.getfqdn()}")
        )

    def refusal_reason(self, host: str | None) -> str | None:
        """Why a request with this Host header is refused, or None to serve it."""
        if host is None or "*" in self.allowed:
            return None
        try:
            name, _ = split_host(host)
        except ValueError as exc:
            return str(exc)
        if is_ip_literal(name) or name == "localhost" or name.endswith(".localhost"):
            return None
        if name in self.allowed or name in self.machine:
            return None
        if any(a.startswith("*.") and name.endswith(a[1:]) for a in self.allowed):
            return None
        return f"host {name!r} is not served here (MORGAN_ALLOWED_HOSTS)"


class HostGuard:
    """ASGI middleware: HTTP requests and WebSocket handshakes with a Host outside
    ``rule`` get 421 ``bad_host``; lifespan and everything else pass through."""

    def __init__(self, app: ASGIApp, rule: HostRule, metrics: Metrics | None = None) -> None:
        self.app = app
        self.rule = rule
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        reason = self.rule.refusal_reason(Headers(scope=scope).get("host"))
        if reason is None:
            await self.app(scope, receive, send)
            return
        response = error_response(421, "bad_host", reason, metrics=self.metrics)
        if scope["type"] == "http" or "websocket.http.response" in scope.get("extensions", {}):
            await response(scope, receive, send)
        else:  # a server without the denial-response extension answers 403
            await send({"type": "websocket.close", "code": 1008, "reason": "bad_host"})


def origin_key(origin: str) -> tuple[str, str, int] | None:
    """``https://App.example`` -> ("https", "app.example", 443); None unless an http(s)
    origin (``null``, ``ws://``, junk)."""
    try:
        parts = urlsplit(origin.strip().lower())
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname or parts.path not in ("", "/"):
        return None
    name = parts.hostname.rstrip(".")
    return parts.scheme, name, port if port is not None else DEFAULT_PORTS[parts.scheme]


def same_origin(origin: tuple[str, str, int], host: str | None) -> bool:
    """Whether ``origin`` names the server the Host header names. The scheme the browser
    used is unknown here (TLS may end at a proxy), so a Host without a port matches the
    origin's default port for either scheme."""
    if host is None:
        return False
    try:
        name, port = split_host(host)
    except ValueError:
        return False
    scheme, origin_name, origin_port = origin
    if port is None:
        return origin_name == name and origin_port == DEFAULT_PORTS[scheme]
    return origin_name == name and origin_port == port


def origin_refusal(
    conn: HTTPConnection, settings: Settings, metrics: Metrics | None = None
) -> JSONResponse | None:
    """403 ``bad_origin`` for a cross-site browser request, or None to serve it."""
    origin = conn.headers.get("origin")
    if origin is None:
        return None
    allowed = {o.strip().lower().rstrip("/") for o in settings.allowed_origins.split(",")}
    if "*" in allowed:
        return None
    key = origin_key(origin)
    if key is not None:
        if same_origin(key, conn.headers.get("host")):
            return None
        if key in {origin_key(a) for a in allowed if a}:
            return None
    message = f"origin {origin!r} may not use this gateway (MORGAN_ALLOWED_ORIGINS)"
    return error_response(403, "bad_origin", message, metrics=metrics)


def content_type_refusal(
    conn: HTTPConnection, metrics: Metrics | None = None
) -> JSONResponse | None:
    """415 ``bad_content_type`` unless the body is declared ``application/json``
    (parameters such as ``charset`` allowed). Browsers send text/plain and form types
    cross-site without asking first; application/json needs a CORS preflight."""
    declared = conn.headers.get("content-type", "")
    media = declared.partition(";")[0].strip().lower()
    if media == "application/json":
        return None
    message = f"the body must be application/json, not {declared or 'untyped'}"
    return error_response(415, "bad_content_type", message, metrics=metrics)
