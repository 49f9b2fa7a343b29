"""Connecting to the right host of a multi-host PostgreSQL DSN, each host in its own time.

asyncpg tries the hosts of ``postgresql://h1:5432,h2:5432/db?target_session_attrs=...``
in order under one shared timeout. When a primary's host dies, Linux keeps its ARP
entry for 15-45 s, so a connect to it hangs until the whole timeout is spent and the
promoted replica is never tried: history writes came back about 40 s after the kill
although Patroni had promoted the replica in about 11 s (docs/failover-postgres.md).
Here each host gets ``HOST_S``, and ``target_session_attrs`` is checked by asking the
server (as libpq does), so the first write lands as soon as the replica is
promoted.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

HOST_S = 2.0
"""Opening a connection to one host of a multi-host DSN, seconds."""


async def _accepts(conn: asyncpg.Connection, attrs: str) -> bool:
    """Whether the connection's server is what ``target_session_attrs`` asks for, checked
    as libpq does: read-write/read-only by ``transaction_read_only``, primary/standby by
    ``pg_is_in_recovery()``."""
    if attrs in ("read-write", "read-only"):
        read_only = str(await conn.fetchval("SHOW transaction_read_only")) == "on"
        return read_only == (attrs == "read-only")
    if attrs in ("primary", "standby", "prefer-standby"):
        standby = bool(await conn.fetchval("SELECT pg_is_in_recovery()"))
        return standby == (attrs != "primary")
    return True


def split(dsn: str) -> tuple[list[str], str]:
    """``dsn``'s hosts as single-host DSNs (in order), and its ``target_session_attrs``
    (``any`` when not set), which the single-host DSNs leave out."""
    parts = urlsplit(dsn)
    userinfo, at, hosts = parts.netloc.rpartition("@")
    query = parse_qsl(parts.query, keep_blank_values=True)
    attrs = next((v for k, v in query if k == "target_session_attrs"), "any")
    rest = urlencode([(k, v) for k, v in query if k != "target_session_attrs"])
    one = [
        urlunsplit((parts.scheme, f"{userinfo}{at}{host}", parts.path, rest, parts.fragment))
        for host in hosts.split(",")
    ]
    return one, attrs


async def connect(dsn: str, **kwargs: Any) -> asyncpg.Connection:
    """asyncpg.connect (the signature ``create_pool(connect=...)`` calls) that tries each
    host of ``dsn`` for at most ``HOST_S`` and keeps the first one ``target_session_attrs``
    accepts (``prefer-standby``: a primary when no standby answers). Raises ``OSError``
    when none does."""
    hosts, attrs = split(dsn)
    if len(hosts) == 1:
        only: asyncpg.Connection = await asyncpg.connect(dsn, **kwargs)
        return only
    kwargs["timeout"] = min(float(kwargs.get("timeout") or HOST_S), HOST_S)
    fallback: asyncpg.Connection | None = None
    why: list[str] = []
    for host in hosts:
        try:
            conn: asyncpg.Connection = await asyncpg.connect(host, **kwargs)
        except (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            why.append(f"{urlsplit(host).hostname}: {type(exc).__name__}")
            continue
        if not await _accepts(conn, attrs):
            if attrs == "prefer-standby" and fallback is None:
                fallback = conn
                continue
            why.append(f"{urlsplit(host).hostname}:{urlsplit(host).port}: not {attrs}")
            await conn.close()
            continue
        if fallback is not None:
            await fallback.close()
        return conn
    if fallback is not None:
        return fallback
    raise OSError(f"no host takes {attrs} sessions ({'; '.join(why)})")
