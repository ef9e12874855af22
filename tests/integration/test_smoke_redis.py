"""Smoke tests of the real local Redis: the commands the membership cache relies on work."""

from __future__ import annotations

import asyncio
import uuid

import redis
import redis.asyncio as aioredis

from tests.integration.conftest import delete_redis_keys

# The shape of SPEC section 5's scripts: apply a write only when its seq is newer.
APPLY_IF_NEWER = """
local stored = redis.call('HGET', KEYS[1], ARGV[1])
if stored and tonumber(string.match(stored, '^(%d+)|')) >= tonumber(ARGV[2]) then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2] .. '|' .. ARGV[3])
return 1
"""


def test_redis_answers_and_is_version_7_or_newer(redis_client: redis.Redis) -> None:
    assert redis_client.ping() is True
    major = int(str(redis_client.info("server")["redis_version"]).split(".")[0])
    assert major >= 7


def test_hash_write_and_lookup(redis_client: redis.Redis, redis_prefix: str) -> None:
    key = f"{redis_prefix}cust:c-42"
    redis_client.hset(key, mapping={"vip": "7|1|2026-11-20T14:03:11.120Z", "win_back": "2|0|"})

    assert redis_client.hgetall(key) == {
        b"vip": b"7|1|2026-11-20T14:03:11.120Z",
        b"win_back": b"2|0|",
    }


def test_lua_script_applies_only_newer_writes(redis_client: redis.Redis, redis_prefix: str) -> None:
    apply = redis_client.register_script(APPLY_IF_NEWER)
    key = f"{redis_prefix}cust:c-1"

    assert apply(keys=[key], args=["vip", 2, "1"]) == 1
    assert apply(keys=[key], args=["vip", 1, "0"]) == 0  # older: ignored
    assert apply(keys=[key], args=["vip", 2, "0"]) == 0  # replayed: ignored
    assert apply(keys=[key], args=["vip", 3, "0"]) == 1

    assert redis_client.hget(key, "vip") == b"3|0"


def test_pipelined_set_writes_on_hash_tagged_keys(
    redis_client: redis.Redis, redis_prefix: str
) -> None:
    members = f"{redis_prefix}segm:{{vip:3}}"
    seqs = f"{redis_prefix}segq:{{vip:3}}"
    with redis_client.pipeline(transaction=False) as pipe:
        for n in range(100):
            pipe.sadd(members, f"c-{n}")
            pipe.hset(seqs, f"c-{n}", 1)
        pipe.execute()

    assert redis_client.scard(members) == 100
    assert redis_client.hlen(seqs) == 100
    paged = set(redis_client.sscan_iter(members, count=10))
    assert paged == {f"c-{n}".encode() for n in range(100)}


def test_asyncio_client_round_trip(redis_url: str, redis_prefix: str) -> None:
    async def round_trip() -> bytes | None:
        client = aioredis.Redis.from_url(redis_url)
        try:
            await client.set(f"{redis_prefix}k", b"v")
            value: bytes | None = await client.get(f"{redis_prefix}k")
            return value
        finally:
            await client.aclose()

    assert asyncio.run(round_trip()) == b"v"


def test_key_cleanup_removes_only_the_prefix(redis_client: redis.Redis) -> None:
    mine = f"test:cleanup:{uuid.uuid4().hex[:8]}:"
    other = f"test:cleanup-other:{uuid.uuid4().hex[:8]}:"
    redis_client.mset({f"{mine}{n}": n for n in range(1200)})
    redis_client.sadd(f"{mine}segm:{{vip:0}}", "c-1")
    redis_client.set(f"{other}keep", 1)
    try:
        assert delete_redis_keys(redis_client, mine) == 1201
        assert list(redis_client.scan_iter(match=f"{mine}*")) == []
        assert redis_client.get(f"{other}keep") == b"1"
    finally:
        delete_redis_keys(redis_client, other)
        delete_redis_keys(redis_client, mine)
