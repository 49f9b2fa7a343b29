"""A kind from another package: ``pip install`` it into a fresh virtualenv, then
``morgan run <kind>`` works against a real nats-server, with no edit to Morgan.

The fresh virtualenv sees Morgan the way any environment with Morgan installed
does: one ``.pth`` file adds the site-packages this test runs from, where Morgan and
its dependencies are installed. The example (examples/keyword_spotter) is copied out
of the repository, installed with pip, and its workers run from outside the
repository, so the kind can only come from the installed package's entry points.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from processors import registry
from processors.context import Onward
from schemas import LlmRequest, Subjects, Transcript, decode
from schemas.codec import TYPE_HEADER
from streams import bus, definitions
from streams.routes import Routes
from streams.settings import Settings

pytestmark = pytest.mark.system

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "keyword_spotter"
READY_S = 60.0
"""Longest a worker may take to load and report ready, seconds (about 3 here)."""
WAIT_S = 10.0


def known_kinds(python: Path, cwd: Path) -> list[str]:
    """The kinds ``morgan run`` offers in the environment of ``python``."""
    code = "from processors import registry; print(','.join(sorted(registry.kinds())))"
    out = subprocess.run(
        [python, "-c", code], cwd=cwd, env=clean_env(), capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().split(",")


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without Morgan's settings or a PYTHONPATH, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MORGAN_")}
    env.pop("PYTHONPATH", None)
    return {**env, **extra}


@pytest.fixture(scope="module")
def plugin_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtualenv that has Morgan and, installed with pip, the example package."""
    home = tmp_path_factory.mktemp("plugin")
    venv = home / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", venv], check=True, timeout=60)
    python = venv / "bin" / "python"
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    found = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60)
    site = Path(found.stdout.strip())
    assert site.is_relative_to(venv), site
    with_morgan = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    lines = [f"import site; site.addsitedir({d!r})\n" for d in sorted(with_morgan)]
    (site / "with_morgan.pth").write_text("".join(lines))
    assert "keywords" not in known_kinds(python, home)

    source = shutil.copytree(EXAMPLE, home / "keyword_spotter")  # builds leave files behind
    # pip is the one Morgan's environment has (seen through the .pth); it installs into
    # the fresh virtualenv, whose prefix is sys.prefix there.
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    offline = ["--no-index", "--no-deps", "--no-build-isolation"]  # Morgan's setuptools
    subprocess.run(
        [*pip, *offline, str(source)], cwd=home, env=clean_env(), check=True, timeout=180
    )
    assert {"keywords", "redact", "stt", "llm"} <= set(known_kinds(python, home))
    return python


@contextlib.asynccontextmanager
async def running(python: Path, kind: str, env: dict[str, str]) -> AsyncIterator[None]:
    """``morgan run KIND`` in the plugin's environment, from when it is ready."""
    proc = await asyncio.create_subprocess_exec(
        python,
        *("-m", "morgan", "run", kind),
        cwd=python.parents[2],
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    assert proc.stdout is not None
    log = bytearray()

    async def read() -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            log.extend(line)

    reader = asyncio.create_task(read())
    try:
        try:
            async with asyncio.timeout(READY_S):
                while b" ready on " not in log:
                    if reader.done():
                        raise AssertionError(f"morgan run {kind} exited:\n{log.decode()}")
                    await asyncio.sleep(0.05)
        except TimeoutError:
            raise AssertionError(f"morgan run {kind} not ready:\n{log.decode()}") from None
        yield
    finally:
        if proc.returncode is None:
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except TimeoutError:
            proc.kill()
            await proc.wait()
        await reader
        print(f"--- morgan run {kind} ---\n{log.decode()}")  # shown when a test fails


def worker_env(settings: Settings, **extra: str) -> dict[str, str]:
    return clean_env(
        MORGAN_NATS_URL=settings.nats_url,
        MORGAN_DATA_DIR=str(settings.data_dir),
        MORGAN_TIERS="cpu",
        **extra,
    )


async def test_an_installed_tap_kind_publishes_keyword_events(
    plugin_python: Path, settings: Settings, nc: Client, js: JetStreamContext
) -> None:
    s = Subjects(settings.prefix)
    keywords = await nc.subscribe(s.events("s1", "keyword"))
    async with running(plugin_python, "keywords", worker_env(settings, MORGAN_KEYWORDS="weather")):
        said = Transcript("s1", "t1", "What's the weather like?")
        await bus.publish(js, s.events("s1", said.TYPE), said, msg_id="s1.t1.transcript")
        raw = await keywords.next_msg(timeout=WAIT_S)
    # This process never imports the example: read the event as any client would.
    assert raw.headers is not None and raw.headers[TYPE_HEADER] == "keyword"
    assert json.loads(raw.data) == {"sid": "s1", "turn": "t1", "word": "weather"}


async def test_an_installed_stage_sits_between_stt_and_llm_by_route(
    plugin_python: Path, settings: Settings, js: JetStreamContext
) -> None:
    routes = "stt:llm.request=redact"
    s = Subjects(settings.prefix)
    # Where STT sends its request under this route (what its ctx.forward asks).
    to = await Onward(Routes.parse(routes), registry.is_tiered).subject(s, "stt", "llm.request")
    assert to == s.work("redact")
    llm = await js.pull_subscribe_bind("llm", stream=definitions.WORK)
    async with running(plugin_python, "redact", worker_env(settings, MORGAN_ROUTES=routes)):
        await bus.publish(js, to, LlmRequest("s1", "t1", "call 555 0199"), msg_id="s1.t1.llm")
        [raw] = await llm.fetch(1, timeout=WAIT_S)
    await raw.ack()
    assert raw.subject == s.work("llm")
    assert decode(raw.headers, raw.data) == LlmRequest("s1", "t1", "call ### ####")
