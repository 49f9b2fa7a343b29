"""Morgan's logs: one JSON object per line, or one readable line in a terminal.

Every process calls ``setup`` once, first thing in its ``__main__``; the runtime
binds the message it is handling, so each line says which session, turn and trace
it belongs to::

    logs.setup(settings, "stt", worker=logs.default_worker("stt"))
    with logs.bind(session=sid, turn=turn, trace_id=trace_id):
        log.info("transcribed %d ms", ms)

gives (one line)::

    {"timestamp": "2025-05-01T09:30:12.345678Z", "level": "INFO", "logger": "morgan.stt",
     "message": "transcribed 812 ms", "kind": "stt", "worker": "stt-gpu1-4242",
     "session": "5f0c...", "turn": "t3", "trace_id": "4bf92f35..."}

Fields with no value are left out; ``exc_info`` holds a traceback as one string.
JSON is the format when stderr is not a terminal (containers, ``morgan up``'s
children, CI) or when ``MORGAN_LOG_FORMAT=json``; a terminal, or
``MORGAN_LOG_FORMAT=text``, gets one readable line per record. ``render`` turns a
JSON line back into that readable line: ``morgan up`` uses it for its children's
output when its own stderr is a terminal. deploy/monitoring/promtail.yml reads these
fields (tests/unit/test_promtail.py feeds it lines made here).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, TextIO

from streams.settings import Settings

CONTEXT_FIELDS = ("session", "turn", "trace_id")
"""Per-message fields, set by ``bind`` (or a record's ``extra``)."""
FORMATS = ("auto", "json", "text")
"""Values of ``Settings.log_format`` (MORGAN_LOG_FORMAT)."""

_bound: ContextVar[Mapping[str, str]] = ContextVar(
    "morgan_log_context", default=MappingProxyType({})
)


@contextlib.contextmanager
def bind(
    *, session: str | None = None, turn: str | None = None, trace_id: str | None = None
) -> Iterator[None]:
    """Add these fields to every record logged inside the block, in this task and the
    tasks it starts (a ``ContextVar``: concurrent handlers never see each other's).
    Nested blocks add to the outer one; ``None`` or ``""`` leaves a field as it was."""
    given = {"session": session, "turn": turn, "trace_id": trace_id}
    fields = {**_bound.get(), **{k: v for k, v in given.items() if v}}
    token = _bound.set(fields)
    try:
        yield
    finally:
        _bound.reset(token)


def bound() -> dict[str, str]:
    """The fields ``bind`` has set here."""
    return dict(_bound.get())


def default_worker(service: str) -> str:
    """``<service>-<host>-<pid>``: the id streams/registry.py gives this process too."""
    return f"{service}-{socket.gethostname()}-{os.getpid()}"


def _timestamp(created: float) -> str:
    """ISO-8601 / RFC 3339 in UTC with microseconds: ``2025-05-01T09:30:12.345678Z``."""
    return datetime.fromtimestamp(created, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class JsonFormatter(logging.Formatter):
    """A record as one JSON object on one line (see the module docstring for the fields)."""

    def __init__(self, service: str, worker: str) -> None:
        super().__init__()
        self.service, self.worker = service, worker

    def fields(self, record: logging.LogRecord) -> dict[str, str]:
        out = {
            "timestamp": _timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "kind": self.service,
            "worker": self.worker,
            **_bound.get(),
        }
        for name in CONTEXT_FIELDS:  # log.info(..., extra={"session": sid}) wins
            value = getattr(record, name, None)
            if value:
                out[name] = str(value)
        if record.exc_info:
            out["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc_info"] = record.exc_text
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        return {k: v for k, v in out.items() if v}

    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(self.fields(record), ensure_ascii=False)


class TextFormatter(JsonFormatter):
    """A record as one readable line (plus its traceback), for a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        return _readable(self.fields(record))


def _readable(fields: Mapping[str, Any]) -> str:
    """``09:30:12.345 INFO  stt morgan.stt: message  session=... turn=...``."""
    stamp = str(fields.get("timestamp", ""))
    clock = stamp[11:23] if len(stamp) >= 23 else stamp
    level = str(fields.get("level", ""))
    head = f"{clock} {level:<7} {fields.get('kind', '')} {fields.get('logger', '')}: "
    line = head + str(fields.get("message", ""))
    tail = [f"{k}={fields[k]}" for k in CONTEXT_FIELDS if fields.get(k)]
    if tail:
        line += "  " + " ".join(tail)
    for name in ("exc_info", "stack_info"):
        if fields.get(name):
            line += "\n" + str(fields[name])
    return line


def parse(line: str) -> dict[str, Any] | None:
    """The fields of a JSON log line (one made here); None for any other line."""
    text = line.strip()
    if not text.startswith("{"):
        return None
    try:
        fields = json.loads(text)
    except ValueError:
        return None
    if not isinstance(fields, dict) or "message" not in fields or "level" not in fields:
        return None
    return fields


def render(line: str) -> str:
    """A JSON log line as the readable line a terminal gets; any other line unchanged
    (a child's print, a traceback written before logging was set up)."""
    fields = parse(line)
    if fields is None:
        return line
    return _readable(fields) + ("\n" if line.endswith("\n") else "")


def wants_text(setting: str, stream: TextIO) -> bool:
    """``text``: always readable; ``json``: always JSON; ``auto``: readable on a terminal."""
    if setting not in FORMATS:
        raise ValueError(f"log format {setting!r} is not one of {', '.join(FORMATS)}")
    if setting == "auto":
        return stream.isatty()
    return setting == "text"


def setup(
    settings: Settings,
    service: str,
    *,
    worker: str,
    human: bool | None = None,
    stream: TextIO | None = None,
) -> logging.Handler:
    """Make the root logger write every record to ``stream`` (stderr) in Morgan's format,
    at ``settings.log_level``; replaces the root's handlers, so calling it again is safe.

    ``service`` is the ``kind`` field (a processor's kind, or ``gateway``); ``human``
    forces the readable format (True) or JSON (False) whatever ``settings.log_format``
    says. Returns the handler.
    """
    out = stream if stream is not None else sys.stderr
    text = wants_text(settings.log_format, out) if human is None else human
    handler = logging.StreamHandler(out)
    formatter = TextFormatter if text else JsonFormatter
    handler.setFormatter(formatter(service, worker))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(settings.log_level.upper())
    return handler
