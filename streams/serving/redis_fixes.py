"""Work-arounds for redis-py bugs met by the serving process (uvloop); each cites its issue."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from types import TracebackType
from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError

_FIXED = "_segments_closed_transport_fix"


def closed_transports_raise_connection_errors() -> None:
    """redis/redis-py#4287 (uvloop's side: MagicStack/uvloop#506): a command written to a
    pooled connection whose peer has just closed it raises the transport's own error
    (uvloop: RuntimeError "the handler is closed") instead of ConnectionError. That error
    is neither a RedisError nor retried by redis-py, so it escaped every recovery path: in
    the fault suite a Redis connection reset stopped `segments serve`'s cache sink. The
    write now fails as a broken connection does (redis-py has already dropped the
    connection), which redis-py retries on a new one and our callers treat as Redis
    unavailable. Classified by the transport's state, not by the message. Idempotent."""
    if getattr(AbstractConnection.send_packed_command, _FIXED, False):
        return
    original = AbstractConnection.send_packed_command

    async def send_packed_command(
        self: AbstractConnection,
        command: bytes | str | Iterable[bytes],
        check_health: bool = True,
    ) -> None:
        try:
            await original(self, command, check_health)
        except (RuntimeError, TypeError, AttributeError) as error:
            if not written_to_a_closed_transport(error.__traceback__):
                raise
            raise RedisConnectionError(
                f"Error while writing to Redis: the connection was closed ({error})"
            ) from error

    setattr(send_packed_command, _FIXED, True)
    AbstractConnection.send_packed_command = send_packed_command  # type: ignore[method-assign]


def written_to_a_closed_transport(trace: TracebackType | None) -> bool:
    """True when the error was raised under a StreamWriter whose transport is closing."""
    writer: Any = None
    while trace is not None:
        candidate = trace.tb_frame.f_locals.get("self")
        if isinstance(candidate, asyncio.StreamWriter):
            writer = candidate
        trace = trace.tb_next
    return writer is not None and writer.transport.is_closing()
