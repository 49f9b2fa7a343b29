"""Who calls: an API key, never taken from a URL.

    Authorization: Bearer <key>                           every route
    Sec-WebSocket-Protocol: morgan.v1, morgan.key.<key>   /ws (a browser cannot set
                                                          headers on a WebSocket); the
                                                          answer names morgan.v1 only
    /ws?ticket=<ticket>                                   a single-use ticket from
                                                          POST /api/session (gateway/app.py)

``?api_key=`` is refused (400 ``key_in_url``, saying how to send the key): a URL
ends up in browser history and in proxies' access logs. Which keys are valid, and
whose they are, is ``KeyRing``'s answer (gateway/key_ring.py). Without keys
configured every client is the user ``local`` and shares by its address.
"""

from __future__ import annotations

from starlette.requests import HTTPConnection

from gateway.key_ring import LOCAL_USER, Caller, KeyRefused, KeyRing

__all__ = ["LOCAL_USER", "Caller", "Refused", "caller_of", "identify", "subprotocol"]

SUBPROTOCOL = "morgan.v1"
"""The WebSocket subprotocol the gateway answers with when a client offers it."""
KEY_PROTOCOL = "morgan.key."
"""Prefix of the offered subprotocol that carries a key (``morgan.key.<key>``)."""
URL_KEY = "api_key"
HOW = (
    "send it as 'Authorization: Bearer <key>'; a browser WebSocket may offer the "
    f"subprotocols '{SUBPROTOCOL}, {KEY_PROTOCOL}<key>' or use a ticket from POST /api/session"
)


class Refused(Exception):
    """Why a caller is turned away: an HTTP status, an error code, a reason, headers."""

    def __init__(
        self, status: int, code: str, message: str, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = headers or {}


def presented_key(conn: HTTPConnection) -> str | None:
    """The key in the ``Authorization`` header, else (a WebSocket) in its subprotocols."""
    scheme, _, token = conn.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    for offered in conn.scope.get("subprotocols", ()):
        if offered.startswith(KEY_PROTOCOL) and len(offered) > len(KEY_PROTOCOL):
            return str(offered[len(KEY_PROTOCOL) :])
    return None


def subprotocol(conn: HTTPConnection) -> str | None:
    """What to answer a WebSocket's offer with: ``morgan.v1`` when offered, never a key."""
    return SUBPROTOCOL if SUBPROTOCOL in conn.scope.get("subprotocols", ()) else None


def no_key_in_url(conn: HTTPConnection) -> None:
    if URL_KEY in conn.query_params:
        raise Refused(400, "key_in_url", f"API keys are not taken from URLs: {HOW}")


def address(conn: HTTPConnection) -> str:
    return conn.client.host if conn.client else "local"


def unauthorized(refused: KeyRefused) -> Refused:
    return Refused(401, refused.code, f"{refused.message}: {HOW}", {"WWW-Authenticate": "Bearer"})


def identify(conn: HTTPConnection, ring: KeyRing) -> Caller:
    """Who presents the request's key, or ``Refused`` (400 ``key_in_url``, 401
    ``unauthorized`` or ``key_revoked``)."""
    no_key_in_url(conn)
    try:
        return ring.caller(presented_key(conn), address(conn))
    except KeyRefused as exc:
        raise unauthorized(exc) from None


def caller_of(conn: HTTPConnection) -> Caller:
    """The caller the app admitted this request as (``conn.state.caller``)."""
    caller = getattr(conn.state, "caller", None)
    assert isinstance(caller, Caller), "the request was not admitted"
    return caller
