"""The route table: the shipped pipeline by default, overrides per sender from MORGAN_ROUTES."""

from __future__ import annotations

import pydantic
import pytest

from streams.routes import SHIPPED, RouteError, Routes
from streams.settings import Settings


def test_by_default_each_message_type_goes_to_the_shipped_kind_whoever_sends_it() -> None:
    routes = Routes()
    assert routes.next_kind("gateway", "session.claim") == "vad"
    assert routes.next_kind("vad", "stt.utterance") == "stt"
    assert routes.next_kind("stt", "llm.request") == "llm"
    assert routes.next_kind("gateway", "llm.request") == "llm"
    assert routes.next_kind("llm", "tts.request") == "tts"
    assert Routes.parse("") == routes == Routes.parse(" , ")


def test_an_override_for_one_sender_inserts_a_stage_after_it_only() -> None:
    routes = Routes.parse("stt:llm.request=redact")
    assert routes.next_kind("stt", "llm.request") == "redact"
    assert routes.next_kind("gateway", "llm.request") == "llm"  # typed turns skip it
    assert routes.next_kind("redact", "llm.request") == "llm"  # its output: the default
    assert routes.next_kind("llm", "tts.request") == "tts"


def test_a_star_override_takes_every_sender_and_a_named_sender_wins_over_it() -> None:
    routes = Routes.parse("*:llm.request=redact, stt:llm.request=spellcheck")
    assert routes.next_kind("gateway", "llm.request") == "redact"
    assert routes.next_kind("stt", "llm.request") == "spellcheck"
    assert routes.next_kind("spellcheck", "llm.request") == "redact"


def test_a_kind_is_never_routed_its_own_output() -> None:
    routes = Routes.parse("*:llm.request=redact")
    assert routes.next_kind("redact", "llm.request") == "llm"
    with pytest.raises(RouteError, match="back to stt"):
        Routes.parse("stt:llm.request=stt")


def test_a_message_type_nobody_takes_has_no_route() -> None:
    with pytest.raises(RouteError, match="keyword"):
        Routes().next_kind("spotter", "keyword")
    assert Routes.parse("spotter:keyword=alerts").next_kind("spotter", "keyword") == "alerts"


@pytest.mark.parametrize(
    "text",
    [
        "stt",
        "stt:llm.request",
        "stt=redact",
        ":llm.request=redact",
        "stt:=redact",
        "stt:llm.request=",
        "stt:llm.request=redact,llm",
        "stt:llm.request=two words",
        "stt:llm.request=a.b",
        "st.t:llm.request=redact",
        "stt:llm.request=*",
    ],
)
def test_a_malformed_entry_is_a_route_error(text: str) -> None:
    with pytest.raises(RouteError):
        Routes.parse(text)


def test_the_table_lists_defaults_then_overrides_replacing_star_defaults() -> None:
    routes = Routes.parse("*:llm.request=redact,stt:llm.request=spellcheck")
    rows = routes.table()
    assert rows[: len(SHIPPED) - 1] == [
        ("*", "session.claim", "vad"),
        ("*", "stt.utterance", "stt"),
        ("*", "tts.request", "tts"),
    ]
    assert rows[len(SHIPPED) - 1 :] == [
        ("*", "llm.request", "redact"),
        ("stt", "llm.request", "spellcheck"),
    ]


def test_settings_refuse_a_malformed_route_table_naming_the_field() -> None:
    with pytest.raises(pydantic.ValidationError, match="routes"):
        Settings(routes="bad")
    assert Settings(routes="stt:llm.request=redact").routes == "stt:llm.request=redact"
