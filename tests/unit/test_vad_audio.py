"""Silero + the segmenter on generated audio: speech found where it is, noise ignored."""

from __future__ import annotations

import numpy as np
import pytest

from processors import silero
from processors.segmenter import Ended, Event, Segmenter, SegmenterConfig, Started
from testbed.audio import silence, speak


@pytest.fixture(scope="module")
def model() -> object:
    return silero.load_session()


def segment(model: object, pcm: bytes) -> list[Event]:
    stream = silero.SileroStream(model)
    seg = Segmenter(SegmenterConfig())
    samples = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768
    out = []
    for offset, window in seg.windows(samples):
        event = seg.step(offset, stream.probability(window))
        if event is not None:
            out.append(event)
    return out


def test_silence_has_no_speech(model: object) -> None:
    assert segment(model, silence(3000)) == []


def test_quiet_noise_has_no_speech(model: object) -> None:
    noise = (np.random.default_rng(1).standard_normal(48000) * 300).astype("<i2").tobytes()
    assert segment(model, noise) == []


def test_a_spoken_sentence_is_one_utterance_where_it_was_spoken(model: object) -> None:
    speech = speak("the quick brown fox jumps over the lazy dog")
    events = segment(model, silence(1000) + speech + silence(1500))
    assert [type(e) for e in events] == [Started, Ended]
    start, end = events[1].start, events[1].end  # type: ignore[union-attr]
    spoken_from, spoken_to = 16000, 16000 + len(speech) // 2
    assert spoken_from - 16000 * 0.5 <= start <= spoken_from + 16000 * 0.3
    assert spoken_to - 16000 * 0.3 <= end <= spoken_to + 16000 * 0.6


def test_two_sentences_with_a_long_pause_are_two_utterances(model: object) -> None:
    one, two = speak("good morning"), speak("how are you today")
    events = segment(model, silence(500) + one + silence(1200) + two + silence(1200))
    assert [type(e) for e in events] == [Started, Ended, Started, Ended]
