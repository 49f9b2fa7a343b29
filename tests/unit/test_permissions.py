"""Each role's allow lists follow from the kind declarations (processors.permissions)."""

from __future__ import annotations

import subprocess
from pathlib import Path

from examples.keyword_spotter import morgan_keywords as example
from examples.keyword_spotter.morgan_keywords import Keyword
from processors import permissions, registry
from processors.spec import Spec, WorkQueue
from schemas import LlmRequest, Transcript
from streams import embedded, nats_auth
from streams.settings import Settings

SETTINGS = Settings()
SPECS = [registry.spec(k) for k in registry.BUILT_IN]


def role(name: str, specs: list[Spec] = SPECS) -> nats_auth.Permissions:
    [found] = [r for r in permissions.roles(SETTINGS, specs) if r.name == name]
    assert found.permissions is not None
    return found.permissions


def test_a_kind_may_send_work_only_to_kinds_that_accept_it() -> None:
    stt = role("stt")
    assert "morgan.work.llm" in stt.publish
    assert not any(s.startswith("morgan.work.tts") for s in stt.publish)
    assert "morgan.work.vad" not in stt.publish


def test_a_kind_reads_only_its_own_consumers() -> None:
    llm = role("llm")
    assert "$JS.API.CONSUMER.MSG.NEXT.WORK.llm" in llm.publish
    assert not any("MSG.NEXT.WORK.stt" in s for s in llm.publish)


def test_only_the_kind_that_sends_audio_may_publish_reply_audio() -> None:
    assert "morgan.audio.out.*" in role("tts").publish
    assert "morgan.audio.out.*" not in role("llm").publish


def test_every_kind_may_publish_error_events_but_only_its_own_event_types() -> None:
    for spec in SPECS:
        assert "morgan.events.*.error" in role(spec.kind).publish
    assert "morgan.events.*.transcript" in role("stt").publish
    assert "morgan.events.*.transcript" not in role("tts").publish


def test_no_role_but_admin_may_delete_update_or_purge_a_stream() -> None:
    for r in permissions.roles(SETTINGS, SPECS):
        if r.name == nats_auth.ADMIN:
            assert r.permissions is None
            continue
        assert r.permissions is not None
        for subject in r.permissions.publish:
            for verb in ("DELETE", "UPDATE", "PURGE"):
                assert f"STREAM.{verb}" not in subject, (r.name, subject)


def test_a_stage_inserted_by_route_gets_the_work_it_accepts() -> None:
    """A ``redact`` kind between STT and the LLM: STT may send it requests, and it may
    send requests on to the LLM, with no permission written by hand."""
    redact = Spec(
        kind="redact",
        input=WorkQueue(),
        accepts=(LlmRequest,),
        publishes=(LlmRequest,),
        load=_load,
        handle=_handle,
    )
    specs = [*SPECS, redact]
    assert "morgan.work.redact" in role("stt", specs).publish
    assert "morgan.work.llm" in role("redact", specs).publish
    assert "morgan.work.redact" in role(nats_auth.GATEWAY, specs).publish


def test_a_kind_from_another_package_may_publish_its_own_event_type() -> None:
    specs = [*SPECS, example.KEYWORDS, example.REDACT]
    assert f"morgan.events.*.{Keyword.TYPE}" in role("keywords", specs).publish
    assert "morgan.work.llm" in role("redact", specs).publish
    assert "morgan.events.*.llm.request" not in role("redact", specs).publish


def test_the_gateway_may_publish_typed_transcripts_but_not_replies() -> None:
    gw = role(nats_auth.GATEWAY)
    assert f"morgan.events.*.{Transcript.TYPE}" in gw.publish
    assert "morgan.events.*.reply.done" not in gw.publish


def test_the_generated_authorization_block_is_a_valid_server_config(tmp_path: Path) -> None:
    _, block = permissions.credentials(SETTINGS, tmp_path / "auth")
    conf = tmp_path / "nats.conf"
    conf.write_text(
        embedded.config_text(
            host="127.0.0.1",
            port=0,
            http_port=0,
            store_dir=tmp_path / "js",
            server_name="t",
            cluster=None,
            sync_interval="1s",
            authorization=block,
        )
    )
    checked = subprocess.run(
        [embedded.binary(), "-t", "-c", str(conf)], capture_output=True, text=True, timeout=30
    )
    assert checked.returncode == 0, checked.stderr + checked.stdout


def test_seeds_are_private_and_kept_across_runs(tmp_path: Path) -> None:
    first = nats_auth.ensure_seeds(tmp_path / "auth", ["gateway"])["gateway"]
    text = first.read_bytes()
    assert first.stat().st_mode & 0o777 == 0o600
    again = nats_auth.ensure_seeds(tmp_path / "auth", ["gateway", "stt"])
    assert again["gateway"].read_bytes() == text
    assert nats_auth.public_key(again["gateway"]).startswith("U")


async def _load(settings: Settings, tiers: tuple[str, ...]) -> None:
    return None


async def _handle(msg: object, ctx: object) -> None:
    return None
