"""Retrying with backoff, and waiting that a stop ends early: shared by every consumer loop."""

from __future__ import annotations

import asyncio
import contextlib
import random
from dataclasses import dataclass


@dataclass
class Backoff:
    """Exponential backoff with full jitter: first, first*2, ... capped at maximum seconds."""

    first: float = 0.1
    maximum: float = 5.0
    attempt: int = 0

    def next_delay(self) -> float:
        delay = min(self.maximum, self.first * (2**self.attempt))
        self.attempt += 1
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        self.attempt = 0


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Waits `seconds` unless stop is set first; True when stopped."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()
