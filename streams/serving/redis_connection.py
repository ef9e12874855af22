"""How every Redis user of the product connects: one node or a Cluster, plain or TLS."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from streams.serving.redis_fixes import closed_transports_raise_connection_errors
from streams.settings import RedisTarget

__all__ = ["RedisClient", "RedisTarget", "connect", "is_cluster"]

# Either client runs every command the cache needs; the cluster one routes each by slot.
RedisClient = aioredis.Redis | aioredis.RedisCluster


def connect(target: RedisTarget | str) -> RedisClient:
    """An asyncio client for the cache (str replies, hiredis when installed).

    A RedisCluster for a cluster target, else a Redis; TLS for `rediss://`.
    """
    target = RedisTarget.of(target)
    closed_transports_raise_connection_errors()  # redis-py on uvloop: see there
    options: dict[str, Any] = {
        "decode_responses": True,
        "health_check_interval": 0,
        **target.ssl_options(),
    }
    if target.cluster:
        cluster: aioredis.RedisCluster = aioredis.RedisCluster.from_url(target.url, **options)
        return cluster
    client: aioredis.Redis = aioredis.Redis.from_url(target.url, **options)
    return client


def is_cluster(client: Any) -> bool:
    return isinstance(client, aioredis.RedisCluster)
