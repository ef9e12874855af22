"""How every Redis user of the product connects: one node or a Cluster, plain or TLS."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis.asyncio as aioredis

from streams.serving.redis_fixes import closed_transports_raise_connection_errors

# Either client runs every command the cache needs; the cluster one routes each by slot.
RedisClient = aioredis.Redis | aioredis.RedisCluster


@dataclass(frozen=True, slots=True)
class RedisTarget:
    """Where the cache lives: SEGMENTS_REDIS_URL, _CLUSTER and the _SSL_* files.

    cluster: the URL names one node of a Redis Cluster (any node; the client learns the
    others from it). TLS is the `rediss://` scheme; cafile is the CA that signed the
    server's certificate (unset: the system's), certfile and keyfile a client
    certificate for servers that ask for one.
    """

    url: str
    cluster: bool = False
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None

    @classmethod
    def of(cls, target: RedisTarget | str) -> RedisTarget:
        """A target as given, or a URL alone as a single-node target."""
        return target if isinstance(target, RedisTarget) else cls(target)

    @property
    def tls(self) -> bool:
        return urlsplit(self.url).scheme == "rediss"

    def ssl_options(self) -> dict[str, Any]:
        """redis-py's connection options for the _SSL_* files (empty without TLS)."""
        if not self.tls:
            return {}
        options: dict[str, Any] = {}
        if self.ssl_cafile is not None:
            options["ssl_ca_certs"] = str(self.ssl_cafile)
        if self.ssl_certfile is not None:
            options["ssl_certfile"] = str(self.ssl_certfile)
        if self.ssl_keyfile is not None:
            options["ssl_keyfile"] = str(self.ssl_keyfile)
        return options

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of a raw connection (the lookup's pipelined reader); None: plain."""
        if not self.tls:
            return None
        context = ssl.create_default_context(
            cafile=str(self.ssl_cafile) if self.ssl_cafile is not None else None
        )
        if self.ssl_certfile is not None:
            context.load_cert_chain(
                str(self.ssl_certfile),
                str(self.ssl_keyfile) if self.ssl_keyfile is not None else None,
            )
        return context


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
