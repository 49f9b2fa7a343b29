"""Live config overrides: validation, secrets, and the on-disk cache (no servers)."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest

from streams.config_source import Cache, Layers, apply_layers, parse_object
from streams.settings import Settings


@pytest.fixture
def base(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, consul_http_addr="")


def test_kind_config_overrides_global(base: Settings) -> None:
    layers = Layers(
        global_={"vad_silence_ms": 600, "llm_max_tokens": 80}, kind={"vad_silence_ms": 700}
    )
    new = apply_layers(base, layers, "vad")
    assert (new.vad_silence_ms, new.llm_max_tokens) == (700, 80)
    assert base.vad_silence_ms == 500  # a new object; the base is untouched


def test_values_are_validated_and_converted(base: Settings) -> None:
    new = apply_layers(base, Layers(global_={"vad_silence_ms": "640", "vad_threshold": 0.7}))
    assert new.vad_silence_ms == 640 and new.vad_threshold == 0.7


def test_unknown_keys_and_bad_values_are_logged_and_ignored(
    base: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    layers = Layers(
        global_={"no_such_setting": 1, "vad_threshold": 2.0, "llm_max_tokens": 33},
        kind={"vad_silence_ms": "soon", "llm_backend": "bogus", "prefix": "other"},
    )
    with caplog.at_level(logging.WARNING, logger="morgan.config"):
        new = apply_layers(base, layers, "stt")
    assert new.llm_max_tokens == 33
    assert (new.vad_threshold, new.vad_silence_ms) == (base.vad_threshold, base.vad_silence_ms)
    assert (new.llm_backend, new.prefix) == (base.llm_backend, base.prefix)
    for name in ("no_such_setting", "vad_threshold", "vad_silence_ms", "llm_backend", "prefix"):
        assert name in caplog.text


def test_nothing_valid_returns_the_same_settings(base: Settings) -> None:
    assert apply_layers(base, Layers(global_={"vad_silence_ms": -1})) is base
    assert apply_layers(base, Layers()) is base


def test_secrets_are_applied_and_kept_out_of_repr(base: Settings) -> None:
    new = apply_layers(base, Layers(secrets={"llm_api_key": "sk-live-123", "api_keys": "a,b"}))
    assert new.llm_api_key == "sk-live-123"
    assert new.api_key_set == frozenset({"a", "b"})
    assert "sk-live-123" not in repr(new) and "sk-live-123" not in str(new)


def test_secrets_are_refused_in_plain_config_and_unknown_secrets_ignored(
    base: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="morgan.config"):
        new = apply_layers(
            base,
            Layers(
                global_={"llm_api_key": "leaked"},
                secrets={"vad_silence_ms": "900", "consul_http_token": "t"},
            ),
        )
    assert new is base
    assert "leaked" not in caplog.text


def test_fields_that_locate_the_bus_and_the_store_cannot_change_live(base: Settings) -> None:
    layers = Layers(global_={"nats_url": "nats://elsewhere:4222", "consul_http_addr": "x:1"})
    assert apply_layers(base, layers) is base


def test_parse_object_accepts_only_json_objects() -> None:
    assert parse_object("g", b'{"a": 1}') == {"a": 1}
    assert parse_object("g", b"") == {}
    assert parse_object("g", b"[1, 2]") == {}
    assert parse_object("g", b"{not json") == {}


def test_cache_round_trips_is_private_and_expires_by_the_injected_clock(
    base: Settings,
) -> None:
    now = [1000.0]
    cache = Cache(base, "tts", lambda: now[0])
    layers = Layers(global_={"vad_silence_ms": 600}, secrets={"llm_api_key": "k"})
    cache.save(layers, "consul")
    assert stat.S_IMODE(cache.path.stat().st_mode) == 0o600
    now[0] += 299.0
    assert cache.load(300.0) == layers
    now[0] += 2.0
    assert cache.load(300.0) is None


def test_a_missing_or_corrupt_cache_is_ignored(base: Settings) -> None:
    cache = Cache(base, "tts", lambda: 0.0)
    assert cache.load(300.0) is None
    cache.path.parent.mkdir(parents=True)
    cache.path.write_text("{truncated")
    assert cache.load(300.0) is None
