"""Rate-limited logging for loops that must survive unexpected errors.

A loop that catches what it did not expect (``except Exception``) must say so, but
an error that repeats on every pass must not flood the log. ``LogLimit`` writes
the first line of each key, then at most one per ``every_s`` seconds; the next
line written says how many were held back in between:

    errors = LogLimit(log, every_s=60.0)
    while True:
        try:
            await step()
        except (NatsError, TimeoutError) as exc:     # expected: handled by name
            ...
        except Exception:                            # anything else: logged, limited
            errors.exception("step", "step failed")

Keys name the place (``"pull stt-cpu"``), not the message: the set of keys should
stay small. The clock is injectable for tests.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Seen:
    logged_at: float
    held_back: int = 0


class LogLimit:
    """Logs each key at most once per ``every_s`` seconds (the first time at once)."""

    def __init__(
        self,
        logger: logging.Logger,
        every_s: float = 60.0,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if every_s < 0:
            raise ValueError("every_s must be >= 0")
        self.logger = logger
        self.every_s = every_s
        self.clock = clock
        self._seen: dict[str, _Seen] = {}

    def log(self, level: int, key: str, msg: str, *args: object, exc_info: bool = False) -> bool:
        """Log ``msg % args`` at ``level`` unless ``key`` was logged within ``every_s``;
        True when the line was written. A written line ends with the count of lines
        held back since the last one (``[12 more like this in 60s]``)."""
        now = self.clock()
        seen = self._seen.get(key)
        if seen is not None and now - seen.logged_at < self.every_s:
            seen.held_back += 1
            return False
        if seen is not None and seen.held_back:
            msg = f"{msg} [{seen.held_back} more like this in {now - seen.logged_at:.0f}s]"
        self._seen[key] = _Seen(now)
        self.logger.log(level, msg, *args, exc_info=exc_info)
        return True

    def warning(self, key: str, msg: str, *args: object) -> bool:
        return self.log(logging.WARNING, key, msg, *args)

    def exception(self, key: str, msg: str, *args: object) -> bool:
        """An ERROR with the traceback of the exception being handled."""
        return self.log(logging.ERROR, key, msg, *args, exc_info=True)
