"""Test helpers: waiting on a condition with a deadline instead of sleeping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

DEFAULT_TIMEOUT = 30.0


class WaitTimeout(AssertionError):
    """The condition did not hold before the deadline; says what was awaited and last seen."""


def wait_until(
    predicate: Callable[[], T],
    timeout: float = DEFAULT_TIMEOUT,
    *,
    interval: float = 0.05,
    what: str | None = None,
) -> T:
    """Calls `predicate` until it returns something truthy, and returns that value.

    Exceptions raised by the predicate count as "not yet" (the broker may still be
    electing a leader); the last one is reported if the deadline passes.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = predicate()
        except Exception as error:  # a condition that cannot be checked yet is not met
            last = error
        else:
            if result:
                return result
            last = result
        if time.monotonic() >= deadline:
            raise WaitTimeout(
                f"{what or getattr(predicate, '__name__', 'condition')} not met within "
                f"{timeout:g}s; last result: {last!r}"
            )
        time.sleep(interval)


async def wait_until_async(
    predicate: Callable[[], Awaitable[T]],
    timeout: float = DEFAULT_TIMEOUT,
    *,
    interval: float = 0.05,
    what: str | None = None,
) -> T:
    """`wait_until` for a coroutine predicate, polling without blocking the event loop."""
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = await predicate()
        except Exception as error:
            last = error
        else:
            if result:
                return result
            last = result
        if time.monotonic() >= deadline:
            raise WaitTimeout(
                f"{what or getattr(predicate, '__name__', 'condition')} not met within "
                f"{timeout:g}s; last result: {last!r}"
            )
        await asyncio.sleep(interval)


async def wait_for(
    predicate: Callable[[], T | Awaitable[T]],
    timeout: float = DEFAULT_TIMEOUT,
    what: str = "condition",
    interval: float = 0.05,
) -> T:
    """Polls a sync or async predicate from async code until it returns something truthy.

    Unlike `wait_until_async`, an exception from the predicate fails at once: these
    callers check things that are always readable (HTTP receivers, Redis keys).
    """
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return result  # type: ignore[return-value]
        if time.monotonic() > deadline:
            raise WaitTimeout(f"timed out after {timeout}s waiting for {what}; last {result!r}")
        await asyncio.sleep(interval)
