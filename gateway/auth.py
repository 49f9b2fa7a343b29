"""API keys: ``Authorization: Bearer <key>`` or ``?api_key=<key>`` (browsers cannot
set WebSocket headers). No keys configured means no auth."""

from __future__ import annotations

import hashlib
import hmac

from starlette.requests import HTTPConnection


def presented_key(conn: HTTPConnection) -> str | None:
    header = conn.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return conn.query_params.get("api_key")


def authorized(conn: HTTPConnection, keys: frozenset[str]) -> bool:
    if not keys:
        return True
    key = presented_key(conn)
    if key is None:
        return False
    # Compare against every key in constant time, so timing reveals nothing.
    matches = [hmac.compare_digest(key.encode(), k.encode()) for k in keys]
    return any(matches)


def principal(conn: HTTPConnection, keys: frozenset[str]) -> str:
    """Whom a request acts for: a hash of its API key, or "" when the gateway has no keys."""
    key = presented_key(conn) if keys else None
    if key is None:
        return ""
    return hashlib.sha256(b"morgan-api-key:" + key.encode()).hexdigest()


def client_of(conn: HTTPConnection, keys: frozenset[str]) -> str:
    """Who shares a quota: the API key's holder, or the peer address without keys."""
    return principal(conn, keys) or "addr:" + (conn.client.host if conn.client else "local")
