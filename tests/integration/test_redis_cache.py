"""The Redis cache against the real local Redis: seq-checked writes, sizes, member paging."""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid

import orjson
import pytest

from streams.serving.cache import (
    SHARDS,
    CacheWrite,
    RedisCache,
    TraitWrite,
    connect,
    customer_traits,
    shard_of,
)

pytestmark = pytest.mark.integration

REDIS_URL = os.environ.get("SEGMENTS_REDIS_URL", "redis://127.0.0.1:6379/0")


def run(coro_fn):
    """Runs coro_fn(cache) with a fresh prefix, deleting that prefix's keys afterwards."""

    async def main():
        client = connect(REDIS_URL)
        cache = RedisCache(client, prefix=f"test-{uuid.uuid4().hex[:8]}:")
        try:
            return await coro_fn(cache)
        finally:
            await cache.delete_all()
            await client.aclose()

    return asyncio.run(main())


def w(customer, segment, seq, member, since="2026-11-20T14:03:11.120Z"):
    return CacheWrite(customer, segment, seq, member, since)


def test_enter_then_lookup_and_exit_keeps_seq():
    async def body(cache):
        await cache.apply([w("c-1", "vip", 1, True, "2026-01-01T00:00:00Z")])
        assert await cache.customer_segments("c-1") == [("vip", "2026-01-01T00:00:00Z")]
        await cache.apply([w("c-1", "vip", 2, False, "2026-02-01T00:00:00Z")])
        assert await cache.customer_segments("c-1") == []
        raw = await cache.client.hget(cache.keys.customer("c-1"), "vip")
        assert raw == "2|0|2026-02-01T00:00:00Z"
        assert await cache.customer_segments("unknown") == []

    run(body)


def test_old_entered_never_resurrects_an_exit():
    async def body(cache):
        await cache.apply([w("c-1", "vip", 2, False)])
        results = await cache.apply([w("c-1", "vip", 1, True)])
        assert [r.applied for r in results] == [False]
        assert await cache.customer_segments("c-1") == []
        assert await cache.segment_sizes(["vip"]) == {"vip": 0}

    run(body)


def test_repeated_and_out_of_order_writes_converge_to_the_newest():
    async def body(cache):
        rng = random.Random(7)
        customers = [f"c-{i}" for i in range(300)]
        final: dict[tuple[str, str], int] = {}
        writes = []
        for customer in customers:
            for segment in ("vip", "win_back"):
                n = rng.randint(1, 5)
                final[(customer, segment)] = n
                # seq odd = entered, even = exited, like a real alternating history
                writes += [w(customer, segment, s, s % 2 == 1) for s in range(1, n + 1)]
        writes += rng.sample(writes, len(writes) // 2)  # repeats
        rng.shuffle(writes)
        for start in range(0, len(writes), 97):
            await cache.apply(writes[start : start + 97])
        for customer in customers:
            expected = sorted(seg for (c, seg), n in final.items() if c == customer and n % 2)
            got = [name for name, _since in await cache.customer_segments(customer)]
            assert got == expected, customer
        sizes = await cache.segment_sizes(["vip", "win_back"])
        for segment in ("vip", "win_back"):
            members = {c for (c, seg), n in final.items() if seg == segment and n % 2}
            assert sizes[segment] == len(members)
            paged, cursor, pages = [], "0", 0
            while True:
                page, cursor = await cache.members_page(segment, cursor, count=17)
                paged += page
                pages += 1
                if cursor == "0":
                    break
            assert set(paged) == members
            assert pages > 1

    run(body)


def test_segment_size_is_the_sum_of_shard_cardinalities():
    async def body(cache):
        customers = [f"cust-{i}" for i in range(200)]
        await cache.apply([w(c, "runner", 1, True) for c in customers])
        shards = {shard_of(c) for c in customers}
        assert len(shards) == SHARDS  # 200 ids spread over every shard
        total = 0
        for shard in range(SHARDS):
            total += await cache.client.scard(cache.keys.members("runner", shard))
        assert total == 200
        assert await cache.segment_sizes(["runner", "empty"]) == {"runner": 200, "empty": 0}

    run(body)


def test_keys_of_one_shard_share_a_cluster_slot():
    from redis.crc import key_slot

    async def body(cache):
        for segment in ("vip", "a:b", "x{y}"):
            for shard in range(SHARDS):
                assert key_slot(cache.keys.members(segment, shard).encode()) == key_slot(
                    cache.keys.seqs(segment, shard).encode()
                )

    run(body)


def test_applied_reports_the_previous_value_for_time_in_segment():
    async def body(cache):
        await cache.apply([w("c-9", "vip", 1, True, "2026-01-01T00:00:00Z")])
        (result,) = await cache.apply([w("c-9", "vip", 2, False, "2026-01-03T00:00:00Z")])
        assert result.applied
        assert result.previous == "1|1|2026-01-01T00:00:00Z"

    run(body)


def test_pipelined_reader_answers_concurrent_lookups_in_order_and_reconnects():
    from streams.serving.cache import PipelinedReader

    async def body(cache):
        writes = [
            w(f"c-{i}", "vip", 1, True, f"2026-01-01T00:00:{i % 60:02d}Z") for i in range(500)
        ]
        await cache.apply(writes)
        reader = PipelinedReader(REDIS_URL)
        try:
            keys = [cache.keys.customer(f"c-{i}") for i in range(500)] * 4
            replies = await asyncio.gather(*(reader.hgetall(key) for key in keys))
            for i, reply in enumerate(replies):
                assert reply == {"vip": f"1|1|2026-01-01T00:00:{i % 500 % 60:02d}Z"}
            assert await reader.hgetall(cache.keys.customer("nobody")) == {}
            # the server drops the connection: waiting requests fail, the next one reconnects
            reader_id = await reader.command(b"CLIENT", b"ID")
            await cache.client.client_kill_filter(_id=reader_id)
            for _ in range(3):
                try:
                    await reader.hgetall(cache.keys.customer("c-1"))
                    break
                except Exception:
                    continue
            assert await reader.hgetall(cache.keys.customer("c-1")) == {
                "vip": "1|1|2026-01-01T00:00:01Z"
            }
        finally:
            reader.close()

    run(body)


def test_pipelined_reader_times_out_when_redis_does_not_answer():
    """A Redis that accepts but never replies (a stalled server): the lookup fails fast."""
    from redis.exceptions import TimeoutError as RedisTimeoutError

    from streams.serving.cache import PipelinedReader

    async def main():
        async def silent(reader, writer):
            await reader.read(1 << 16)  # takes the command, never answers
            await reader.read(1 << 16)

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader = PipelinedReader(f"redis://127.0.0.1:{port}/0", timeout=0.2)
        try:
            started = time.monotonic()
            with pytest.raises(RedisTimeoutError):
                await reader.hgetall("cust:c-1")
            assert time.monotonic() - started < 2
        finally:
            reader.close()
            server.close()

    asyncio.run(main())


def test_pipelined_reader_pairs_two_commands_and_fails_the_pair_together():
    from redis.exceptions import ResponseError

    from streams.serving.cache import PipelinedReader

    async def body(cache):
        await cache.apply([w("c-1", "vip", 1, True, "2026-01-01T00:00:00Z")])
        reader = PipelinedReader(REDIS_URL)
        try:
            key, sentinel = cache.keys.customer("c-1").encode(), cache.keys.sentinel().encode()
            pairs = await asyncio.gather(
                *(reader.pair_future((b"HGETALL", key), (b"EXISTS", sentinel)) for _ in range(50))
            )
            assert set(map(repr, pairs)) == {repr((["vip", "1|1|2026-01-01T00:00:00Z"], 0))}
            await cache.client.set(cache.keys.sentinel(), "resynced")
            assert (await reader.pair_future((b"HGETALL", key), (b"EXISTS", sentinel)))[1] == 1
            # an error reply to either command fails the pair; the next pair is unaffected
            with pytest.raises(ResponseError):
                await reader.pair_future((b"NOSUCHCOMMAND",), (b"EXISTS", sentinel))
            with pytest.raises(ResponseError):
                await reader.pair_future((b"EXISTS", sentinel), (b"NOSUCHCOMMAND",))
            assert (await reader.pair_future((b"HGETALL", key), (b"EXISTS", sentinel)))[1] == 1
        finally:
            reader.close()

    run(body)


def t(customer, trait, seq, value):
    return TraitWrite(customer, trait, seq, value)


def test_trait_writes_are_seq_checked_beside_the_memberships():
    async def body(cache):
        await cache.apply([w("c-1", "vip", 1, True, "2026-01-01T00:00:00Z")])
        assert await cache.apply_traits([t("c-1", "lifecycle", 2, "loyal")]) == [True]
        # older and repeated changes are no-ops, in one pipeline or later
        assert await cache.apply_traits(
            [t("c-1", "lifecycle", 1, "new"), t("c-1", "lifecycle", 2, "other")]
        ) == [False, False]
        key = cache.keys.customer("c-1")
        assert await cache.client.hget(key, "trait:lifecycle") == '2|"loyal"'
        # a null value keeps its seq: the older value cannot come back
        assert await cache.apply_traits(
            [t("c-1", "lifecycle", 3, None), t("c-1", "lifecycle", 2, "loyal")]
        ) == [True, False]
        assert await cache.client.hget(key, "trait:lifecycle") == "3|null"
        await cache.apply_traits([t("c-1", "top_category", 1, 'a "quoted"|piped')])
        fields, _complete = await cache.customer_fields("c-1")
        assert customer_traits(fields) == {"top_category": 'a "quoted"|piped'}
        # the segment side does not see the trait fields
        assert await cache.customer_segments("c-1") == [("vip", "2026-01-01T00:00:00Z")]
        assert await cache.segment_sizes(["vip"]) == {"vip": 1}
        assert await cache.members_page("vip") == (["c-1"], "0")

    run(body)


def test_trait_writes_converge_to_the_newest_seq_in_any_order():
    async def body(cache):
        rng = random.Random(13)
        final: dict[tuple[str, str], tuple[int, str | None]] = {}
        writes = []
        for i in range(200):
            for trait in ("lifecycle", "top_category"):
                n = rng.randint(1, 6)
                values = [rng.choice(["a", "b", None]) for _ in range(n)]
                final[(f"c-{i}", trait)] = (n, values[-1])
                writes += [t(f"c-{i}", trait, s + 1, v) for s, v in enumerate(values)]
        writes += rng.sample(writes, len(writes) // 3)
        rng.shuffle(writes)
        for start in range(0, len(writes), 101):
            await cache.apply_traits(writes[start : start + 101])
        for (customer, trait), (seq, value) in final.items():
            stored = await cache.client.hget(cache.keys.customer(customer), f"trait:{trait}")
            assert stored == f"{seq}|{orjson.dumps(value).decode()}"

    run(body)
