from __future__ import annotations

import logging

import pytest

from streams.log_limit import LogLimit

log = logging.getLogger("morgan.test.log_limit")


def test_a_repeated_error_is_logged_once_per_interval_with_the_count_held_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [100.0]
    limit = LogLimit(log, every_s=60.0, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger=log.name):
        assert limit.warning("pull", "pull failed: %s", "boom")
        for _ in range(5):
            now[0] += 10.0
            assert not limit.warning("pull", "pull failed: %s", "boom")
        now[0] += 10.0  # 60 s after the first line
        assert limit.warning("pull", "pull failed: %s", "boom")
    assert [r.getMessage() for r in caplog.records] == [
        "pull failed: boom",
        "pull failed: boom [5 more like this in 60s]",
    ]


def test_each_key_has_its_own_interval(caplog: pytest.LogCaptureFixture) -> None:
    limit = LogLimit(log, every_s=60.0, clock=lambda: 0.0)
    with caplog.at_level(logging.WARNING, logger=log.name):
        assert limit.warning("a", "a failed")
        assert limit.warning("b", "b failed")
        assert not limit.warning("a", "a failed")
    assert [r.getMessage() for r in caplog.records] == ["a failed", "b failed"]


def test_exception_logs_an_error_with_the_traceback(caplog: pytest.LogCaptureFixture) -> None:
    limit = LogLimit(log, every_s=60.0, clock=lambda: 0.0)
    with caplog.at_level(logging.ERROR, logger=log.name):
        try:
            raise RuntimeError("unexpected")
        except RuntimeError:
            assert limit.exception("loop", "loop failed")
    [record] = caplog.records
    assert record.levelno == logging.ERROR and record.exc_info is not None
    assert record.exc_info[1] is not None and str(record.exc_info[1]) == "unexpected"


def test_a_negative_interval_is_refused() -> None:
    with pytest.raises(ValueError):
        LogLimit(log, every_s=-1.0)
