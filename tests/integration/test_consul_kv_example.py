"""The shipped Consul KV example, loaded the way an operator loads it
(``deploy/consul/load-kv.sh`` against a Consul agent, here the fake), gives every
area the settings the example names: the global object, then the area's own, then
the secrets, each read back through ``ConfigSource``."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from streams.config_source import ConfigSource
from streams.settings import Settings
from tests.fakes.consul import FakeConsul

ROOT = Path(__file__).resolve().parents[2]
LOAD_KV = ROOT / "deploy" / "consul" / "load-kv.sh"
EXAMPLE = ROOT / "deploy" / "consul" / "kv-example.json"


@pytest_asyncio.fixture
async def fake() -> AsyncIterator[FakeConsul]:
    async with FakeConsul() as f:
        yield f


async def load_kv(env: Mapping[str, str]) -> tuple[int, str, str]:
    """Run load-kv.sh with no arguments (the example beside it): (exit code, out, err)."""
    for tool in ("curl", "jq"):
        assert shutil.which(tool), f"load-kv.sh needs {tool} (scripts/setup --test installs it)"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CONSUL_")}
    proc = await asyncio.create_subprocess_exec(
        str(LOAD_KV),
        env={**clean, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def example() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(EXAMPLE.read_text())
    return data


async def test_the_shipped_example_gives_each_area_its_global_own_and_secret_settings(
    fake: FakeConsul, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    code, out, err = await load_kv({"CONSUL_HTTP_ADDR": fake.addr})
    kv = example()
    assert (code, err) == (0, "")
    assert out.splitlines() == [f"put {key}" for key in sorted(kv)]
    secrets = {k.removeprefix("morgan/secrets/"): v for k, v in kv.items() if "/secrets/" in k}
    areas = [k.removeprefix("morgan/config/") for k in kv if k.startswith("morgan/config/")]
    areas.remove("global")
    assert {"gateway", "llm"} <= set(areas) and set(secrets) == {"api_keys", "llm_api_key"}
    base = Settings(data_dir=tmp_path, consul_http_addr=fake.addr)
    got: dict[str, Settings] = {}
    with caplog.at_level(logging.WARNING, logger="morgan.config"):
        for area in areas:
            async with ConfigSource(base, area) as source:
                got[area] = source.current
    assert caplog.records == []  # nothing in the example was ignored or refused
    for area in areas:
        wanted = {**kv["morgan/config/global"], **kv[f"morgan/config/{area}"], **secrets}
        assert {name: getattr(got[area], name) for name in wanted} == wanted, area
    assert got["gateway"].api_key_set == {"replace-with-key-1", "replace-with-key-2"}
    assert got["vad"].vad_silence_ms == 600  # the vad object's
    assert got["tts"].vad_silence_ms == base.vad_silence_ms  # another area's is not applied
    assert got["llm"].llm_api_key == "replace-with-the-openai-compatible-key"


async def test_load_kv_sends_consul_http_token_and_fails_loudly_without_it(
    tmp_path: Path,
) -> None:
    async with FakeConsul(token="operator") as secured:
        code, out, err = await load_kv({"CONSUL_HTTP_ADDR": f"http://{secured.addr}"})
        assert code != 0 and "403" in err and out == ""
        env = {"CONSUL_HTTP_ADDR": secured.addr, "CONSUL_HTTP_TOKEN": "operator"}
        code, out, err = await load_kv(env)
        assert (code, err) == (0, "")
        assert set(secured.kv) == set(example())
        assert (
            secured.kv["morgan/secrets/api_keys"].value == b"replace-with-key-1,replace-with-key-2"
        )
