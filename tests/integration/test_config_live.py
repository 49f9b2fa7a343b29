"""Live config from the fake Consul (blocking queries) and from a real NATS KV bucket."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest_asyncio
from nats.aio.client import Client

from streams.config_source import ConfigSource, ensure_bucket, watch_config
from streams.consul import Consul
from streams.settings import Settings
from tests.fakes.consul import FakeConsul
from tests.integration.bus_helpers import until

WAIT_S = 5.0
"""Blocking-query wait in these tests: a change must arrive well before it."""


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeConsul]:
    async with FakeConsul() as f:
        yield f


def consul_settings(tmp_path: Path, addr: str, **more: Any) -> Settings:
    fields: dict[str, Any] = {"config_watch_wait_s": WAIT_S, **more}
    return Settings(data_dir=tmp_path, consul_http_addr=addr, **fields)


async def put(settings: Settings, key: str, value: object) -> None:
    async with Consul(settings) as consul:
        data = value if isinstance(value, str) else json.dumps(value)
        assert await consul.kv_put(key, data)


async def next_where(
    stream: AsyncGenerator[Settings, None], check: Callable[[Settings], bool], timeout: float
) -> Settings:
    """The first Settings from ``stream`` that passes ``check``."""
    deadline = time.monotonic() + timeout
    while True:
        got = await asyncio.wait_for(anext(stream), max(0.0, deadline - time.monotonic()))
        if check(got):
            return got


async def test_consul_config_applies_kind_over_global_and_changes_live(
    fake: FakeConsul, tmp_path: Path
) -> None:
    settings = consul_settings(tmp_path, fake.addr)
    await put(settings, "morgan/config/global", {"vad_silence_ms": 600, "llm_max_tokens": 80})
    await put(settings, "morgan/config/stt", {"vad_silence_ms": 700})
    stream = watch_config(settings, "stt")
    try:
        first = await anext(stream)
        assert (first.vad_silence_ms, first.llm_max_tokens) == (700, 80)
        await until(lambda: fake.blocking == 1)  # the watch is parked in a blocking query
        started = time.monotonic()
        await put(settings, "morgan/config/stt", {"vad_silence_ms": 800})
        changed = await next_where(stream, lambda s: s.vad_silence_ms == 800, WAIT_S)
        latency = time.monotonic() - started
        assert latency < WAIT_S / 2  # woken by the change, not by the wait running out
        assert changed.llm_max_tokens == 80
        await put(settings, "morgan/config/vad", {"vad_silence_ms": 999})  # another kind's
        await put(settings, "morgan/config/global", {"llm_max_tokens": 81})
        latest = await next_where(stream, lambda s: s.llm_max_tokens == 81, WAIT_S)
        assert latest.vad_silence_ms == 800
    finally:
        await stream.aclose()


async def test_consul_secrets_apply_and_stay_out_of_repr(fake: FakeConsul, tmp_path: Path) -> None:
    settings = consul_settings(tmp_path, fake.addr)
    stream = watch_config(settings, "llm")
    try:
        assert (await anext(stream)).llm_api_key == ""
        await put(settings, "morgan/secrets/llm_api_key", "sk-abc-123\n")
        new = await next_where(stream, lambda s: s.llm_api_key != "", WAIT_S)
        assert new.llm_api_key == "sk-abc-123"
        assert "sk-abc-123" not in repr(new)
    finally:
        await stream.aclose()


async def test_bad_live_values_are_ignored_and_the_rest_applied(
    fake: FakeConsul, tmp_path: Path
) -> None:
    settings = consul_settings(tmp_path, fake.addr)
    stream = watch_config(settings, "stt")
    try:
        await anext(stream)
        await put(settings, "morgan/config/stt", {"vad_silence_ms": "soon", "llm_max_tokens": 42})
        new = await next_where(stream, lambda s: s.llm_max_tokens == 42, WAIT_S)
        assert new.vad_silence_ms == settings.vad_silence_ms
        await put(settings, "morgan/config/global", "[not an object")
        await put(settings, "morgan/config/stt", {"llm_max_tokens": 43})
        assert (await next_where(stream, lambda s: s.llm_max_tokens == 43, WAIT_S)).llm_max_tokens
    finally:
        await stream.aclose()


async def test_unreachable_consul_uses_the_cache_until_it_is_too_old(
    fake: FakeConsul, tmp_path: Path
) -> None:
    settings = consul_settings(tmp_path, fake.addr, config_cache_max_age_s=300.0)
    await put(settings, "morgan/config/tts", {"tts_chunk_ms": 250})
    async with ConfigSource(settings, "tts") as source:
        assert source.current.tts_chunk_ms == 250  # and the cache is written
    await fake.stop()

    async with ConfigSource(settings, "tts", clock=lambda: time.time() + 200) as source:
        assert source.current.tts_chunk_ms == 250  # Consul down: the 200 s old cache
    async with ConfigSource(settings, "tts", clock=lambda: time.time() + 301) as source:
        assert source.current == settings  # older than 5 minutes: base settings


async def test_a_consul_outage_during_the_watch_falls_back_to_base_after_max_age(
    fake: FakeConsul, tmp_path: Path
) -> None:
    settings = consul_settings(tmp_path, fake.addr, config_cache_max_age_s=300.0)
    await put(settings, "morgan/config/tts", {"tts_chunk_ms": 250})
    offset = [0.0]
    seen: list[Settings] = []
    async with ConfigSource(settings, "tts", clock=lambda: time.time() + offset[0]) as source:
        source.subscribe(seen.append)
        assert source.current.tts_chunk_ms == 250
        await fake.stop()
        offset[0] = 200.0  # within the max age: keep the last good config
        await until(lambda: source.failures >= 2)
        assert source.current.tts_chunk_ms == 250
        offset[0] = 301.0
        await until(lambda: source.current == settings)
        assert seen[-1] == settings
        await fake.start()  # back: the store's config applies again
        await until(lambda: source.current.tts_chunk_ms == 250)


async def test_the_watch_recovers_when_the_consul_index_goes_backwards(
    fake: FakeConsul, tmp_path: Path
) -> None:
    settings = consul_settings(tmp_path, fake.addr, config_watch_wait_s=0.5)
    for n in range(10):
        await put(settings, "morgan/config/stt", {"llm_max_tokens": 10 + n})
    stream = watch_config(settings, "stt")
    try:
        assert (await anext(stream)).llm_max_tokens == 19
        fake.reset()  # a rebuilt cluster: its index restarts below the watcher's
        await put(settings, "morgan/config/stt", {"llm_max_tokens": 77})
        new = await next_where(stream, lambda s: s.llm_max_tokens == 77, 5.0)
        assert new.llm_max_tokens == 77
    finally:
        await stream.aclose()


async def test_nats_kv_serves_config_when_consul_is_not_configured(
    nc: Client, settings: Settings
) -> None:
    settings = settings.model_copy(update={"config_watch_wait_s": WAIT_S, "consul_http_addr": ""})
    kv = await ensure_bucket(nc.jetstream(), settings)
    await kv.put("global", json.dumps({"vad_silence_ms": 650}).encode())
    stream = watch_config(settings, "vad", nc)
    try:
        assert (await anext(stream)).vad_silence_ms == 650
        started = time.monotonic()
        await kv.put("vad", json.dumps({"vad_silence_ms": 900, "vad_threshold": 7}).encode())
        new = await next_where(stream, lambda s: s.vad_silence_ms == 900, WAIT_S)
        assert time.monotonic() - started < 1.0
        assert new.vad_threshold == settings.vad_threshold  # out of range: ignored
        await kv.put("secrets.api_keys", b"k1,k2")
        keyed = await next_where(stream, lambda s: bool(s.api_keys), WAIT_S)
        assert keyed.api_key_set == frozenset({"k1", "k2"}) and "k1" not in repr(keyed)
        await kv.delete("vad")
        back = await next_where(stream, lambda s: s.vad_silence_ms == 650, WAIT_S)
        assert back.api_key_set == frozenset({"k1", "k2"})
    finally:
        await stream.aclose()
