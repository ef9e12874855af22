"""Test helpers: waiting on a condition with a deadline instead of sleeping; a private Redis."""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
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


class PrivateRedis:
    """A redis-server of our own on a free port, so the shared one stays up."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                shutil.which("redis-server") or "redis-server",
                "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.directory), "--save", "", "--appendonly", "no",
            ],
            stdout=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            assert time.monotonic() < deadline, "private redis-server did not start"
            time.sleep(0.02)

    def stop(self, save: bool = True) -> None:
        """SHUTDOWN (SAVE keeps the data for the restart: an outage, not a flush).

        Without save the next start is empty: a snapshot an earlier stop saved is removed.
        """
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as s:
            s.sendall(b"SHUTDOWN SAVE\r\n" if save else b"SHUTDOWN NOSAVE\r\n")
        assert self.process is not None
        self.process.wait(timeout=20)
        if not save:
            (self.directory / "dump.rdb").unlink(missing_ok=True)

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
