"""streams/logs.py: JSON lines with the context of the message being handled, a readable
line for a terminal, and ``morgan up`` showing its children's JSON readably."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from morgan.supervisor import child_line
from streams import logs
from streams.settings import Settings


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@contextlib.contextmanager
def root_restored() -> Iterator[None]:
    """``setup`` replaces the root logger's handlers: put pytest's back afterwards (inside
    the test's call phase, whose capture handlers these are)."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


@contextlib.contextmanager
def logging_to(
    stream: io.StringIO, service: str = "stt", human: bool | None = None, **settings: Any
) -> Iterator[None]:
    """``logs.setup`` writing to ``stream`` for the block, then pytest's handlers back."""
    with root_restored():
        logs.setup(Settings(**settings), service, worker="w", stream=stream, human=human)
        yield


def json_lines(out: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.getvalue().splitlines()]


def test_a_record_is_one_json_line_with_time_level_logger_kind_and_worker() -> None:
    out = io.StringIO()
    with root_restored():
        logs.setup(Settings(log_format="json"), "stt", worker="stt-host-42", stream=out)
        logging.getLogger("morgan.stt").info("transcribed %d ms", 812)
    [line] = json_lines(out)
    assert line == {
        "timestamp": line["timestamp"],
        "level": "INFO",
        "logger": "morgan.stt",
        "message": "transcribed 812 ms",
        "kind": "stt",
        "worker": "stt-host-42",
    }
    stamp = datetime.strptime(line["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert abs((datetime.now(UTC) - stamp).total_seconds()) < 5


def test_setup_makes_the_root_logger_write_only_through_its_handler() -> None:
    with root_restored():
        handler = logs.setup(Settings(), "gateway", worker="w", stream=io.StringIO())
        assert logging.getLogger().handlers == [handler]
        assert logging.getLogger().level == logging.INFO


def test_bind_adds_session_turn_and_trace_id_to_every_record_in_the_block() -> None:
    out = io.StringIO()
    log = logging.getLogger("morgan.llm")
    with logging_to(out, "llm", log_format="json"):
        with logs.bind(session="s1", trace_id="4bf92f3577b34da6a3ce929d0e0e4736"):
            with logs.bind(turn="t7"):
                log.warning("slow")
            log.info("after the turn")
        log.info("outside")
    inner, after, outside = json_lines(out)
    assert (inner["session"], inner["turn"], inner["trace_id"]) == (
        "s1",
        "t7",
        "4bf92f3577b34da6a3ce929d0e0e4736",
    )
    assert after["session"] == "s1" and "turn" not in after
    assert not {"session", "turn", "trace_id"} & set(outside)


async def test_concurrent_tasks_each_log_their_own_session() -> None:
    out = io.StringIO()
    log = logging.getLogger("morgan.tts")

    async def handle(sid: str) -> None:
        with logs.bind(session=sid, turn=f"turn-of-{sid}"):
            await asyncio.sleep(0.01)  # the other task runs meanwhile
            log.info("spoke")

    with logging_to(out, "tts", log_format="json"):
        await asyncio.gather(handle("a"), handle("b"))
    assert sorted((r["session"], r["turn"]) for r in json_lines(out)) == [
        ("a", "turn-of-a"),
        ("b", "turn-of-b"),
    ]


def test_a_records_extra_names_its_session_when_no_bind_does() -> None:
    out = io.StringIO()
    with logging_to(out, "gateway", log_format="json"):
        logging.getLogger("morgan.gateway").info("closed", extra={"session": "s9"})
    assert json_lines(out)[0]["session"] == "s9"


def test_an_exception_is_one_string_field_and_the_line_stays_one_line() -> None:
    out = io.StringIO()
    with logging_to(out, "vad", log_format="json"):
        try:
            raise ValueError("bad frame\nsecond line")
        except ValueError:
            logging.getLogger("morgan.vad").exception("giving up")
    assert len(out.getvalue().splitlines()) == 1
    [line] = json_lines(out)
    assert line["level"] == "ERROR"
    assert line["exc_info"].startswith("Traceback (most recent call last):")
    assert line["exc_info"].endswith("ValueError: bad frame\nsecond line")


def test_auto_is_json_off_a_terminal_and_readable_on_one() -> None:
    pipe, tty = io.StringIO(), Tty()
    with logging_to(pipe):
        logging.getLogger("morgan.stt").info("to a pipe")
    with logging_to(tty), logs.bind(session="s1", turn="t2"):
        logging.getLogger("morgan.stt").info("to a terminal")
    assert json.loads(pipe.getvalue())["message"] == "to a pipe"
    line = tty.getvalue()
    assert line.endswith(" INFO    stt morgan.stt: to a terminal  session=s1 turn=t2\n")
    assert not line.startswith("{")


def test_the_setting_and_the_human_argument_override_the_terminal_check() -> None:
    tty, pipe = Tty(), io.StringIO()
    with logging_to(tty, log_format="json"):
        logging.getLogger("x").warning("json anyway")
    with logging_to(pipe, human=True, log_format="json"):
        logging.getLogger("x").warning("readable anyway")
    assert json.loads(tty.getvalue())["message"] == "json anyway"
    assert pipe.getvalue().rstrip().endswith("stt x: readable anyway")


def test_setup_replaces_its_handler_and_applies_the_level() -> None:
    first, second = io.StringIO(), io.StringIO()
    with root_restored():
        logs.setup(Settings(log_format="json"), "stt", worker="w", stream=first)
        settings = Settings(log_format="json", log_level="WARNING")
        logs.setup(settings, "stt", worker="w", stream=second)
        logging.getLogger("x").info("dropped")
        logging.getLogger("x").warning("kept")
    assert first.getvalue() == ""
    assert [r["message"] for r in json_lines(second)] == ["kept"]


def test_log_format_setting_comes_from_morgan_log_format_and_refuses_other_values(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MORGAN_LOG_FORMAT", "text")
    assert Settings.from_env().log_format == "text"
    monkeypatch.setenv("MORGAN_LOG_FORMAT", "yaml")
    with pytest.raises(ValueError, match="log_format"):
        Settings.from_env()


def test_render_turns_a_json_line_into_the_readable_line_and_leaves_others_alone() -> None:
    line = json.dumps(
        {
            "timestamp": "2025-05-01T09:30:12.345678Z",
            "level": "ERROR",
            "logger": "morgan.runtime",
            "message": "giving up",
            "kind": "tts",
            "worker": "w",
            "turn": "t1",
            "exc_info": "Traceback ...\nValueError: x",
        }
    )
    assert logs.render(line + "\n") == (
        "09:30:12.345 ERROR   tts morgan.runtime: giving up  turn=t1\n"
        "Traceback ...\nValueError: x\n"
    )
    for other in ("plain text\n", "{not json\n", '{"a": 1}\n', "[1, 2]\n"):
        assert logs.render(other) == other


def test_morgan_up_shows_children_readably_on_a_terminal_and_passes_json_through_otherwise() -> (
    None
):
    line = json.dumps(
        {"timestamp": "2025-05-01T09:30:12.345678Z", "level": "INFO", "logger": "morgan.runtime",
         "message": "stt ready on stt-cpu", "kind": "stt", "worker": "w"}
    ) + "\n"  # fmt: skip
    assert child_line("stt", line, readable=True) == (
        "[stt] 09:30:12.345 INFO    stt morgan.runtime: stt ready on stt-cpu\n"
    )
    assert child_line("stt", line, readable=False) == line  # a shipper parses it as it is
    assert child_line("stt", "Traceback (most recent call last):\n", readable=False) == (
        "[stt] Traceback (most recent call last):\n"
    )


def test_default_worker_is_service_host_and_pid() -> None:
    import os
    import socket

    assert logs.default_worker("gateway") == f"gateway-{socket.gethostname()}-{os.getpid()}"
