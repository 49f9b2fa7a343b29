"""gateway/turn_metrics.py: one session's time to first reply audio and turn outcomes, as
the gateway's /metrics shows them."""

from __future__ import annotations

import pytest

from gateway.metrics import Metrics
from gateway.turn_metrics import REMEMBER_FRAMES, TurnMetrics

FRAME = 320  # 20 ms at 16 kHz


def value(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def first_audio(metrics: Metrics, source: str) -> tuple[float, float]:
    """(count, sum) of ``morgan_gateway_first_audio_seconds{input=source}``."""
    name = "morgan_gateway_first_audio_seconds"
    return (
        value(metrics, f"{name}_count", input=source),
        value(metrics, f"{name}_sum", input=source),
    )


def test_speech_waits_from_when_the_frame_where_speech_ended_arrived() -> None:
    metrics = Metrics()
    turns = TurnMetrics(metrics)
    for i in range(50):  # 1 s of audio, one frame every 20 ms from t=100
        turns.heard(FRAME, 100.0 + i * 0.02)
    # speech ended at 510 ms: inside frame 25 (500-520 ms), which came at t=100.5
    turns.speech_stopped("t1", 510, now=100.9)  # the VAD said so after 400 ms of silence
    turns.started("t1")
    turns.audio_sent("t1", now=101.7)
    assert first_audio(metrics, "speech") == pytest.approx((1, 1.2))


def test_speech_ending_on_a_frame_boundary_belongs_to_the_frame_before() -> None:
    turns = TurnMetrics(Metrics())
    turns.heard(FRAME, 1.0)
    turns.heard(FRAME, 2.0)
    assert turns.received(FRAME * 1) == 1.0  # 20 ms: the last sample of frame 0
    assert turns.received(FRAME + 1) == 2.0
    assert turns.received(FRAME * 3) is None  # not heard yet


def test_without_the_frame_the_wait_starts_when_the_event_arrives() -> None:
    metrics = Metrics()
    turns = TurnMetrics(metrics)
    turns.input_end = 16000 * 600  # a resumed session: 10 minutes of earlier audio
    turns.heard(FRAME, 50.0)
    turns.speech_stopped("t1", 1000, now=50.5)  # speech from before the resume
    turns.audio_sent("t1", now=51.0)
    assert first_audio(metrics, "speech") == pytest.approx((1, 0.5))


def test_frames_are_remembered_up_to_a_bound() -> None:
    turns = TurnMetrics(Metrics())
    for i in range(REMEMBER_FRAMES + 10):
        turns.heard(FRAME, float(i))
    assert len(turns.frames) == REMEMBER_FRAMES
    assert turns.received(FRAME) is None  # the first frame is forgotten
    assert turns.received(turns.input_end) == float(REMEMBER_FRAMES + 9)


def test_typed_text_waits_from_its_receipt_and_only_the_first_chunk_counts() -> None:
    metrics = Metrics()
    turns = TurnMetrics(metrics)
    turns.typed("t1", now=10.0)
    turns.audio_sent("t1", now=10.8)
    turns.audio_sent("t1", now=11.5)
    assert first_audio(metrics, "text") == pytest.approx((1, 0.8))
    assert first_audio(metrics, "speech") == (0, 0)


def test_audio_of_a_turn_never_started_here_is_not_measured() -> None:
    metrics = Metrics()
    TurnMetrics(metrics).audio_sent("t-from-before-resume", now=3.0)
    assert first_audio(metrics, "speech") == (0, 0) and first_audio(metrics, "text") == (0, 0)


def test_each_turn_ends_once_with_its_first_outcome() -> None:
    metrics = Metrics()
    turns = TurnMetrics(metrics)
    turns.started("t1")
    turns.started("t1")  # its transcript echoes back after it was typed
    turns.ended("t1", "done")
    turns.ended("t1", "cancelled")  # a barge-in after the audio was all sent
    turns.started("t2")
    turns.ended("t2", "error")
    turns.ended("t3", "done")  # ended here, started on the connection before a resume
    turns_total = "morgan_gateway_turns_total"
    assert value(metrics, turns_total, outcome="done") == 1
    assert value(metrics, turns_total, outcome="cancelled") == 0
    assert value(metrics, turns_total, outcome="error") == 1


def test_closing_counts_unfinished_turns_abandoned_and_observes_turns_per_session() -> None:
    metrics = Metrics()
    turns = TurnMetrics(metrics)
    turns.typed("t1", now=1.0)
    turns.ended("t1", "done")
    turns.started("t2")
    turns.started("t3")
    turns.ended("t3", "cancelled")
    turns.close()
    assert value(metrics, "morgan_gateway_turns_total", outcome="abandoned") == 1
    assert value(metrics, "morgan_gateway_turns_per_session_count") == 1
    assert value(metrics, "morgan_gateway_turns_per_session_sum") == 3
    assert value(metrics, "morgan_gateway_turns_per_session_bucket", le="2.0") == 0
    assert value(metrics, "morgan_gateway_turns_per_session_bucket", le="3.0") == 1


def test_every_input_and_outcome_series_is_exported_from_the_start() -> None:
    text = Metrics().render().decode()
    for source in ("speech", "text", "rest"):
        assert f'morgan_gateway_first_audio_seconds_count{{input="{source}"}} 0.0' in text
    for outcome in ("done", "cancelled", "error", "timeout", "abandoned"):
        assert f'morgan_gateway_turns_total{{outcome="{outcome}"}} 0.0' in text
