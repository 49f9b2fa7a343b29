"""What the gateway accepts from a WebSocket client, and the error code for everything else."""

from __future__ import annotations

import json

import pytest

from gateway import protocol
from gateway.protocol import ProtocolError


def code_of(raw: str) -> str:
    with pytest.raises(ProtocolError) as info:
        protocol.parse(raw)
    return info.value.code


def test_session_start_with_the_documented_fields_is_accepted() -> None:
    msg = protocol.parse('{"type":"session.start","rate":16000,"format":"s16le","channels":1}')
    assert msg == protocol.Start()


def test_session_start_fields_default_to_16khz_s16le_mono() -> None:
    assert protocol.parse('{"type":"session.start"}') == protocol.Start()


TOKEN = "r" * 32


def test_resume_fields_are_parsed() -> None:
    raw = {
        "type": "session.start",
        "session_id": "abc",
        "resume_token": TOKEN,
        "last_event": 7,
        "last_audio": 9,
    }
    assert protocol.parse(json.dumps(raw)) == protocol.Start("abc", TOKEN, 7, 9)


def test_the_largest_cursor_is_accepted() -> None:
    raw: dict[str, object] = {"type": "session.start", "session_id": "abc", "resume_token": TOKEN}
    raw["last_event"] = raw["last_audio"] = protocol.MAX_CURSOR
    start = protocol.parse(json.dumps(raw))
    assert isinstance(start, protocol.Start) and start.last_event == 2**63 - 1


@pytest.mark.parametrize(
    "raw",
    ["not json", "[1, 2]", '"text"', "{"],
)
def test_text_that_is_not_a_json_object_is_bad_json(raw: str) -> None:
    assert code_of(raw) == "bad_json"


@pytest.mark.parametrize("raw", ['{"type":"dance"}', "{}", '{"type": 3}'])
def test_unknown_or_missing_type_is_unknown_type(raw: str) -> None:
    assert code_of(raw) == "unknown_type"


@pytest.mark.parametrize(
    "fields",
    [
        {"rate": 8000},
        {"rate": 44100},
        {"rate": "16000"},
        {"rate": True},
        {"format": "f32le"},
        {"channels": 2},
    ],
)
def test_any_audio_format_but_16khz_s16le_mono_is_refused(fields: dict[str, object]) -> None:
    assert code_of(json.dumps({"type": "session.start", **fields})) == "bad_audio_format"


@pytest.mark.parametrize(
    "fields",
    [
        {"session_id": "a.b"},
        {"session_id": ""},
        {"session_id": 5},
        {"last_event": -1},
        {"last_audio": "3"},
        {"last_event": 2**63},
        {"last_audio": 2**64 + 5},
        {"last_event": 10**4000},
        {"last_event": 1.5},
        {"last_event": True},
        {"session_id": "abc"},
        {"session_id": "abc", "resume_token": "short"},
        {"session_id": "abc", "resume_token": 12345678901234567890},
        {"session_id": "abc", "resume_token": "x" * 16 + "."},
        {"resume_token": TOKEN},
    ],
)
def test_malformed_resume_fields_are_bad_message(fields: dict[str, object]) -> None:
    assert code_of(json.dumps({"type": "session.start", **fields})) == "bad_message"


@pytest.mark.parametrize("text", ["", "   ", None, 5])
def test_empty_or_missing_text_is_bad_text(text: object) -> None:
    assert code_of(json.dumps({"type": "text", "text": text})) == "bad_text"


def test_text_with_a_lone_surrogate_is_bad_text() -> None:
    assert code_of('{"type":"text","text":"hi \\ud800 there"}') == "bad_text"


def test_an_escaped_surrogate_pair_is_ordinary_text() -> None:
    assert protocol.parse('{"type":"text","text":"\\ud83d\\ude00"}') == protocol.Text("\U0001f600")


@pytest.mark.parametrize(
    "raw",
    [
        '{"type":"sing","x":"\\udfff"}',
        '{"type":"session.start","\\ud800":1}',
        '{"type":"text","text":"ok","x":' + "[" * 1000 + "]" * 1000 + "}",
        '{"type":"text","text":"ok","x":' + "[" * 100_000 + "]" * 100_000 + "}",
        '{"type":"text","text":"ok","x":' + "[" * (protocol.MAX_DEPTH + 1) + "]" * 17 + "}",
        '{"type":"session.start","last_event":' + "7" * 5000 + "}",
        "[" * 1000,
        '"\\ud800"',
    ],
)
def test_deep_huge_or_unencodable_json_is_bad_json(raw: str) -> None:
    assert code_of(raw) == "bad_json"


def test_nesting_up_to_the_limit_is_accepted() -> None:
    deep = "[" * (protocol.MAX_DEPTH - 1) + "]" * (protocol.MAX_DEPTH - 1)
    assert protocol.parse('{"type":"cancel","x":' + deep + "}") == protocol.CancelReply()


def test_overlong_text_is_bad_text() -> None:
    raw = json.dumps({"type": "text", "text": "a" * (protocol.MAX_TEXT_CHARS + 1)})
    assert code_of(raw) == "bad_text"


def test_text_is_stripped() -> None:
    assert protocol.parse('{"type":"text","text":"  hi there "}') == protocol.Text("hi there")


def test_cancel_and_session_end_are_recognised() -> None:
    assert protocol.parse('{"type":"cancel"}') == protocol.CancelReply()
    assert protocol.parse('{"type":"session.end"}') == protocol.End()


@pytest.mark.parametrize("frame", [b"", b"\x00", b"\x00" * 3])
def test_empty_or_odd_length_frames_are_bad_frame(frame: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        protocol.check_frame(frame, 64)
    assert info.value.code == "bad_frame"


def test_frame_larger_than_the_limit_is_bad_frame() -> None:
    protocol.check_frame(b"\x00" * 64, 64)
    with pytest.raises(ProtocolError) as info:
        protocol.check_frame(b"\x00" * 66, 64)
    assert info.value.code == "bad_frame"


def test_errors_render_as_client_error_messages() -> None:
    err = ProtocolError("bad_text", "text must be a non-empty string")
    assert err.to_client() == {
        "type": "error",
        "code": "bad_text",
        "message": "text must be a non-empty string",
        "retryable": False,
    }
