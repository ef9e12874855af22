"""The ticks that drive time-driven changes in the worker, and the wall clock.

Faust timers cannot write tables, so a timer only sends a tick message to the
ticks topic, one per owned partition with an explicit partition number; the
segment agent reads ticks in the same stream as that partition's events and
hands them to the processor. The deadline queue itself is segments.engine's.
"""

from __future__ import annotations

import time

TICK = b"{}"


def wall_now() -> int:
    """The wall clock in epoch microseconds (the shell owns time; the core is given it)."""
    return time.time_ns() // 1000
