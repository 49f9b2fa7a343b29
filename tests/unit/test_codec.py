"""Every message type round-trips through the one codec; junk raises MessageError."""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import schemas
from schemas import Message, MessageError, MorganError, all_message_types, decode, encode
from schemas.codec import META_HEADER, TYPE_HEADER

SCALARS: dict[Any, st.SearchStrategy[Any]] = {
    str: st.text(max_size=40),
    int: st.integers(min_value=-(2**53), max_value=2**53),
    float: st.floats(allow_nan=False, allow_infinity=False, width=64),
    bool: st.booleans(),
    bytes: st.binary(max_size=2048),
}


def messages_of(cls: type[Message]) -> st.SearchStrategy[Message]:
    hints = typing.get_type_hints(cls)
    fields = {f.name: SCALARS[hints[f.name]] for f in dataclasses.fields(cls)}
    return st.builds(cls, **fields)


ALL = sorted(all_message_types(), key=lambda c: c.TYPE)


def test_every_exported_message_type_is_registered() -> None:
    exported = {
        obj
        for obj in vars(schemas).values()
        if isinstance(obj, type) and issubclass(obj, Message) and obj is not Message
    }
    assert exported <= set(ALL) and len(ALL) >= 14


@pytest.mark.parametrize("cls", ALL, ids=lambda c: c.TYPE)
def test_message_round_trips(cls: type[Message]) -> None:
    @settings(max_examples=60, deadline=None)
    @given(messages_of(cls))
    def check(msg: Message) -> None:
        headers, body = encode(msg)
        assert headers[TYPE_HEADER] == cls.TYPE
        assert decode(headers, body) == msg

    check()


def test_binary_messages_carry_raw_bytes_not_base64() -> None:
    pcm = bytes(range(256)) * 4
    headers, body = encode(schemas.AudioChunk("s", "u1", 0, 0, True, pcm=pcm))
    assert body == pcm
    assert "pcm" not in json.loads(headers[META_HEADER])


def test_json_messages_are_readable_json() -> None:
    _, body = encode(schemas.Transcript("s", "u1", "héllo"))
    assert json.loads(body) == {
        "sid": "s",
        "turn": "u1",
        "text": "héllo",
        "stt_ms": 0.0,
        "typed": False,
    }


@given(st.binary(max_size=200), st.sampled_from([t.TYPE for t in ALL] + ["nope", ""]))
@settings(max_examples=300, deadline=None)
def test_junk_never_decodes_to_anything_but_message_error(body: bytes, type_: str) -> None:
    for headers in (
        {TYPE_HEADER: type_},
        {TYPE_HEADER: type_, META_HEADER: body.decode("latin-1")},
    ):
        try:
            decode(headers, body)
        except MessageError as exc:
            assert exc.retryable is False and isinstance(exc, MorganError)


@pytest.mark.parametrize(
    ("headers", "body", "reason"),
    [
        (None, b"{}", "missing"),
        ({TYPE_HEADER: "nope"}, b"{}", "unknown message type"),
        ({TYPE_HEADER: "transcript"}, b"not json", "not JSON"),
        ({TYPE_HEADER: "transcript"}, b"[1]", "not an object"),
        ({TYPE_HEADER: "transcript"}, b'{"sid":"s","turn":"t"}', "text"),
        ({TYPE_HEADER: "transcript"}, b'{"sid":"s","turn":"t","text":1}', "wrong type"),
        ({TYPE_HEADER: "transcript"}, b'{"sid":"s","turn":"t","text":"","x":1}', "unknown fields"),
        ({TYPE_HEADER: "audio.chunk"}, b"\x00\x01", "not JSON"),
    ],
)
def test_malformed_input_raises_one_clear_error(
    headers: dict[str, str] | None, body: bytes, reason: str
) -> None:
    with pytest.raises(MessageError, match=reason):
        decode(headers, body)


def test_booleans_are_not_accepted_as_numbers() -> None:
    with pytest.raises(MessageError):
        decode({TYPE_HEADER: "reply.delta"}, b'{"sid":"s","turn":"t","index":true,"text":""}')
