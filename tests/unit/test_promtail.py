"""The shipped promtail pipeline (deploy/monitoring/promtail.yml) on real log lines made by
streams/logs.py.

No promtail binary installs from the registries this project uses, so the test runs the
pipeline's stages as promtail documents them: ``json`` evaluates each expression as
JMESPath on the line (the ``jmespath`` package, the library promtail's Go port follows),
``labels`` and ``structured_metadata`` copy extracted values, ``timestamp`` parses one
with a Go layout. A stage this test does not know fails it, so the config cannot grow a
stage that goes unchecked.
"""

from __future__ import annotations

import io
import json
import logging
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jmespath
import pytest
import yaml

from streams import logs

PROMTAIL = Path(__file__).resolve().parents[2] / "deploy" / "monitoring" / "promtail.yml"
GO_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})$"
)
"""What Go's time.Parse takes for the RFC3339 and RFC3339Nano layouts (a fraction is
accepted with either)."""
LABEL_NAME = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")


@dataclass
class Entry:
    """One log line going through the pipeline."""

    line: str
    extracted: dict[str, str] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, str] = field(default_factory=dict)
    timestamp: datetime | None = None
    """None: promtail keeps the time it read the line."""


def stages() -> list[dict[str, Any]]:
    config = yaml.safe_load(PROMTAIL.read_text())
    [job] = [job for job in config["scrape_configs"] if job["job_name"] == "docker"]
    result: list[dict[str, Any]] = job["pipeline_stages"]
    return result


def go_time(value: str, layout: str) -> datetime:
    if layout not in ("RFC3339", "RFC3339Nano"):
        raise AssertionError(f"the test parses RFC3339 layouts only, not {layout}")
    found = GO_RFC3339.match(value)
    if found is None:
        raise ValueError(f"{value!r} is not {layout}")
    year, month, day, hour, minute, second, fraction, zone = found.groups()
    micros = int((fraction or "0").ljust(9, "0")[:6])
    offset = timedelta(0)
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        offset = sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
    stamp = datetime(
        int(year), int(month), int(day), int(hour), int(minute), int(second), micros, UTC
    )
    return stamp - offset


def extracted_value(value: Any) -> str:
    """promtail keeps a JSON string as it is and any other value as its JSON text."""
    return value if isinstance(value, str) else json.dumps(value)


def run(line: str) -> Entry:
    """``line`` through every stage of the shipped pipeline."""
    entry = Entry(line)
    for stage in stages():
        [(kind, conf)] = stage.items()
        if kind == "json":
            try:
                data = json.loads(entry.line)
            except ValueError:
                continue  # promtail: "failed to unmarshal log line", stage skipped
            for name, expression in conf["expressions"].items():
                value = jmespath.search(expression or name, data)
                if value is not None:
                    entry.extracted[name] = extracted_value(value)
        elif kind in ("labels", "structured_metadata"):
            target = entry.labels if kind == "labels" else entry.metadata
            for name, source in conf.items():
                assert LABEL_NAME.match(name), f"{name!r} is no valid label name"
                value = entry.extracted.get(source or name)
                if value:
                    target[name] = value
        elif kind == "timestamp":
            value = entry.extracted.get(conf["source"])
            if value is None:
                continue
            try:
                entry.timestamp = go_time(value, conf["format"])
            except ValueError:
                assert conf.get("action_on_failure") == "skip", "fudge would invent a time"
        else:
            raise AssertionError(f"the test does not know promtail's {kind!r} stage")
    return entry


def morgan_line(
    level: int, message: str, *, service: str = "stt", exc: BaseException | None = None
) -> tuple[str, logging.LogRecord]:
    """One real log line as a Morgan process writes it (``logs.setup``'s formatter)."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logs.JsonFormatter(service, f"{service}-gpu1-4242"))
    records: list[logging.LogRecord] = []

    def keep(record: logging.LogRecord) -> bool:
        records.append(record)
        return True

    logger = logging.getLogger(f"test.promtail.{service}")
    logger.propagate = False
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    logger.addFilter(keep)
    try:
        exc_info = (type(exc), exc, exc.__traceback__) if exc is not None else None
        logger.log(level, message, exc_info=exc_info)
    finally:
        logger.removeHandler(handler)
        logger.removeFilter(keep)
    return out.getvalue(), records[0]


def test_a_handled_messages_line_gets_level_and_kind_labels_and_its_ids_as_metadata() -> None:
    with logs.bind(session="5f0c2a", turn="t3", trace_id="4bf92f3577b34da6a3ce929d0e0e4736"):
        line, record = morgan_line(logging.INFO, "transcribed 812 ms")
    assert line.count("\n") == 1
    entry = run(line.rstrip("\n"))
    assert entry.labels == {"level": "INFO", "kind": "stt"}
    assert entry.metadata == {
        "worker": "stt-gpu1-4242",
        "session": "5f0c2a",
        "turn": "t3",
        "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736",
    }
    assert entry.timestamp == datetime.fromtimestamp(record.created, UTC)


def test_an_error_with_a_traceback_is_one_line_labelled_error() -> None:
    try:
        raise RuntimeError("model crashed\nwith detail")
    except RuntimeError as exc:
        line, _ = morgan_line(logging.ERROR, "giving up", service="tts", exc=exc)
    assert line.count("\n") == 1
    entry = run(line.rstrip("\n"))
    assert entry.labels == {"level": "ERROR", "kind": "tts"}
    assert "RuntimeError: model crashed" in json.loads(line)["exc_info"]


def test_a_line_outside_any_message_has_no_session_metadata_and_keeps_its_time() -> None:
    line, record = morgan_line(logging.WARNING, "gateway ready", service="gateway")
    entry = run(line.rstrip("\n"))
    assert entry.labels == {"level": "WARNING", "kind": "gateway"}
    assert entry.metadata == {"worker": "gateway-gpu1-4242"}
    assert entry.timestamp == datetime.fromtimestamp(record.created, UTC)


def test_another_containers_plain_line_passes_through_untouched() -> None:
    entry = run("[1] 2025/05/01 09:30:12.345678 [INF] Server is ready")
    assert (entry.labels, entry.metadata, entry.timestamp) == ({}, {}, None)


def test_the_pipeline_reads_every_field_morgan_logs_except_the_free_text() -> None:
    with logs.bind(session="s", turn="t", trace_id="x"):
        line, _ = morgan_line(logging.INFO, "m")
    written = set(json.loads(line))
    [json_stage] = [s["json"] for s in stages() if "json" in s]
    read = {expr or name for name, expr in json_stage["expressions"].items()}
    assert written - read == {"message", "logger"}
    assert read <= written | {"exc_info"}


def test_per_session_values_never_become_labels() -> None:
    """One Loki stream per session or turn would swamp its index."""
    [labels] = [s["labels"] for s in stages() if "labels" in s]
    assert set(labels) == {"level", "kind"}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("2025-05-01T09:30:12.345678Z", datetime(2025, 5, 1, 9, 30, 12, 345678, UTC)),
        ("2025-05-01T11:30:12+02:00", datetime(2025, 5, 1, 9, 30, 12, 0, UTC)),
        ("2025-05-01T09:30:12.123456789Z", datetime(2025, 5, 1, 9, 30, 12, 123456, UTC)),
    ],
)
def test_the_go_layout_check_reads_rfc3339_as_go_does(value: str, expected: datetime) -> None:
    assert go_time(value, "RFC3339Nano") == expected


def test_the_go_layout_check_refuses_what_go_refuses() -> None:
    for value in ("2025-05-01 09:30:12Z", "2025-05-01T09:30:12", "09:30:12.345"):
        with pytest.raises(ValueError):
            go_time(value, "RFC3339Nano")
