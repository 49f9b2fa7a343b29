"""The out-of-tree example kinds (examples/keyword_spotter), handler by handler,
with the in-memory context: no NATS, no models."""

from __future__ import annotations

import pytest

from examples.keyword_spotter import morgan_keywords as example
from examples.keyword_spotter.morgan_keywords import Keyword
from processors.harness import MemoryContext
from schemas import LlmRequest, Transcript, decode, encode
from streams.routes import Routes
from streams.settings import Settings

WORDS = frozenset({"weather", "time"})


async def test_keywords_are_read_once_at_load_lower_case(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MORGAN_KEYWORDS", " Weather, time,,")
    assert await example.load_words(Settings(), ("cpu",)) == WORDS


async def test_a_transcript_with_listed_words_emits_each_word_once_in_spoken_order() -> None:
    ctx = MemoryContext.of(example.KEYWORDS, state=WORDS)
    await ctx.handle(Transcript("s1", "t1", "What TIME is it? Time for the weather."))
    assert ctx.emitted == [Keyword("s1", "t1", "time"), Keyword("s1", "t1", "weather")]
    assert ctx.ids == ["s1.t1.keyword.time", "s1.t1.keyword.weather"]


async def test_a_transcript_without_listed_words_emits_nothing() -> None:
    ctx = MemoryContext.of(example.KEYWORDS, state=WORDS)
    await ctx.handle(Transcript("s1", "t1", "weathering the timeline"))
    assert ctx.emitted == []


def test_the_keyword_tap_reads_transcripts_from_every_session() -> None:
    [(tier, consumer)] = example.KEYWORDS.consumers(Settings())
    assert (tier, consumer.stream, consumer.durable) == (None, "EVENTS", "keywords")
    assert consumer.filter_subjects == ("morgan.events.*.transcript",)
    assert consumer.feeds == "tap" and consumer.deliver_new


def test_an_out_of_tree_event_type_round_trips_the_codec_once_imported() -> None:
    event = Keyword("s1", "t1", "weather")
    assert decode(*encode(event)) == event
    assert event.to_client() == {"type": "keyword", "turn": "t1", "word": "weather"}


async def test_redact_hides_digits_and_forwards_the_request_to_llm() -> None:
    ctx = MemoryContext.of(example.REDACT)
    await ctx.handle(LlmRequest("s1", "t1", "my pin is 1234, call 555"))
    assert ctx.forwarded == [("llm", LlmRequest("s1", "t1", "my pin is ####, call ###"))]
    assert ctx.ids == ["s1.t1.redact"]


def test_one_route_puts_redact_between_stt_and_llm() -> None:
    routes = Routes.parse("stt:llm.request=redact")
    assert routes.next_kind("stt", "llm.request") == "redact"
    assert routes.next_kind("redact", "llm.request") == "llm"
    assert routes.next_kind("gateway", "llm.request") == "llm"  # typed turns skip it
