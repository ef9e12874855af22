"""redis-py on uvloop (how `segments serve` runs): a command on a pooled connection that
Redis has just closed fails as a connection error, which redis-py retries on a new
connection, never with uvloop's RuntimeError (redis/redis-py#4287,
streams/serving/redis_fixes.py). The fault suite's dropped-connections scenario stopped
serve's cache sink with that RuntimeError."""

from __future__ import annotations

import asyncio

import pytest
import uvloop
from redis.exceptions import ConnectionError as RedisConnectionError

from streams.serving.cache import connect

pytestmark = pytest.mark.integration


async def _command_after_the_server_closed_it(url: str, iterations: int) -> object:
    """Take a connection from the pool (as a pipeline does, before its commands), reset
    it, let the loop run `iterations` times, then write a command on it."""
    client = connect(url)  # applies the work-around
    try:
        connection = await client.connection_pool.get_connection()
        try:
            await connection.send_command("PING")
            assert await connection.read_response() == "PONG"
            connection._writer.transport.abort()  # the peer reset it, as a proxy may
            for _ in range(iterations):  # every moment after the close the loop may be at
                await asyncio.sleep(0)
            try:
                await connection.send_command("PING")
                return await connection.read_response()
            except Exception as error:
                return error
        finally:
            await client.connection_pool.release(connection)
    finally:
        await client.aclose()


def test_a_command_on_a_connection_redis_closed_is_a_connection_error(redis_url: str) -> None:
    for iterations in (0, 1, 2, 5, 20):
        loop = uvloop.new_event_loop()
        try:
            outcome = loop.run_until_complete(
                _command_after_the_server_closed_it(redis_url, iterations)
            )
        finally:
            loop.close()
        assert isinstance(outcome, RedisConnectionError), (iterations, repr(outcome))
