from __future__ import annotations

import pydantic
import pytest

from schemas import Subjects
from streams.settings import Settings


def test_settings_read_morgan_env_vars(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MORGAN_NATS_URL", "nats://a:4222, nats://b:4222")
    monkeypatch.setenv("MORGAN_VAD_SILENCE_MS", "650")
    monkeypatch.setenv("MORGAN_TIERS", "gpu,cpu")
    s = Settings.from_env()
    assert s.nats_urls == ["nats://a:4222", "nats://b:4222"]
    assert s.vad_silence_ms == 650
    assert s.tier_list == ("gpu", "cpu")


def test_settings_are_frozen() -> None:
    with pytest.raises(pydantic.ValidationError):
        Settings().vad_silence_ms = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("name", "value"),
    [("MORGAN_VAD_SILENCE_MS", "-5"), ("MORGAN_PREFIX", "a.b"), ("MORGAN_LLM_BACKEND", "x")],
)
def test_bad_settings_are_refused_with_the_field_named(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(pydantic.ValidationError, match=name.removeprefix("MORGAN_").lower()):
        Settings.from_env()


def test_secrets_stay_out_of_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MORGAN_API_KEYS", "sekrit1,sekrit2")
    monkeypatch.setenv("MORGAN_LLM_API_KEY", "sekrit3")
    s = Settings.from_env()
    assert s.api_key_set == {"sekrit1", "sekrit2"}
    assert "sekrit" not in repr(s)


def test_subjects_are_built_in_one_place() -> None:
    s = Subjects("morgan")
    assert s.audio_in("abc") == "morgan.audio.in.abc"
    assert s.events("abc", "reply.delta") == "morgan.events.abc.reply.delta"
    assert s.events("abc") == "morgan.events.abc.>"
    assert s.work("stt", "gpu") == "morgan.work.stt.gpu"
    assert s.work("llm") == "morgan.work.llm"
    assert s.control("abc") == "morgan.control.abc"


@pytest.mark.parametrize("sid", ["", "a.b", "a b", "*", ">"])
def test_session_ids_that_would_break_subjects_are_refused(sid: str) -> None:
    with pytest.raises(ValueError, match="session id"):
        Subjects().audio_in(sid)


def test_work_subjects_take_only_the_known_tiers_and_one_token_kinds() -> None:
    assert Subjects().work("stt") == "morgan.work.stt"  # tiered or not: the Spec says
    with pytest.raises(ValueError, match="tier"):
        Subjects().work("stt", "tpu")
    with pytest.raises(ValueError, match="kind"):
        Subjects().work("a.b")
