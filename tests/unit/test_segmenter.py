from __future__ import annotations

from processors.segmenter import (
    WINDOW,
    Ended,
    Event,
    Paused,
    Resumed,
    Segmenter,
    SegmenterConfig,
    Started,
)

CFG = SegmenterConfig(silence_ms=320, min_speech_ms=96, preroll_ms=64)


def run(probs: list[float], start: int = 0) -> list[Event]:
    seg = Segmenter(CFG, position=start)
    out = []
    for i, p in enumerate(probs):
        event = seg.step(start + i * WINDOW, p)
        if event is not None:
            out.append(event)
    return out


def test_silence_yields_nothing() -> None:
    assert run([0.01] * 100) == []


def test_speech_then_silence_is_one_utterance_with_preroll() -> None:
    events = run([0.0] * 10 + [0.9] * 20 + [0.0] * 20)
    assert [type(e) for e in events] == [Started, Ended]
    started, ended = events
    assert isinstance(started, Started) and isinstance(ended, Ended)
    assert started.speech_at == 10 * WINDOW
    assert started.start == 10 * WINDOW - CFG.samples(64)
    assert ended.speech_end == 30 * WINDOW
    assert ended.start == started.start
    assert ended.speech_end < ended.end <= ended.decided_at


def test_a_blip_shorter_than_min_speech_is_ignored() -> None:
    assert run([0.0] * 5 + [0.9] * 2 + [0.0] * 30) == []


def test_short_pauses_inside_speech_do_not_cut() -> None:
    events = run([0.9] * 10 + [0.0] * 5 + [0.9] * 10 + [0.0] * 20)
    assert [type(e) for e in events] == [Started, Ended]


def test_long_speech_is_cut_at_max_length() -> None:
    cfg = SegmenterConfig(max_utterance_s=1.0, min_speech_ms=64)
    seg = Segmenter(cfg)
    ends = [e for i in range(100) if isinstance(e := seg.step(i * WINDOW, 0.9), Ended)]
    assert ends and ends[0].end - ends[0].start <= cfg.rate * 1.0 + WINDOW


def test_positions_are_session_absolute() -> None:
    events = run([0.9] * 10 + [0.0] * 20, start=160_000)
    assert isinstance(events[0], Started) and events[0].speech_at == 160_000


def test_not_idle_from_the_first_speech_window_until_the_utterance_ends() -> None:
    seg = Segmenter(CFG)
    seg.step(0, 0.0)
    assert seg.idle
    seg.step(WINDOW, 0.9)  # heard, not yet confirmed: frames must be kept
    assert not seg.idle and not seg.in_speech
    for i in range(2, 6):
        seg.step(i * WINDOW, 0.9)
    assert seg.in_speech and not seg.idle
    for i in range(6, 30):
        seg.step(i * WINDOW, 0.0)
    assert seg.idle


def test_idle_safe_ack_keeps_the_pre_roll() -> None:
    seg = Segmenter(CFG, position=100 * WINDOW)
    assert seg.safe_ack == 100 * WINDOW - CFG.samples(64) - WINDOW


def test_windows_splits_any_frame_size_into_whole_windows() -> None:
    import numpy as np

    seg = Segmenter(CFG, position=1000)
    got = seg.windows(np.zeros(700, dtype=np.float32))
    got += seg.windows(np.zeros(400, dtype=np.float32))
    assert [o for o, _ in got] == [1000, 1000 + WINDOW]
    assert seg.position == 1000 + 2 * WINDOW


SPEC_CFG = SegmenterConfig(silence_ms=320, min_speech_ms=96, preroll_ms=64, speculate_ms=96)


def run_spec(probs: list[float]) -> list[object]:
    seg = Segmenter(SPEC_CFG)
    return [e for i, p in enumerate(probs) if (e := seg.step(i * WINDOW, p)) is not None]


def test_a_short_pause_is_speculated_on_once_and_the_end_keeps_its_speech_end() -> None:
    events = run_spec([0.9] * 10 + [0.0] * 20)
    assert [type(e) for e in events] == [Started, Paused, Ended]
    _, paused, ended = events
    assert isinstance(paused, Paused) and isinstance(ended, Ended)
    assert paused.speech_end == ended.speech_end == 10 * WINDOW
    assert paused.start == ended.start
    assert paused.decided_at - paused.speech_end >= SPEC_CFG.samples(96)
    assert paused.decided_at < ended.decided_at


def test_speech_after_a_speculated_pause_resumes_and_the_next_pause_speculates_again() -> None:
    events = run_spec([0.9] * 10 + [0.0] * 4 + [0.9] * 10 + [0.0] * 20)
    assert [type(e) for e in events] == [Started, Paused, Resumed, Paused, Ended]
    second, ended = events[3], events[4]
    assert isinstance(second, Paused) and isinstance(ended, Ended)
    assert second.speech_end == ended.speech_end == 24 * WINDOW


def test_speculation_off_by_default() -> None:
    assert not any(isinstance(e, Paused | Resumed) for e in run([0.9] * 10 + [0.0] * 20))


def test_pause_ms_counts_silence_inside_speech_and_end_now_cuts_there() -> None:
    seg = Segmenter(SPEC_CFG)
    for i, p in enumerate([0.9] * 10 + [0.0] * 3):
        seg.step(i * WINDOW, p)
    assert seg.pause_ms == 3 * WINDOW * 1000 / 16000
    ended = seg.end_now()
    assert ended.speech_end == 10 * WINDOW and ended.decided_at == 13 * WINDOW
    assert seg.idle and seg.pause_ms == 0.0


def test_pause_ms_is_zero_while_speaking_or_idle() -> None:
    seg = Segmenter(SPEC_CFG)
    assert seg.pause_ms == 0.0
    for i in range(10):
        seg.step(i * WINDOW, 0.9)
    assert seg.pause_ms == 0.0
