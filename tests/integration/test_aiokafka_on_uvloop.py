"""aiokafka on uvloop (how `segments serve` runs): a connection whose transport has just
closed fails its next request with KafkaConnectionError, which aiokafka retries, never with
uvloop's RuntimeError (aio-libs/aiokafka#1038, streams/kafka/aiokafka_fixes.py)."""

from __future__ import annotations

import asyncio

import pytest
import uvloop
from aiokafka.conn import create_conn
from aiokafka.errors import KafkaConnectionError
from aiokafka.protocol.metadata import MetadataRequest

from streams.kafka.aiokafka_fixes import closed_transports_raise_connection_errors

pytestmark = pytest.mark.integration


async def _request_after_close(host: str, port: int, iterations: int) -> BaseException | None:
    """Close a live broker connection's transport, let the loop run `iterations` times
    (aiokafka notices the close only after a few), then send a request on it."""
    connection = await create_conn(host, port)
    try:
        connection._writer.transport.abort()  # the peer reset it, as a proxy or a broker may
        for _ in range(iterations):
            await asyncio.sleep(0)
        try:
            await connection.send(MetadataRequest([]))
        except Exception as error:
            return error
        return None
    finally:
        connection.close()


def test_a_request_on_a_just_closed_connection_is_a_connection_error(
    kafka_bootstrap: str,
) -> None:
    closed_transports_raise_connection_errors()
    host, port = kafka_bootstrap.split(",")[0].rsplit(":", 1)
    for iterations in range(4):  # every moment of the window in which uvloop raises
        loop = uvloop.new_event_loop()
        try:
            error = loop.run_until_complete(_request_after_close(host, int(port), iterations))
        finally:
            loop.close()
        assert isinstance(error, KafkaConnectionError), (iterations, repr(error))
