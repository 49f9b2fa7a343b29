"""Every NATS role is locked to its own subjects, by a real nats-server running the
authorization block generated from the kind declarations (processors.permissions)."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import pytest
import pytest_asyncio
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.js.errors import Error as JsError

from processors import permissions, registry
from schemas import Transcript
from streams import bus, definitions, embedded, nats_auth
from streams.settings import Settings


@dataclass
class Locked:
    srv: embedded.EmbeddedNats
    seeds: dict[str, Path]
    base: Settings
    clients: list[Client] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def settings(self, role: str) -> Settings:
        return self.base.model_copy(update={"nats_seed_file": str(self.seeds[role])})

    async def connect(self, role: str) -> Client:
        async def on_error(exc: Exception) -> None:
            self.errors.append(f"{role}: {exc}")

        settings = self.settings(role)
        nc = await nats.connect(
            servers=[self.srv.url],
            nkeys_seed=str(self.seeds[role]),
            inbox_prefix=bus.inbox_prefix(settings),
            error_cb=on_error,
            allow_reconnect=False,
        )
        self.clients.append(nc)
        return nc

    async def violation(self, role: str, subject_part: str, timeout: float = 5.0) -> str:
        """The server's permissions violation for ``role`` naming ``subject_part``."""
        deadline = asyncio.get_running_loop().time() + timeout
        while asyncio.get_running_loop().time() < deadline:
            for error in self.errors:
                if error.startswith(f"{role}:") and subject_part.lower() in error.lower():
                    assert "permissions violation" in error.lower(), error
                    return error
            await asyncio.sleep(0.05)
        raise AssertionError(f"no violation for {role} on {subject_part}: {self.errors}")


@pytest_asyncio.fixture
async def locked(tmp_path: Path) -> AsyncIterator[Locked]:
    base = Settings(data_dir=tmp_path / "data")
    specs = [registry.spec(k) for k in registry.BUILT_IN]
    roles = permissions.roles(base, specs)
    seeds = nats_auth.ensure_seeds(tmp_path / "auth", [r.name for r in roles])
    keys = {role: nats_auth.public_key(path) for role, path in seeds.items()}
    block = nats_auth.authorization_block(roles, keys)
    async with await embedded.start(store_dir=tmp_path / "nats", authorization=block) as srv:
        rig = Locked(srv, seeds, base.model_copy(update={"nats_url": srv.url}))
        admin = await rig.connect(nats_auth.ADMIN)
        await definitions.apply(admin.jetstream(), rig.settings(nats_auth.ADMIN))
        try:
            yield rig
        finally:
            for nc in rig.clients:
                if not nc.is_closed:
                    await nc.close()


async def refused(url: str, **options: Any) -> None:
    nc = Client()
    try:
        with pytest.raises(NatsError, match="(?i)authorization"):
            await nc.connect(servers=[url], allow_reconnect=False, connect_timeout=2, **options)
    finally:
        await nc.close()


async def test_a_connection_without_credentials_is_refused(locked: Locked) -> None:
    await refused(locked.srv.url)


async def test_a_seed_the_server_does_not_know_is_refused(locked: Locked, tmp_path: Path) -> None:
    stranger = nats_auth.ensure_seeds(tmp_path / "stranger", ["gateway"])["gateway"]
    await refused(locked.srv.url, nkeys_seed=str(stranger))


async def test_a_kind_cannot_publish_another_kinds_event(locked: Locked) -> None:
    """TTS sends reply audio, never a transcript: the server refuses and nobody sees it."""
    seen = Seen()
    admin = locked.clients[0]
    await admin.subscribe("morgan.events.>", cb=seen.add)
    tts = await locked.connect("tts")
    await bus.publish_core(tts, "morgan.events.s1.transcript", Transcript("s1", "t1", "forged"))
    await locked.violation("tts", "morgan.events.s1.transcript")
    await admin.flush()
    assert seen == []


async def test_a_kind_cannot_read_another_kinds_work(locked: Locked) -> None:
    """STT fetching from the LLM's consumer: refused by the server."""
    admin_js = locked.clients[0].jetstream()
    llm = registry.spec("llm")
    for _, consumer in llm.consumers(locked.settings("admin")):
        await definitions.ensure_consumer(admin_js, consumer.stream, consumer.config(locked.base))
    stt = await locked.connect("stt")
    sub = await stt.jetstream().pull_subscribe_bind("llm", stream=definitions.WORK)
    with pytest.raises((NatsError, JsError, TimeoutError)):
        await sub.fetch(1, timeout=1)
    await locked.violation("stt", "CONSUMER.MSG.NEXT.WORK.llm")


async def test_a_processor_cannot_delete_or_change_a_stream(locked: Locked) -> None:
    llm = await locked.connect("llm")
    js = llm.jetstream(timeout=1)
    with pytest.raises((NatsError, JsError, TimeoutError)):
        await js.delete_stream(definitions.EVENTS)
    await locked.violation("llm", "STREAM.DELETE.EVENTS")
    info = await locked.clients[0].jetstream().stream_info(definitions.EVENTS)
    assert info.config.name == definitions.EVENTS


async def test_the_gateway_cannot_write_the_session_owner_records(locked: Locked) -> None:
    """Only claim kinds (the VAD) keep owner records: a gateway forging one is refused."""
    gw = await locked.connect("gateway")
    await gw.publish("$KV.MORGAN_OWNERS.vad.s1", b"forged")
    await locked.violation("gateway", "$KV.MORGAN_OWNERS")


async def test_the_operator_reads_events_but_cannot_publish(locked: Locked) -> None:
    op = await locked.connect(nats_auth.OPERATOR)
    seen = Seen()
    await op.subscribe("morgan.events.>", cb=seen.add)
    await op.flush()
    stt = await locked.connect("stt")
    await bus.publish_core(stt, "morgan.events.s1.transcript", Transcript("s1", "t1", "hello"))
    for _ in range(100):
        if seen:
            break
        await asyncio.sleep(0.02)
    assert seen, "the operator sees a transcript"
    await op.publish("morgan.control.s1", b"{}")
    await locked.violation(nats_auth.OPERATOR, "morgan.control.s1")
    info = await op.jetstream().stream_info(definitions.WORK)
    assert info.config.name == definitions.WORK


async def test_a_role_cannot_read_another_roles_replies(locked: Locked) -> None:
    """Each role's inbox is its own: the LLM subscribing to the gateway's is refused."""
    llm = await locked.connect("llm")
    await llm.subscribe("_INBOX_gateway.>")
    await locked.violation("llm", "_INBOX_gateway")


class Seen(list[bytes]):
    async def add(self, msg: Msg) -> None:
        self.append(msg.data)


async def test_only_the_admin_brings_a_changed_stream_to_this_versions_declaration(
    locked: Locked,
) -> None:
    """A worker leaves an older stream as it is (it may only create what is missing);
    ``morgan declare`` as admin updates it."""
    admin_js = locked.clients[0].jetstream()
    old = (await admin_js.stream_info(definitions.EVENTS)).config
    old.max_age = 600.0
    await admin_js.update_stream(old)
    llm = await locked.connect("llm")
    await definitions.apply(llm.jetstream(), locked.settings("llm"), update=False)
    assert (await admin_js.stream_info(definitions.EVENTS)).config.max_age == 600.0
    env = {
        **os.environ,
        "MORGAN_NATS_URL": locked.srv.url,
        "MORGAN_NATS_SEED_FILE": str(locked.seeds[nats_auth.ADMIN]),
    }
    done = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "morgan", "declare", env=env, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await done.communicate()
    assert done.returncode == 0, out
    declared = (await admin_js.stream_info(definitions.EVENTS)).config.max_age
    assert declared == locked.base.events_max_age_s
