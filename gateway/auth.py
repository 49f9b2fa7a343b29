"""API keys: ``Authorization: Bearer <key>`` or ``?api_key=<key>`` (browsers cannot
set WebSocket headers). No keys configured means no auth."""

from __future__ import annotations

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
