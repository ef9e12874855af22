"""A logging filter that bounds how often one repeated warning or error is written.

During a broker outage the Kafka client logs the same few errors (a refused
connection, a failed metadata update) thousands of times a second. Each
distinct message template (logger, level, format string) gets one line per
window; the next line let through says how many were held back since. A message
formatted before logging (no arguments, e.g. Faust's f-string "producer buffer
full size 117", written ten times a second while the broker is away) counts as
one template whatever numbers it holds.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections.abc import Callable

# Set on a record once a limiter has decided about it: a record goes through the
# filter of every handler, and the second handler must not count it again.
_DECISION = "_segments_rate_limited"
_NUMBER = re.compile(r"\d+")


class RepeatedMessageLimiter(logging.Filter):
    """Lets one record per (logger, level, template) through every `window` seconds.

    Records below `level` always pass: info lines are not repeated failures.
    Thread-safe (Faust's consumer logs from its own thread). `max_templates`
    bounds memory when messages are not templated (each text is its own key).
    """

    def __init__(
        self,
        window: float = 10.0,
        level: int = logging.WARNING,
        clock: Callable[[], float] = time.monotonic,
        max_templates: int = 10_000,
    ) -> None:
        super().__init__()
        self.window = window
        self.level = level
        self.clock = clock
        self.max_templates = max_templates
        self._lock = threading.Lock()
        # key -> [start of its window, records held back in it]
        self._windows: dict[tuple[str, int, str], list[float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        decided = getattr(record, _DECISION, None)
        if decided is not None:
            return bool(decided)
        passes = self._decide(record)
        setattr(record, _DECISION, passes)
        return passes

    def _decide(self, record: logging.LogRecord) -> bool:
        if record.levelno < self.level:
            return True
        template = str(record.msg)
        if not record.args:  # formatted already: the numbers in it are the arguments
            template = _NUMBER.sub("#", template)
        key = (record.name, record.levelno, template)
        now = self.clock()
        with self._lock:
            window = self._windows.get(key)
            if window is not None and now - window[0] < self.window:
                window[1] += 1
                return False
            held_back = int(window[1]) if window is not None else 0
            if window is None and len(self._windows) >= self.max_templates:
                self._forget_expired(now)
            self._windows[key] = [now, 0]
        if held_back:
            # Appended to the template, so the text must not contain a % directive.
            record.msg = f"{record.msg} [{held_back} more like this since the last one logged]"
        return True

    def _forget_expired(self, now: float) -> None:
        expired = [key for key, (start, _) in self._windows.items() if now - start >= self.window]
        for key in expired:
            del self._windows[key]
        if len(self._windows) >= self.max_templates:
            self._windows.clear()


def limit_repeated_messages(
    logger: logging.Logger, limiter: RepeatedMessageLimiter | None = None
) -> RepeatedMessageLimiter:
    """Adds one limiter to every handler of `logger` (the root logger, once logging is set up)."""
    limiter = limiter or RepeatedMessageLimiter()
    for handler in logger.handlers:
        if limiter not in handler.filters:
            handler.addFilter(limiter)
    return limiter
