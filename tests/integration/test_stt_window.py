"""stt's short window (issue 12): the same words as Whisper's 30 s, on the shipped tiny.en."""

from __future__ import annotations

import dataclasses
import re
from typing import Any

import pytest

from processors import stt
from streams.settings import Settings
from testbed.audio import silence, speak


@pytest.fixture(scope="module")
def model() -> stt.SttModel:
    return stt.open_model(Settings.from_env().model_copy(update={"stt_model": ""}), gpu=False)


class Counted:
    """A WhisperModel that counts its ``transcribe`` calls (the 30 s way)."""

    def __init__(self, whisper: Any) -> None:
        self.whisper, self.calls = whisper, 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.whisper, name)

    def transcribe(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        return self.whisper.transcribe(*args, **kwargs)


def counted(model: stt.SttModel, **changes: Any) -> tuple[stt.SttModel, Counted]:
    whisper = Counted(model.whisper)
    return dataclasses.replace(model, whisper=whisper, **changes), whisper


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def test_the_defaults_are_a_15_second_window_and_beam_5(model: stt.SttModel) -> None:
    assert (model.window_s, model.beam_size) == (15.0, 5)


@pytest.mark.parametrize(
    "text", ["what is the weather like today", "good morning Morgan", "how far away is the moon"]
)
def test_a_short_utterance_transcribes_the_same_words_as_the_30_second_window(
    model: stt.SttModel, text: str
) -> None:
    pcm = silence(300) + speak(text) + silence(300)
    short, whisper = counted(model)
    before = dataclasses.replace(model, window_s=stt.MAX_SECONDS, beam_size=1)
    heard = stt.transcribe(short, pcm)
    assert whisper.calls == 0  # the short window only
    assert words(heard) == words(stt.transcribe(before, pcm)) == words(text)


def test_silence_is_no_words_although_the_short_window_hears_you(model: stt.SttModel) -> None:
    short, whisper = counted(model)
    assert stt.transcribe(short, silence(1500)) == ""
    assert whisper.calls == 1  # not sure of Whisper's "you" on silence: the 30 s way decides


def test_an_utterance_longer_than_half_the_window_takes_the_30_second_way(
    model: stt.SttModel,
) -> None:
    pcm = silence(300) + speak("tell me a fun fact about cats") + silence(300)
    assert len(pcm) / 2 / stt.RATE > 2.0
    narrow, whisper = counted(model, window_s=4.0)  # half: 2 s
    assert "fun" in stt.transcribe(narrow, pcm).lower()
    assert whisper.calls == 1


def test_window_s_30_is_faster_whisper_s_own_way(model: stt.SttModel) -> None:
    before, whisper = counted(model, window_s=stt.MAX_SECONDS)
    assert "moon" in stt.transcribe(before, speak("how far away is the moon")).lower()
    assert whisper.calls == 1
