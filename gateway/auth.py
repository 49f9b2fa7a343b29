"""API keys: ``Authorization: Bearer <key>`` or ``?api_key=<key>`` (browsers cannot
set WebSocket headers). No keys configured means no auth.

A key acts for a user (``MORGAN_API_KEYS`` entries ``user:key``; a key without a user
is its own, ``k-`` + 16 hex digits of its hash). Sessions, conversations and memories
belong to that user. Without keys every client is the user ``local``."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Collection, Mapping

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


LOCAL_USER = "local"
"""The one user of a gateway without API keys."""


def _key_hash(key: str) -> str:
    return hashlib.sha256(b"morgan-api-key:" + key.encode()).hexdigest()


def key_user(key: str, users: Mapping[str, str]) -> str:
    """The user a configured key acts for."""
    return users.get(key) or "k-" + _key_hash(key)[:16]


def principal(conn: HTTPConnection, users: Mapping[str, str]) -> str:
    """The user a request acts for (``users``: key -> user, ``Settings.api_key_users``)."""
    key = presented_key(conn) if users else None
    return LOCAL_USER if key is None else key_user(key, users)


def client_of(conn: HTTPConnection, keys: Collection[str]) -> str:
    """Who shares a quota: the API key's holder, or the peer address without keys."""
    key = presented_key(conn) if keys else None
    if key is not None:
        return "key:" + _key_hash(key)
    return "addr:" + (conn.client.host if conn.client else "local")
