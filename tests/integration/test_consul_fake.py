"""The fake Consul answers as Consul's HTTP API documentation says (raw HTTP, no client)."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator

import httpx
import pytest
import pytest_asyncio

from tests.fakes.consul import FakeConsul, parse_duration
from tests.integration.bus_helpers import until


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeConsul]:
    async with FakeConsul(reap_interval_s=0.05, min_deregister_s=0.0) as f:
        yield f


@pytest_asyncio.fixture
async def http(fake: FakeConsul) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://{fake.addr}", timeout=20.0) as client:
        yield client


def index(r: httpx.Response) -> int:
    return int(r.headers["X-Consul-Index"])


TTL_SERVICE = {
    "Name": "web",
    "ID": "web-1",
    "Tags": ["a", "tier=gpu"],
    "Meta": {"version": "1"},
    "Port": 80,
    "Check": {"TTL": "300ms", "DeregisterCriticalServiceAfter": "500ms"},
}


def test_go_durations_parse_like_go() -> None:
    assert parse_duration("10s") == 10.0
    assert parse_duration("1m30s") == 90.0
    assert parse_duration("250ms") == pytest.approx(0.25)
    assert parse_duration(2_000_000_000) == 2.0


async def test_kv_missing_key_is_404_with_an_index(http: httpx.AsyncClient) -> None:
    r = await http.get("/v1/kv/nope")
    assert r.status_code == 404
    assert index(r) >= 1


async def test_kv_put_get_round_trips_base64_value_and_tracks_indexes(
    http: httpx.AsyncClient,
) -> None:
    assert (await http.put("/v1/kv/app/x", content=b"one")).json() is True
    first = (await http.get("/v1/kv/app/x")).json()[0]
    assert base64.b64decode(first["Value"]) == b"one"
    assert first["CreateIndex"] == first["ModifyIndex"]
    await http.put("/v1/kv/app/x", content=b"two")
    r = await http.get("/v1/kv/app/x")
    second = r.json()[0]
    assert second["CreateIndex"] == first["CreateIndex"]
    assert second["ModifyIndex"] > first["ModifyIndex"]
    assert index(r) == second["ModifyIndex"]
    assert (await http.get("/v1/kv/app/x", params={"raw": ""})).content == b"two"
    await http.put("/v1/kv/app/empty", content=b"")
    assert (await http.get("/v1/kv/app/empty")).json()[0]["Value"] is None


async def test_kv_recurse_keys_and_separator(http: httpx.AsyncClient) -> None:
    for key in ("cfg/a", "cfg/b/c", "cfg/b/d", "other"):
        await http.put(f"/v1/kv/{key}", content=b"v")
    rec = (await http.get("/v1/kv/cfg/", params={"recurse": ""})).json()
    assert [e["Key"] for e in rec] == ["cfg/a", "cfg/b/c", "cfg/b/d"]
    keys = (await http.get("/v1/kv/cfg/", params={"keys": "", "separator": "/"})).json()
    assert keys == ["cfg/a", "cfg/b/"]
    assert (await http.get("/v1/kv/none/", params={"recurse": ""})).status_code == 404


async def test_kv_cas_zero_creates_once_and_cas_index_must_match(
    http: httpx.AsyncClient,
) -> None:
    assert (await http.put("/v1/kv/lock", params={"cas": "0"}, content=b"1")).json() is True
    assert (await http.put("/v1/kv/lock", params={"cas": "0"}, content=b"2")).json() is False
    modify = (await http.get("/v1/kv/lock")).json()[0]["ModifyIndex"]
    stale = {"cas": str(modify - 1)}
    assert (await http.put("/v1/kv/lock", params=stale, content=b"3")).json() is False
    assert (await http.put("/v1/kv/lock", params={"cas": str(modify)}, content=b"4")).json()
    assert (await http.get("/v1/kv/lock", params={"raw": ""})).content == b"4"


async def test_kv_delete_recurse_removes_the_prefix_only(http: httpx.AsyncClient) -> None:
    for key in ("p/a", "p/b", "q"):
        await http.put(f"/v1/kv/{key}", content=b"v")
    assert (await http.delete("/v1/kv/p/", params={"recurse": ""})).json() is True
    assert (await http.get("/v1/kv/p/", params={"recurse": ""})).status_code == 404
    assert (await http.get("/v1/kv/q")).status_code == 200


async def test_blocking_query_returns_as_soon_as_the_key_changes(
    fake: FakeConsul, http: httpx.AsyncClient
) -> None:
    await http.put("/v1/kv/k", content=b"old")
    since = index(await http.get("/v1/kv/k"))
    query = asyncio.create_task(http.get("/v1/kv/k", params={"index": since, "wait": "30s"}))
    await until(lambda: fake.blocking == 1)
    started = time.monotonic()
    await http.put("/v1/kv/k", content=b"new")
    r = await asyncio.wait_for(query, 5)
    assert time.monotonic() - started < 2.0
    assert index(r) > since
    assert base64.b64decode(r.json()[0]["Value"]) == b"new"


async def test_blocking_query_returns_after_wait_with_the_same_index(
    http: httpx.AsyncClient,
) -> None:
    await http.put("/v1/kv/k", content=b"v")
    since = index(await http.get("/v1/kv/k"))
    started = time.monotonic()
    r = await http.get("/v1/kv/k", params={"index": since, "wait": "300ms"})
    elapsed = time.monotonic() - started
    assert 0.3 <= elapsed < 0.3 * (1 + 1 / 16) + 0.5  # wait plus at most wait/16 jitter
    assert index(r) == since


async def test_blocking_query_ignores_writes_to_other_keys_of_an_existing_key(
    fake: FakeConsul, http: httpx.AsyncClient
) -> None:
    await http.put("/v1/kv/mine", content=b"v")
    since = index(await http.get("/v1/kv/mine"))
    query = asyncio.create_task(http.get("/v1/kv/mine", params={"index": since, "wait": "400ms"}))
    await until(lambda: fake.blocking == 1)
    await http.put("/v1/kv/theirs", content=b"v")
    r = await query
    assert index(r) == since


async def test_blocking_on_a_missing_key_wakes_on_any_kv_write(
    fake: FakeConsul, http: httpx.AsyncClient
) -> None:
    since = index(await http.get("/v1/kv/absent"))
    query = asyncio.create_task(http.get("/v1/kv/absent", params={"index": since, "wait": "30s"}))
    await until(lambda: fake.blocking == 1)
    await http.put("/v1/kv/elsewhere", content=b"v")
    r = await asyncio.wait_for(query, 5)
    assert r.status_code == 404 and index(r) > since


async def test_an_index_ahead_of_the_server_waits_then_answers_a_lower_index(
    fake: FakeConsul, http: httpx.AsyncClient
) -> None:
    for n in range(5):
        await http.put("/v1/kv/k", content=str(n).encode())
    since = index(await http.get("/v1/kv/k"))
    fake.reset()  # a new cluster: indexes start again
    await http.put("/v1/kv/k", content=b"fresh")
    r = await http.get("/v1/kv/k", params={"index": since, "wait": "200ms"})
    assert index(r) < since  # the client must reset to 0 on seeing this


async def test_ttl_check_starts_critical_passes_on_update_and_expires(
    fake: FakeConsul, http: httpx.AsyncClient
) -> None:
    svc = dict(TTL_SERVICE, Check={"TTL": "300ms"})
    assert (await http.put("/v1/agent/service/register", json=svc)).status_code == 200
    checks = (await http.get("/v1/agent/checks")).json()
    assert checks["service:web-1"]["Status"] == "critical"
    assert checks["service:web-1"]["Type"] == "ttl"
    r = await http.put("/v1/agent/check/update/service:web-1", json={"Status": "passing"})
    assert r.status_code == 200
    assert fake.checks["service:web-1"].status == "passing"
    await until(lambda: fake.checks["service:web-1"].status == "critical")
    assert fake.checks["service:web-1"].output == "TTL expired"


async def test_pass_warn_fail_and_update_of_an_unknown_check_are_404(
    http: httpx.AsyncClient,
) -> None:
    await http.put("/v1/agent/service/register", json=TTL_SERVICE)
    for verb, status in (("warn", "warning"), ("pass", "passing"), ("fail", "critical")):
        await http.put(f"/v1/agent/check/{verb}/service:web-1", params={"note": verb})
        check = (await http.get("/v1/agent/checks")).json()["service:web-1"]
        assert (check["Status"], check["Output"]) == (status, verb)
    assert (await http.put("/v1/agent/check/pass/nope")).status_code == 404
    r = await http.put("/v1/agent/check/update/nope", json={"Status": "passing"})
    assert r.status_code == 404
    bad = await http.put("/v1/agent/check/update/service:web-1", json={"Status": "fine"})
    assert bad.status_code == 400


async def test_a_service_critical_past_deregister_after_is_reaped(
    fake: FakeConsul, http: httpx.AsyncClient
) -> None:
    await http.put("/v1/agent/service/register", json=TTL_SERVICE)
    assert "web-1" in (await http.get("/v1/agent/services")).json()
    await until(lambda: "web-1" not in fake.services)
    assert (await http.get("/v1/agent/checks")).json() == {}


async def test_reaper_respects_consuls_minimum_deregister_time(http: httpx.AsyncClient) -> None:
    async with FakeConsul(reap_interval_s=0.05, min_deregister_s=60.0) as slow:
        url = f"http://{slow.addr}/v1/agent/service/register"
        await http.put(url, json=TTL_SERVICE)
        await until(lambda: slow.checks["service:web-1"].status == "critical")
        assert "web-1" in slow.services  # 500ms asked, but the minimum is a minute


async def test_deregister_removes_and_an_unknown_service_is_404(
    http: httpx.AsyncClient,
) -> None:
    await http.put("/v1/agent/service/register", json=TTL_SERVICE)
    assert (await http.put("/v1/agent/service/deregister/web-1")).status_code == 200
    assert (await http.get("/v1/agent/services")).json() == {}
    assert (await http.put("/v1/agent/service/deregister/web-1")).status_code == 404


async def test_register_validates_name_meta_and_check_kind(http: httpx.AsyncClient) -> None:
    r = await http.put("/v1/agent/service/register", json={"ID": "x"})
    assert r.status_code == 400
    r = await http.put("/v1/agent/service/register", json={"Name": "x", "Meta": {"a b": "1"}})
    assert r.status_code == 400
    r = await http.put(
        "/v1/agent/service/register", json={"Name": "x", "Check": {"HTTP": "http://x"}}
    )
    assert r.status_code == 400
    # Go's decoder matches field names case-insensitively; snake_case is accepted too.
    r = await http.put(
        "/v1/agent/service/register",
        json={"name": "y", "check": {"ttl": "1s", "status": "passing"}},
    )
    assert r.status_code == 200
    assert (await http.get("/v1/agent/checks")).json()["service:y"]["Status"] == "passing"


async def test_health_service_filters_passing_and_tags(
    fake: FakeConsul, http: httpx.AsyncClient
) -> None:
    await http.put("/v1/agent/service/register", json=dict(TTL_SERVICE, Check={"TTL": "30s"}))
    other = dict(TTL_SERVICE, ID="web-2", Tags=["tier=cpu"], Check={"TTL": "30s"})
    await http.put("/v1/agent/service/register", json=other)
    await http.put("/v1/agent/check/pass/service:web-1")
    everyone = (await http.get("/v1/health/service/web")).json()
    assert sorted(e["Service"]["ID"] for e in everyone) == ["web-1", "web-2"]
    assert everyone[0]["Checks"][0]["CheckID"] == "serfHealth"
    passing = (await http.get("/v1/health/service/web", params={"passing": ""})).json()
    assert [e["Service"]["ID"] for e in passing] == ["web-1"]
    tagged = (await http.get("/v1/health/service/web", params={"tag": "tier=cpu"})).json()
    assert [e["Service"]["ID"] for e in tagged] == ["web-2"]


async def test_health_blocking_query_wakes_on_a_status_change(
    fake: FakeConsul, http: httpx.AsyncClient
) -> None:
    await http.put("/v1/agent/service/register", json=dict(TTL_SERVICE, Check={"TTL": "30s"}))
    r = await http.get("/v1/health/service/web", params={"passing": ""})
    assert r.json() == []
    query = asyncio.create_task(
        http.get("/v1/health/service/web", params={"passing": "", "index": index(r), "wait": "30s"})
    )
    await until(lambda: fake.blocking == 1)
    await http.put("/v1/agent/check/pass/service:web-1")
    woke = await asyncio.wait_for(query, 5)
    assert [e["Service"]["ID"] for e in woke.json()] == ["web-1"]


async def test_catalog_services_lists_names_with_their_tags(http: httpx.AsyncClient) -> None:
    await http.put("/v1/agent/service/register", json=TTL_SERVICE)
    r = await http.get("/v1/catalog/services")
    assert r.json() == {"consul": [], "web": ["a", "tier=gpu"]}
    assert index(r) >= 1


async def test_acl_token_is_required_when_configured() -> None:
    async with FakeConsul(token="s3cret") as secured:
        base = f"http://{secured.addr}/v1/kv/k"
        async with httpx.AsyncClient(timeout=5.0) as client:
            assert (await client.get(base)).status_code == 403
            wrong = await client.get(base, headers={"X-Consul-Token": "nope"})
            assert (wrong.status_code, wrong.text) == (403, "ACL not found")
            ok = await client.put(base, content=b"v", headers={"X-Consul-Token": "s3cret"})
            assert ok.json() is True
            bearer = await client.get(base, headers={"Authorization": "Bearer s3cret"})
            assert bearer.status_code == 200


async def test_stop_refuses_connections_and_start_serves_the_same_address(
    fake: FakeConsul, http: httpx.AsyncClient
) -> None:
    await http.put("/v1/kv/k", content=b"kept")
    since = index(await http.get("/v1/kv/k"))
    hanging = asyncio.create_task(http.get("/v1/kv/k", params={"index": since, "wait": "30s"}))
    await until(lambda: fake.blocking == 1)
    await fake.stop()
    with pytest.raises(httpx.TransportError):
        await asyncio.wait_for(hanging, 5)  # the connection is cut, as when Consul dies
    with pytest.raises(httpx.ConnectError):
        await http.get("/v1/kv/k")
    await fake.start()
    assert (await http.get("/v1/kv/k", params={"raw": ""})).content == b"kept"
