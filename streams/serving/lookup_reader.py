"""The lookup's Redis reads: the pipelined reader on one node, redis-py on a Cluster."""

from __future__ import annotations

import asyncio
from typing import Any, Protocol

from streams.serving.cache import PipelinedReader
from streams.serving.redis_connection import RedisClient, RedisTarget

Command = tuple[bytes, ...]


class LookupReader(Protocol):
    """What the lookup routes need: commands as raw RESP parts, replies as Redis sends them."""

    def pair_future(self, first: Command, second: Command) -> asyncio.Future[tuple[Any, Any]]: ...

    def commands_future(self, *commands: Command) -> asyncio.Future[list[Any]]: ...

    def close(self) -> None: ...


class ClientReader:
    """The lookup's reads through a redis-py client: the reader for a Redis Cluster.

    A Cluster spreads the customer hashes over all nodes and keeps the sentinel on one:
    the lookup's HGETALL and EXISTS go to two nodes, on two connections, so the EXISTS is
    sent after the HGETALL has answered (decision 0004's order: a cache emptied before or
    during the read has no sentinel afterwards). redis-py routes by slot and follows
    MOVED/ASK after a resharding or failover. Replies take the shape of the pipelined
    reader's (HGETALL as a flat list). Does not own the client.
    """

    def __init__(self, client: RedisClient, timeout: float = 1.0) -> None:
        self.client = client
        self.timeout = timeout  # per command, as the pipelined reader's

    def pair_future(self, first: Command, second: Command) -> asyncio.Future[tuple[Any, Any]]:
        async def both() -> tuple[Any, Any]:
            return await self._run(first), await self._run(second)

        return asyncio.ensure_future(both())

    def commands_future(self, *commands: Command) -> asyncio.Future[list[Any]]:
        async def each() -> list[Any]:
            return [await self._run(command) for command in commands]

        return asyncio.ensure_future(each())

    async def _run(self, command: Command) -> Any:
        reply = await asyncio.wait_for(
            self.client.execute_command(*(part.decode() for part in command)), self.timeout
        )
        if isinstance(reply, dict):  # redis-py's HGETALL; RESP sends field, value, ...
            return [item for pair in reply.items() for item in pair]
        return reply

    def close(self) -> None:
        pass  # the client belongs to the caller


def lookup_reader(target: RedisTarget, client: RedisClient) -> LookupReader:
    """The pipelined reader for one node (redis://, rediss://), else `client` (Cluster, unix)."""
    if target.cluster or target.url.startswith("unix:"):
        return ClientReader(client)
    return PipelinedReader(target)
