"""API keys as users, on a real gateway over a real nats-server: hashed keys from a file
and from NATS KV, applied live; revocation refuses at once and closes the key's sessions;
resume follows the user; a rate per key; keys never in URLs (a subprotocol or a ticket)."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import stat
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from nats.js import JetStreamContext
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Subprotocol

from gateway.keys import key_hash
from gateway.server import RunningGateway
from gateway.state import Gateway
from morgan import cli
from schemas import Transcript
from streams.config_source import ensure_bucket
from streams.settings import Settings
from tests.integration.bus_helpers import until
from tests.integration.gateway_helpers import TIMEOUT, Client, emit, open_client, serving

ROOT = Path(__file__).resolve().parents[2]


def state_of(srv: RunningGateway) -> Gateway:
    app = srv.server.config.app
    assert isinstance(app, FastAPI)
    gw = app.state.gateway
    assert isinstance(gw, Gateway)
    return gw


def key_id(key: str) -> str:
    """What ``morgan keys list`` shows of it."""
    return key_hash(key)[:12]


def offer(key: str) -> list[Subprotocol]:
    """WebSocket subprotocols that carry ``key`` (what the browser page could offer)."""
    return [Subprotocol("morgan.v1"), Subprotocol(f"morgan.key.{key}")]


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def keys(*args: str) -> str:
    """``morgan keys ARGS`` in this process (file commands run no event loop); its stdout."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main(["keys", *args])
    assert status == 0, err.getvalue()
    return out.getvalue().strip()


async def keys_on_nats(settings: Settings, *args: str) -> str:
    """``morgan keys ARGS --nats`` as a program, against the test's nats-server; its stdout."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "morgan",
        "keys",
        *args,
        "--nats",
        cwd=ROOT,
        env={**os.environ, "MORGAN_NATS_URL": settings.nats_url},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    return out.decode().strip()


async def post_session(srv: RunningGateway, headers: dict[str, str]) -> httpx.Response:
    async with httpx.AsyncClient(base_url=srv.url) as http:
        return await http.post("/api/session", headers=headers)


async def admitted(srv: RunningGateway, key: str) -> bool:
    return (await post_session(srv, bearer(key))).status_code == 200


async def refused(url: str, **kw: Any) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, JSON body, headers) of a refused WebSocket handshake."""
    with pytest.raises(InvalidStatus) as info:
        await connect(url, **kw)
    response = info.value.response
    return response.status_code, json.loads(response.body or b"{}"), dict(response.headers)


async def closed_with(client: Client) -> tuple[int | None, str | None]:
    await asyncio.wait_for(client.conn.wait_closed(), TIMEOUT)
    return client.conn.close_code, client.conn.close_reason


async def still_open(client: Client, sid: str, js: JetStreamContext) -> None:
    """The session still gets its events."""
    await emit(js, Transcript(sid, "u9", "still open"))
    while (got := await client.recv())["type"] != "transcript" or got["turn"] != "u9":
        pass


async def test_a_key_added_to_the_file_works_without_a_restart_and_only_its_hash_is_stored(
    settings: Settings, js: JetStreamContext, tmp_path: Path
) -> None:
    path = tmp_path / "keys.json"
    async with serving(settings, api_keys_file=str(path)) as srv:
        assert not await admitted(srv, "mk_anything")  # a keys file, none yet: nobody
        key = keys("add", "alice", "--name", "laptop", "--file", str(path))
        assert key.startswith("mk_") and len(key) == 46
        await until(lambda: admitted(srv, key), TIMEOUT)
        assert (await post_session(srv, bearer(key))).json()["user"] == "alice"
    text = path.read_text()
    assert key not in text and key[3:] not in text
    (entry,) = json.loads(text)["keys"]
    assert entry["sha256"] == key_hash(key) and entry["id"] == key_hash(key)[:12]
    assert (entry["user"], entry["name"], entry["revoked"]) == ("alice", "laptop", None)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


async def test_revoking_a_key_refuses_its_requests_and_closes_its_open_sessions_with_4401(
    settings: Settings, js: JetStreamContext, tmp_path: Path
) -> None:
    path = str(tmp_path / "keys.json")
    doomed, kept = keys("add", "alice", "--file", path), keys("add", "bob", "--file", path)
    async with serving(settings, api_keys_file=path) as srv:
        victim = await open_client(srv, additional_headers=bearer(doomed))
        await victim.start()
        other = await open_client(srv, additional_headers=bearer(kept))
        other_sid = (await other.start())["session_id"]
        spare = (await post_session(srv, bearer(doomed))).json()["ticket"]

        keys("revoke", key_hash(doomed)[:6], "--file", path)  # a prefix of its id

        assert await closed_with(victim) == (4401, "key_revoked")
        got = await post_session(srv, bearer(doomed))
        assert (got.status_code, got.json()["error"]) == (401, "key_revoked")
        status, body, _ = await refused(srv.ws_url, additional_headers=bearer(doomed))
        assert (status, body["error"]) == (401, "key_revoked")
        status, body, _ = await refused(f"{srv.ws_url}?ticket={spare}")
        assert (status, body["error"]) == (401, "key_revoked")
        await still_open(other, other_sid, js)  # bob's key and session are untouched
    (row,) = [r for r in keys("list", "--file", path).splitlines() if r.startswith(key_id(doomed))]
    assert row.split()[-1] != "-"  # the revocation time


async def test_keys_in_the_nats_bucket_apply_at_once_from_the_cli_add_and_revoke(
    settings: Settings, js: JetStreamContext
) -> None:
    async with serving(settings) as srv:
        key = await keys_on_nats(settings, "add", "carol", "--name", "phone")
        await until(lambda: admitted(srv, key), TIMEOUT)
        async with httpx.AsyncClient(base_url=srv.url) as http:
            assert (await http.post("/api/session")).status_code == 401  # keys now apply
        client = Client(await connect(srv.ws_url, subprotocols=offer(key)))
        await client.start()
        listed = await keys_on_nats(settings, "list")
        assert key_id(key) in listed and "carol" in listed and key not in listed

        await keys_on_nats(settings, "revoke", key_id(key))

        assert await closed_with(client) == (4401, "key_revoked")
        got = await post_session(srv, bearer(key))
        assert (got.status_code, got.json()["error"]) == (401, "key_revoked")
        (row,) = [r for r in (await keys_on_nats(settings, "list")).splitlines() if "carol" in r]
        assert row.split()[-1] != "-"


async def test_another_key_of_the_same_user_resumes_the_session_and_another_users_key_cannot(
    settings: Settings, js: JetStreamContext
) -> None:
    async with serving(settings, api_keys="alice:a-one,alice:a-two,bob:b-one") as srv:
        first = await open_client(srv, additional_headers=bearer("a-one"))
        ready = await first.start()
        sid, token = ready["session_id"], ready["resume_token"]
        await first.conn.close()

        bob = await open_client(srv, additional_headers=bearer("b-one"))
        await bob.send({"type": "session.start", "session_id": sid, "resume_token": token})
        got = await bob.recv()
        assert (got["type"], got["code"]) == ("error", "unknown_session")
        async with httpx.AsyncClient(base_url=srv.url) as http:
            body = {"text": "hi", "session_id": sid, "resume_token": token}
            rest = await http.post("/api/text", json=body, headers=bearer("b-one"))
        assert (rest.status_code, rest.json()["error"]) == (404, "unknown_session")

        second = await open_client(srv, additional_headers=bearer("a-two"))
        again = await second.start(session_id=sid, resume_token=token)
        assert again["resumed"] is True and again["session_id"] == sid


async def test_a_key_past_its_rate_gets_429_with_retry_after_and_other_keys_do_not(
    settings: Settings, js: JetStreamContext
) -> None:
    async with serving(settings, api_keys="alice:fast,alice:calm", key_rate_per_min=3) as srv:
        for _ in range(3):
            assert await admitted(srv, "fast")
        over = await post_session(srv, bearer("fast"))
        assert (over.status_code, over.json()["error"]) == (429, "rate_limited")
        assert over.json()["message"]
        assert 1 <= int(over.headers["Retry-After"]) <= 20  # a token every 20 s
        status, body, headers = await refused(srv.ws_url, additional_headers=bearer("fast"))
        assert (status, body["error"]) == (429, "rate_limited") and int(headers["retry-after"]) >= 1
        assert await admitted(srv, "calm")  # the rate is the key's, not the user's


async def test_typed_turns_past_the_rate_get_an_error_event_and_the_session_stays_open(
    settings: Settings, js: JetStreamContext
) -> None:
    update = {"api_keys": "k1", "key_rate_per_min": 3, "max_turns_per_session": 5}
    async with serving(settings, **update) as srv:
        client = await open_client(srv, additional_headers=bearer("k1"))  # 1 of 3
        sid = (await client.start())["session_id"]
        for n in range(3):  # 2 and 3 of 3, then one too many
            await client.send({"type": "text", "text": f"turn {n}"})
        while (got := await client.recv())["type"] != "error":
            assert got["type"] == "transcript"
        assert (got["code"], got["retryable"]) == ("rate_limited", True)
        assert got["retry_after"] >= 1
        await still_open(client, sid, js)


async def test_a_key_offered_as_websocket_subprotocol_is_taken_and_never_echoed(
    settings: Settings, js: JetStreamContext
) -> None:
    async with serving(settings, api_keys="k1") as srv:
        async with connect(srv.ws_url, subprotocols=offer("k1")) as conn:
            assert conn.subprotocol == "morgan.v1"
            assert conn.response is not None
            assert conn.response.headers.get_all("Sec-WebSocket-Protocol") == ["morgan.v1"]
            await Client(conn).start()
        status, body, headers = await refused(srv.ws_url, subprotocols=offer("wrong"))
        assert (status, body["error"]) == (401, "unauthorized")
        assert "wrong" not in json.dumps(headers)


async def test_a_ticket_opens_one_websocket_once_and_not_after_it_expires(
    settings: Settings, js: JetStreamContext
) -> None:
    async with serving(settings, api_keys="bob:k1") as srv:
        assert (await post_session(srv, {})).status_code == 401  # a ticket needs the key
        granted = await post_session(srv, bearer("k1"))
        assert granted.headers["cache-control"] == "no-store"
        body = granted.json()
        assert (body["user"], body["expires_in"]) == ("bob", 30.0)
        url = f"{srv.ws_url}?ticket={body['ticket']}"
        client = Client(await connect(url))
        await client.start()
        status, again, _ = await refused(url)
        assert (status, again["error"]) == (401, "bad_ticket")

        stale = await state_of(srv).book.new_ticket(key_hash("k1"), ttl_s=0.0)
        status, expired, _ = await refused(f"{srv.ws_url}?ticket={stale}")
        assert (status, expired["error"]) == (401, "bad_ticket")
        status, junk, _ = await refused(f"{srv.ws_url}?ticket=not-a-ticket")
        assert (status, junk["error"]) == (401, "bad_ticket")


async def test_an_api_key_in_the_url_is_refused_with_400_saying_how_to_send_it(
    settings: Settings, js: JetStreamContext
) -> None:
    async with serving(settings, api_keys="k1") as srv:
        status, body, _ = await refused(f"{srv.ws_url}?api_key=k1", additional_headers=bearer("k1"))
        assert (status, body["error"]) == (400, "key_in_url")
        assert "Authorization: Bearer" in body["message"] and "morgan.key." in body["message"]
        async with httpx.AsyncClient(base_url=srv.url) as http:
            for got in (
                await http.post("/api/text?api_key=k1", json={"text": "hi"}),
                await http.get("/api/conversations", params={"api_key": "k1"}),
                await http.post("/api/session?api_key=k1"),
            ):
                assert (got.status_code, got.json()["error"]) == (400, "key_in_url")
            assert (await http.get("/health?api_key=k1")).status_code == 200  # open routes


async def test_a_key_offered_as_websocket_subprotocol_never_reaches_the_debug_log(
    settings: Settings, js: JetStreamContext, caplog: pytest.LogCaptureFixture
) -> None:
    # At DEBUG the websockets library logs each handshake header: the key's subprotocol
    # must be masked like Authorization (gateway/log_filters.py).
    with caplog.at_level(logging.DEBUG, logger="uvicorn.error"):
        async with serving(settings, api_keys="s3cret-key", log_level="DEBUG") as srv:
            async with connect(srv.ws_url, subprotocols=offer("s3cret-key")) as ws:
                await asyncio.wait_for(await ws.ping(), TIMEOUT)
    assert "s3cret-key" not in caplog.text


async def test_a_key_dropped_from_live_config_closes_its_sessions(
    settings: Settings, js: JetStreamContext
) -> None:
    config = await ensure_bucket(js, settings)
    await config.put("secrets.api_keys", b"alice:k1,bob:k2")
    async with serving(settings) as srv:
        dropped = await open_client(srv, additional_headers=bearer("k1"))
        await dropped.start()
        await config.put("secrets.api_keys", b"bob:k2")
        assert await closed_with(dropped) == (4401, "key_revoked")
        got = await post_session(srv, bearer("k1"))
        assert (got.status_code, got.json()["error"]) == (401, "unauthorized")  # unknown now
        assert await admitted(srv, "k2")
