"""The history's schema, created and upgraded by versioned SQL files (docs/data.md).

``store/migrations/NNNN_name.sql`` are applied in version order, each in its own
transaction, under a PostgreSQL advisory lock (so two processes starting together apply
them once), and recorded in ``morgan_schema_migrations``. A migration is never edited
once shipped: a change to the schema is a new file.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

log = logging.getLogger("morgan.store.migrate")

Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"
"""A connection of its own or one of a pool's."""

FOLDER = Path(__file__).parent / "migrations"
TABLE = "morgan_schema_migrations"
LOCK_KEY = 0x4D6F7267616E
"""The advisory lock all Morgan processes take to migrate ("Morgan" in ASCII)."""
TIMEOUT_S = 600.0
"""Per statement: waiting for another process's migrations, or a long backfill."""
_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def migrations(folder: Path = FOLDER) -> list[Migration]:
    """The migrations in ``folder``, in version order (ValueError: a misnamed file or a
    version used twice)."""
    found: dict[int, Migration] = {}
    for path in sorted(folder.glob("*.sql")):
        match = _FILE.match(path.name)
        if match is None:
            raise ValueError(f"{path.name}: a migration is named NNNN_name.sql")
        version = int(match.group(1))
        if version in found:
            raise ValueError(f"{path.name}: version {version} is used twice")
        found[version] = Migration(version, match.group(2), path.read_text())
    return [found[v] for v in sorted(found)]


async def applied(conn: Connection) -> list[int]:
    """The versions recorded as applied, in order (empty if the table does not exist)."""
    exists = await conn.fetchval("SELECT to_regclass($1) IS NOT NULL", TABLE)
    if not exists:
        return []
    return [r["version"] for r in await conn.fetch(f"SELECT version FROM {TABLE} ORDER BY 1")]


async def migrate(conn: Connection, folder: Path = FOLDER) -> list[int]:
    """Apply the migrations in ``folder`` that the database lacks; the versions applied now
    (empty when it was up to date)."""
    await conn.execute("SELECT pg_advisory_lock($1)", LOCK_KEY, timeout=TIMEOUT_S)
    try:
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {TABLE} ("
            " version integer PRIMARY KEY,"
            " name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = set(await applied(conn))
        now: list[int] = []
        for migration in migrations(folder):
            if migration.version in done:
                continue
            async with conn.transaction():
                await conn.execute(migration.sql, timeout=TIMEOUT_S)
                await conn.execute(
                    f"INSERT INTO {TABLE} (version, name) VALUES ($1, $2)",
                    migration.version,
                    migration.name,
                )
            log.info("history schema: applied %04d_%s", migration.version, migration.name)
            now.append(migration.version)
        return now
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_KEY)
