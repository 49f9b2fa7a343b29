"""The reply-audio reorder buffer: (seq, chunk) order per turn, cancel, completion, resume."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from gateway.audio_order import MAX_OPEN_TURNS, AlreadySent, AudioOrder

Key = tuple[int, int, bool]


def turn_chunks(chunks_per_sentence: list[int]) -> list[Key]:
    return [
        (seq, chunk, chunk == count - 1)
        for seq, count in enumerate(chunks_per_sentence)
        for chunk in range(count)
    ]


def test_in_order_chunks_are_released_at_once() -> None:
    order: AudioOrder[str] = AudioOrder()
    assert order.add("t1", 0, 0, False, "a") == ["a"]
    assert order.add("t1", 0, 1, True, "b") == ["b"]
    assert order.add("t1", 1, 0, True, "c") == ["c"]


def test_later_sentence_waits_for_the_earlier_one() -> None:
    order: AudioOrder[str] = AudioOrder()
    assert order.add("t1", 1, 0, False, "s1c0") == []
    assert order.add("t1", 1, 1, True, "s1c1") == []
    assert order.add("t1", 0, 0, False, "s0c0") == ["s0c0"]
    assert order.add("t1", 0, 1, True, "s0c1") == ["s0c1", "s1c0", "s1c1"]


def test_next_sentence_waits_until_the_last_chunk_of_the_current_one() -> None:
    order: AudioOrder[str] = AudioOrder()
    assert order.add("t1", 1, 0, True, "s1") == []
    assert order.add("t1", 0, 0, False, "s0c0") == ["s0c0"]  # sentence 0 not over yet
    assert order.add("t1", 0, 1, True, "s0c1") == ["s0c1", "s1"]


def test_duplicates_are_dropped_whether_sent_or_waiting() -> None:
    order: AudioOrder[str] = AudioOrder()
    assert order.add("t1", 0, 0, True, "a") == ["a"]
    assert order.add("t1", 0, 0, True, "a-again") == []
    assert order.add("t1", 2, 0, True, "c") == []
    assert order.add("t1", 2, 0, True, "c-again") == []
    assert order.add("t1", 1, 0, True, "b") == ["b", "c"]


def test_turns_are_ordered_independently() -> None:
    order: AudioOrder[str] = AudioOrder()
    assert order.add("t1", 1, 0, True, "t1s1") == []
    assert order.add("t2", 0, 0, True, "t2s0") == ["t2s0"]
    assert order.add("t1", 0, 0, True, "t1s0") == ["t1s0", "t1s1"]


def test_cancel_drops_buffered_and_future_audio_and_reports_once() -> None:
    order: AudioOrder[str] = AudioOrder()
    order.add("t1", 1, 0, True, "waiting")
    assert order.cancel("t1") is True
    assert order.cancel("t1") is False
    assert order.is_cancelled("t1")
    assert order.add("t1", 0, 0, True, "late") == []
    assert order.turns == {}


def test_cancel_of_an_unseen_turn_drops_its_audio_when_it_comes() -> None:
    order: AudioOrder[str] = AudioOrder()
    assert order.cancel("t9") is True
    assert order.add("t9", 0, 0, True, "x") == []


def test_turn_is_complete_after_done_and_every_last_chunk() -> None:
    order: AudioOrder[str] = AudioOrder()
    order.add("t1", 0, 0, True, "a")
    order.done("t1", 2)
    assert not order.complete("t1")
    order.add("t1", 1, 0, True, "b")
    assert order.complete("t1")
    assert order.add("t1", 1, 0, True, "b-again") == []


def test_done_before_any_audio_and_no_sentences_is_complete() -> None:
    order: AudioOrder[str] = AudioOrder()
    order.done("t1", 0)
    assert order.complete("t1")


@given(
    sizes=st.lists(st.integers(min_value=1, max_value=4), min_size=1, max_size=6),
    seed=st.integers(min_value=0, max_value=2**32 - 1),
)
def test_any_arrival_order_releases_every_chunk_once_in_order(sizes: list[int], seed: int) -> None:
    keys = turn_chunks(sizes)
    arrival = keys + random.Random(seed).sample(keys, k=len(keys) // 2)  # with duplicates
    random.Random(seed + 1).shuffle(arrival)
    order: AudioOrder[Key] = AudioOrder()
    order.done("t", len(sizes))
    released = [k for key in arrival for k in order.add("t", *key, key)]
    assert released == keys
    assert order.complete("t")


def replay(arrival: list[Key], tracker: AlreadySent) -> list[int]:
    """Feed ``arrival`` (stream ids 1..n) as a resume would; return ids still to send."""
    order: AudioOrder[int] = AudioOrder()
    out = []
    for stream_id, (seq, chunk, last) in enumerate(arrival, start=1):
        tracker.note("t", seq, chunk, last, stream_id)
        out += [i for i in order.add("t", seq, chunk, last, stream_id) if not tracker.has(i)]
    return out


def test_resume_sends_exactly_what_the_client_missed() -> None:
    arrival: list[Key] = [(2, 0, True), (1, 0, True), (0, 0, True), (3, 0, True)]
    # live send order by stream id: 3 (s0), 2 (s1), 1 (s2), 4 (s3); the client got 3 and 2.
    missing = replay(arrival, AlreadySent(2, in_stream=True))
    assert missing == [1, 4]


def test_resume_with_no_audio_received_sends_everything() -> None:
    arrival: list[Key] = [(1, 0, True), (0, 0, True)]
    assert replay(arrival, AlreadySent(0, in_stream=False)) == [2, 1]


def test_resume_past_aged_out_audio_skips_ids_up_to_the_cursor() -> None:
    tracker = AlreadySent(5, in_stream=False)
    assert tracker.has(5) and tracker.has(1) and not tracker.has(6)


def test_audio_waiting_behind_a_missing_sentence_is_bounded_then_released_in_order() -> None:
    """Sentence 0 never comes: past the limit the turn gives up its gap and goes on from
    the earliest chunk that came, in order, instead of holding audio for ever."""
    order: AudioOrder[str] = AudioOrder(limit=3)
    assert order.add("t", 1, 0, True, "a", size=1) == []
    assert order.add("t", 2, 0, True, "b", size=1) == []
    assert order.add("t", 3, 0, True, "c", size=1) == []
    assert order.add("t", 4, 0, True, "d", size=1) == ["a", "b", "c", "d"]
    assert order.skipped == 1 and order.buffered == 0
    assert order.add("t", 5, 0, True, "e") == ["e"]


def test_at_most_max_open_turns_are_kept_and_the_oldest_is_forgotten() -> None:
    order: AudioOrder[str] = AudioOrder()
    for i in range(MAX_OPEN_TURNS + 1):
        order.add(f"t{i}", 1, 0, True, "waiting")  # seq 0 missing: each turn stays open
    assert len(order.turns) == MAX_OPEN_TURNS
    assert "t0" not in order.turns
    assert order.add("t0", 0, 0, True, "late") == []  # a forgotten turn takes nothing more
