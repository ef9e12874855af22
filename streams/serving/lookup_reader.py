"""The lookup's Redis reads: pipelined readers, one per node, routed by slot on a Cluster."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol
from urllib.parse import urlsplit

import redis.asyncio as aioredis
from redis.crc import key_slot
from redis.exceptions import RedisClusterException, ResponseError

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

    The lookup's HGETALL and EXISTS are sent one after the other, the EXISTS after the
    HGETALL has answered (decision 0004's order: a cache emptied before or during the read
    has no sentinel afterwards); on a Cluster both keys are in the customer's slot (its
    slot's sentinel), so on one node. redis-py routes by slot and follows
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


class _NoRoute(Exception):
    """The slot map is not known yet, or a node answered MOVED/ASK: redis-py takes over."""


class SlotRoutedReader:
    """A Redis Cluster read with one pipelined reader per primary, each command sent to
    the node that owns its key's slot.

    The slot map is redis-py's (the cluster client's, learnt from CLUSTER SLOTS and kept
    up to date as it follows redirections): a request that finds no map yet, or whose
    node answers MOVED or ASK (a resharding or failover), is answered through redis-py
    (ClientReader), which follows the redirection and corrects the map for the next
    ones. The lookup's two commands go as one pair when the customer's hash and the
    sentinel share a node (always with the per-slot sentinels, which are in the
    customer's slot), else one after the other (decision 0004's order).
    """

    def __init__(
        self,
        target: RedisTarget,
        client: aioredis.RedisCluster,
        timeout: float = 1.0,
        open_node: Callable[[RedisTarget], PipelinedReader] | None = None,
    ) -> None:
        self.target = target
        self.client = client
        self.fallback = ClientReader(client, timeout)
        self.open_node = open_node or (lambda node: PipelinedReader(node, timeout))
        self.nodes: dict[tuple[str, int], PipelinedReader] = {}
        self.fallbacks = 0  # requests redis-py answered (no map yet, MOVED, ASK)

    def _reader(self, command: Command) -> PipelinedReader:
        try:
            node = self.client.nodes_manager.get_node_from_slot(key_slot(command[1]))
        except (KeyError, RedisClusterException):
            raise _NoRoute from None
        address = (node.host, int(node.port))
        reader = self.nodes.get(address)
        if reader is None:
            parts = urlsplit(self.target.url)
            user = parts.netloc.rpartition("@")[0]
            netloc = f"{user}@{node.host}:{node.port}" if user else f"{node.host}:{node.port}"
            url = parts._replace(netloc=netloc, path="/0").geturl()
            reader = self.nodes[address] = self.open_node(
                replace(self.target, url=url, cluster=False)
            )
        return reader

    def pair_future(self, first: Command, second: Command) -> asyncio.Future[tuple[Any, Any]]:
        async def pair() -> tuple[Any, Any]:
            try:
                head, tail = self._reader(first), self._reader(second)
                if head is tail:
                    both: tuple[Any, Any] = await _routed(head.pair_future(first, second))
                    return both
                (one,) = await _routed(head.commands_future(first))
                (two,) = await _routed(tail.commands_future(second))
                return one, two
            except _NoRoute:
                self.fallbacks += 1
                return await self.fallback.pair_future(first, second)

        return asyncio.ensure_future(pair())

    def commands_future(self, *commands: Command) -> asyncio.Future[list[Any]]:
        async def each() -> list[Any]:
            try:
                return [
                    (await _routed(self._reader(command).commands_future(command)))[0]
                    for command in commands
                ]
            except _NoRoute:
                self.fallbacks += 1
                return await self.fallback.commands_future(*commands)

        return asyncio.ensure_future(each())

    def close(self) -> None:
        for reader in self.nodes.values():
            reader.close()


async def _routed(future: asyncio.Future[Any]) -> Any:
    """The future's result; a MOVED or ASK answer becomes _NoRoute."""
    try:
        return await future
    except ResponseError as error:
        if str(error).startswith(("MOVED ", "ASK ")):
            raise _NoRoute from error
        raise


def lookup_reader(target: RedisTarget, client: RedisClient) -> LookupReader:
    """Pipelined readers (routed by slot on a Cluster); redis-py itself for unix sockets."""
    if target.url.startswith("unix:"):
        return ClientReader(client)
    if target.cluster:
        if not isinstance(client, aioredis.RedisCluster):
            raise TypeError("a cluster target needs the cluster client connect() made for it")
        return SlotRoutedReader(target, client)
    return PipelinedReader(target)
