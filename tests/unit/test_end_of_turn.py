"""Smart Turn v3.2 end of turn: the shipped model, its features, and the decision policy."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from processors import end_of_turn as eot
from processors.end_of_turn import (
    COMPLETE,
    INCOMPLETE,
    MAX_SILENCE,
    PAUSE,
    Decision,
    EndOfTurn,
    TurnModel,
)
from testbed.audio import steady_turn as turn


@pytest.fixture(scope="module")
def model() -> TurnModel:
    return TurnModel.load()


# --- the model file and its input ------------------------------------------------------


def test_the_model_ships_in_the_installed_pipecat_wheel() -> None:
    path = eot.model_path()
    assert path.name == "smart-turn-v3.2-cpu.onnx"
    assert path.stat().st_size > 1_000_000


def test_the_graph_takes_80_mel_bins_by_800_frames_and_gives_one_probability() -> None:
    session = ort.InferenceSession(str(eot.model_path()), providers=["CPUExecutionProvider"])
    [inp] = session.get_inputs()
    [out] = session.get_outputs()
    assert inp.name == TurnModel.INPUT
    assert inp.shape[1:] == [eot.N_MELS, eot.FRAMES] == [80, 800]
    assert inp.type == "tensor(float)"
    assert out.shape[1:] == [1]
    rng = np.random.default_rng(0)
    batch = rng.uniform(-1.5, 2.0, (3, 80, 800)).astype(np.float32)
    (p,) = session.run(None, {inp.name: batch})
    assert p.shape == (3, 1)
    assert np.all((p >= 0) & (p <= 1)), "the output is already a probability"


# --- features -----------------------------------------------------------------------------


def test_mel_scale_is_slaneys() -> None:
    assert eot.hz_to_mel(np.array(1000.0)) == pytest.approx(15.0)
    assert eot.hz_to_mel(np.array(200.0)) == pytest.approx(3.0)
    assert eot.hz_to_mel(np.array(6400.0)) == pytest.approx(42.0)  # 27 mels per factor 6.4
    hz = np.array([0.0, 500.0, 999.0, 1000.0, 4321.0, 8000.0])
    assert eot.mel_to_hz(eot.hz_to_mel(hz)) == pytest.approx(hz)


def test_mel_filters_are_80_unit_area_triangles_over_201_bins() -> None:
    filters = eot.mel_filters()
    assert filters.shape == (80, 201)
    assert np.all(filters >= 0)
    peaks = filters.argmax(axis=1)
    assert np.all(np.diff(peaks) >= 0), "bands rise in frequency"
    # Slaney normalisation: each triangle has unit area in Hz; the sum over bins 40 Hz
    # apart is within 10% of that (narrow low bands fall between bins).
    assert filters.sum(axis=1) * 40.0 == pytest.approx(np.ones(80), rel=0.1)


def test_features_of_speech_are_80_by_800_within_the_8_unit_log_range() -> None:
    x = eot.features(eot.pcm_to_float(turn("Can you tell me a joke?")))
    assert x.shape == (80, 800) and x.dtype == np.float32
    assert x.max() - x.min() == pytest.approx(2.0, abs=1e-5)  # clamped at max - 8, then / 4
    assert -1.5 <= x.min() and x.max() <= 3.0
    front, back = x[:, :500], x[:, -150:]
    assert np.all(front == front[:, :1]), "the front is zero padding: the same every frame"
    assert back.mean() > front.mean() + 0.4, "the speech sits at the end of the window"


def test_features_of_silence_are_flat_at_the_floor() -> None:
    x = eot.features(np.zeros(16000, dtype=np.float32))
    assert np.all(x == pytest.approx((-10.0 + 4.0) / 4.0))


def test_features_hear_the_last_8_seconds_with_zeros_in_front() -> None:
    rng = np.random.default_rng(1)
    long = rng.normal(0, 0.1, eot.SAMPLES + 5000).astype(np.float32)
    assert np.array_equal(eot.features(long), eot.features(long[-eot.SAMPLES :]))
    short = long[:20000]
    padded = np.concatenate([np.zeros(eot.SAMPLES - short.size, dtype=np.float32), short])
    assert np.array_equal(eot.features(short), eot.features(padded))


# --- the model on clear cases --------------------------------------------------------------
# espeak-ng is not human speech and the model hears prosody: it is not reliable on every
# synthetic clip (docs/turn-detection.md lists ones it gets wrong, such as "What is the
# weather like in Paris today?" and "Do you like dogs?" heard as unfinished, and "I'd
# like to book a table for" as finished). These clips are ones it judges the same way,
# with a wide margin, over 8 differently dithered renditions and tails of 150-400 ms.


@pytest.mark.parametrize("text", ["Can you tell me a joke?", "Goodbye, see you tomorrow."])
def test_a_finished_question_scores_complete(model: TurnModel, text: str) -> None:
    assert model.probability(turn(text)) > 0.7


@pytest.mark.parametrize(
    "text", ["My sister's name is", "Could you play some music by", "My sister's name is um,"]
)
def test_a_sentence_cut_midway_scores_incomplete(model: TurnModel, text: str) -> None:
    assert model.probability(turn(text)) < 0.3


def test_the_policy_with_the_real_model_ends_a_question_and_waits_in_a_pause(
    model: TurnModel,
) -> None:
    question = EndOfTurn(model.probability).decide(turn("Can you tell me a joke?"), 200)
    assert question.end and question.reason == COMPLETE
    cut = EndOfTurn(model.probability).decide(turn("My sister's name is"), 200)
    assert not cut.end and cut.reason == INCOMPLETE


# --- the policy, with a fake model -----------------------------------------------------------


class FakeModel:
    def __init__(self, *answers: float) -> None:
        self.answers = list(answers)
        self.heard: list[bytes] = []

    def __call__(self, pcm: bytes) -> float:
        self.heard.append(pcm)
        return self.answers.pop(0)


def audio(speech_ms: int, silence_ms: float) -> bytes:
    return bytes(2 * 16 * speech_ms) + bytes(2 * int(16 * silence_ms))


@pytest.mark.parametrize(
    ("p", "silence_ms", "expected"),
    [
        (0.9, 0, Decision(False, PAUSE)),
        (0.9, 199, Decision(False, PAUSE)),
        (0.9, 200, Decision(True, COMPLETE, 0.9)),
        (0.5, 200, Decision(True, COMPLETE, 0.5)),  # the threshold itself ends the turn
        (0.49, 200, Decision(False, INCOMPLETE, 0.49)),
        (0.1, 900, Decision(False, INCOMPLETE, 0.1)),
        (0.1, 1500, Decision(True, MAX_SILENCE, None)),  # never asked in this pause
        (0.9, 5000, Decision(True, MAX_SILENCE, None)),
    ],
)
def test_decisions_for_a_probability_and_a_silence(
    p: float, silence_ms: float, expected: Decision
) -> None:
    policy = EndOfTurn(FakeModel(p), ask_after_ms=200, max_silence_ms=1500, threshold=0.5)
    assert policy.decide(audio(1000, silence_ms), silence_ms) == expected


def test_too_short_a_silence_does_not_ask_the_model() -> None:
    fake = FakeModel()
    policy = EndOfTurn(fake)
    assert policy.decide(audio(1000, 100), 100) == Decision(False, PAUSE)
    assert fake.heard == [] and policy.asked == 0


def test_the_model_is_asked_once_per_pause_then_the_maximum_ends_it() -> None:
    fake = FakeModel(0.2)
    policy = EndOfTurn(fake, ask_after_ms=200, max_silence_ms=1000)
    decisions = [policy.decide(audio(1500, ms), ms) for ms in range(0, 1100, 32)]
    assert policy.asked == 1
    assert len(fake.heard[0]) == len(audio(1500, 224)), "it hears the turn, the pause included"
    ended = [d for d in decisions if d.end]
    assert ended[0] == Decision(True, MAX_SILENCE, 0.2)
    assert decisions.index(ended[0]) == 1024 // 32, "at the first window past 1000 ms"
    assert all(d == Decision(False, INCOMPLETE, 0.2) for d in decisions[224 // 32 : 1024 // 32])


def test_speech_after_a_pause_makes_the_next_pause_a_new_question() -> None:
    fake = FakeModel(0.2, 0.8)
    policy = EndOfTurn(fake)
    assert policy.decide(audio(1000, 250), 250).reason == INCOMPLETE
    assert policy.decide(audio(1000, 400), 400).reason == INCOMPLETE
    # The speaker went on: 400 ms of pause and 600 ms more speech, then silence again.
    assert policy.decide(audio(2000, 32), 32) == Decision(False, PAUSE)
    assert policy.decide(audio(2000, 224), 224) == Decision(True, COMPLETE, 0.8)
    assert policy.asked == 2


def test_a_new_pause_is_known_without_the_calls_during_speech() -> None:
    fake = FakeModel(0.2, 0.8)
    policy = EndOfTurn(fake)
    policy.decide(audio(1000, 256), 256)
    policy.decide(audio(2000, 224), 224)  # less silence than before: a new pause
    assert policy.asked == 2


def test_only_the_last_8_seconds_may_be_passed() -> None:
    fake = FakeModel(0.2)
    policy = EndOfTurn(fake)
    for ms in range(224, 1000, 32):  # always 8 s of audio, as a VAD may keep
        policy.decide(bytes(2 * eot.SAMPLES), ms)
    assert policy.asked == 1


def test_audio_is_built_only_when_the_model_is_asked() -> None:
    built: list[int] = []

    def audio_now() -> bytes:
        built.append(1)
        return bytes(3200)

    policy = EndOfTurn(FakeModel(0.2))
    for ms in range(0, 1000, 32):
        policy.decide(audio_now, ms)
    assert built == [1]


def test_an_end_forgets_the_answer_for_the_next_turn() -> None:
    fake = FakeModel(0.9, 0.1)
    policy = EndOfTurn(fake)
    assert policy.decide(audio(1000, 200), 200).end
    assert policy.decide(audio(1000, 232), 232) == Decision(False, INCOMPLETE, 0.1)


def test_reset_forgets_the_cached_answer() -> None:
    fake = FakeModel(0.1, 0.1)
    policy = EndOfTurn(fake)
    policy.decide(audio(1000, 300), 300)
    policy.reset()
    policy.decide(audio(1000, 320), 320)
    assert policy.asked == 2


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        EndOfTurn(FakeModel(), ask_after_ms=2000, max_silence_ms=1500)
    with pytest.raises(ValueError):
        EndOfTurn(FakeModel(), ask_after_ms=-1)
    with pytest.raises(ValueError):
        EndOfTurn(FakeModel(), threshold=1.5)


def test_finding_the_model_imports_no_pipecat_module() -> None:
    code = (
        "import sys\n"
        "from processors import end_of_turn\n"
        "end_of_turn.TurnModel.load()\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'pipecat'))\n"
    )
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=root, check=True, capture_output=True, text=True
    )
    assert out.stdout.strip() == "[]"
