"""Cache sink and resync against real Kafka and a private real Redis that the tests stop."""

from __future__ import annotations

import asyncio
import os
import random
import time
import uuid

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from streams.kafka.connection import KafkaConnection
from streams.kafka.retry import Backoff
from streams.serving.cache import RedisCache, connect
from streams.serving.cache_sink import CacheSink
from streams.serving.resync import resync_cache
from tests.helpers import wait_for, wait_until

pytestmark = [pytest.mark.integration]

BOOTSTRAP = os.environ.get("SEGMENTS_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
OUTAGE_SECONDS = float(os.environ.get("SEGMENTS_TEST_REDIS_OUTAGE", "30"))


@pytest.fixture
def topics():
    """Fresh segment-changes and segment-memberships topics (4 partitions), deleted after."""
    from kafka.admin import KafkaAdminClient, NewTopic

    prefix = f"test-{uuid.uuid4().hex[:8]}."
    names = {"changes": prefix + "segment-changes", "memberships": prefix + "segment-memberships"}
    admin = KafkaAdminClient(bootstrap_servers=BOOTSTRAP, client_id="test-redis-sink")
    admin.create_topics(
        [
            NewTopic(names["changes"], 4, 1),
            NewTopic(names["memberships"], 4, 1, topic_configs={"cleanup.policy": "compact"}),
        ]
    )

    def led() -> bool:
        described = admin.describe_topics(list(names.values()))
        return all(
            topic["error_code"] == 0
            and len(topic["partitions"]) == 4
            and all(p["leader"] >= 0 for p in topic["partitions"])
            for topic in described
        )

    wait_until(led, 30, what="leaders for the test's topics")
    yield names
    try:
        admin.delete_topics(list(names.values()))
    finally:
        admin.close()


def change_json(customer: str, segment: str, seq: int, at: str = "2026-11-20T14:03:11.120Z"):
    kind = "entered" if seq % 2 else "exited"
    return {
        "change_id": f"{customer}:{segment}:{seq}",
        "customer_id": customer,
        "segment": segment,
        "change": kind,
        "at": at,
        "cause": "purchase",
        "event_id": None,
        "rules_version": 1,
        "seq": seq,
        "metrics": {},
    }


class History:
    """Generates per-customer alternating enter/exit histories and knows the final state."""

    def __init__(self, seed: int, customers: int, segments=("vip", "win_back", "runner")):
        self.rng = random.Random(seed)
        self.customers = [f"c-{i}" for i in range(customers)]
        self.segments = segments
        self.seq: dict[tuple[str, str], int] = {}

    def next_change(self) -> dict:
        customer = self.rng.choice(self.customers)
        segment = self.rng.choice(self.segments)
        seq = self.seq.get((customer, segment), 0) + 1
        self.seq[(customer, segment)] = seq
        return change_json(customer, segment, seq, f"2026-11-20T14:{seq % 60:02d}:00Z")

    def expected(self) -> dict[str, list[str]]:
        out: dict[str, list[str]] = {}
        for (customer, segment), seq in self.seq.items():
            if seq % 2:
                out.setdefault(customer, []).append(segment)
        return {c: sorted(s) for c, s in out.items()}


async def cache_state(cache: RedisCache, customers) -> dict[str, list[str]]:
    pipe = cache.client.pipeline(transaction=False)
    for customer in customers:
        pipe.hgetall(cache.keys.customer(customer))
    state = {}
    for customer, fields in zip(customers, await pipe.execute(), strict=True):
        segments = sorted(seg for seg, value in fields.items() if value.split("|")[1] == "1")
        if segments:
            state[customer] = segments
    return state


async def committed_everything(bootstrap: str, topic: str, group: str) -> bool:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=group)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        end = await consumer.end_offsets(tps)
        for tp in tps:
            if (await consumer.committed(tp) or 0) != end[tp]:
                return False
        return True
    finally:
        await consumer.stop()


@pytest.mark.slow
def test_redis_outage_under_load_loses_nothing(private_redis, topics):
    """Stop Redis while changes keep coming; after restart the cache equals the history."""

    async def main():
        history = History(seed=11, customers=2000)
        client = connect(private_redis.url)
        cache = RedisCache(client, prefix="p:")
        sink = CacheSink(
            cache,
            kafka=KafkaConnection(BOOTSTRAP),
            topic=topics["changes"],
            group_id=f"sink-{uuid.uuid4().hex[:6]}",
            batch_size=500,
            backoff=Backoff(first=0.05, maximum=2.0),
        )
        stop = asyncio.Event()
        sink_task = asyncio.create_task(sink.run(stop))
        producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, linger_ms=5)
        await producer.start()
        sent = 0

        async def produce(count: int, per_second: int) -> None:
            nonlocal sent
            start = time.monotonic()
            for i in range(count):
                change = history.next_change()
                await producer.send(
                    topics["changes"], orjson.dumps(change), key=change["customer_id"].encode()
                )
                sent += 1
                if i % 100 == 99:  # pace the load: about per_second changes a second
                    ahead = (i + 1) / per_second - (time.monotonic() - start)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
            await producer.flush()

        try:
            await produce(3000, per_second=2000)

            async def some_applied():
                return sink.stats.changes_applied > 0

            await wait_for(some_applied, 30, "the sink to apply the first changes")
            private_redis.stop(save=True)
            outage_started = time.monotonic()
            # Load continues during the outage: about 1000 changes a second.
            await produce(int(OUTAGE_SECONDS * 1000), per_second=1000)

            async def outage_over():
                return (
                    time.monotonic() - outage_started >= OUTAGE_SECONDS
                    and sink.stats.failed_attempts >= 3
                )

            await wait_for(outage_over, OUTAGE_SECONDS + 30, "the outage to be noticed")
            assert not sink.stats.redis_ok
            private_redis.start()
            await produce(2000, per_second=2000)
            expected = history.expected()

            async def converged():
                return await cache_state(cache, history.customers) == expected

            await wait_for(converged, 120, "the cache to equal the final memberships", 0.5)
            assert sink.stats.redis_ok

            async def committed():
                return await committed_everything(BOOTSTRAP, topics["changes"], sink.group_id)

            await wait_for(committed, 30, "all offsets committed")
            sizes = await cache.segment_sizes(history.segments)
            for segment in history.segments:
                assert sizes[segment] == sum(segment in s for s in expected.values())
        finally:
            stop.set()
            await sink_task
            await producer.stop()
            await client.aclose()

    asyncio.run(main())


def test_resync_rebuilds_a_flushed_cache_from_memberships(private_redis, topics):
    """FLUSHALL, resync from segment-memberships: the cache equals what it was."""

    async def main():
        history = History(seed=5, customers=500)
        changes = [history.next_change() for _ in range(4000)]
        client = connect(private_redis.url)
        cache = RedisCache(client, prefix="p:")
        producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, linger_ms=5)
        await producer.start()
        try:
            # What the worker publishes: the entering change per key, a tombstone on exit.
            for change in changes:
                key = f"{change['customer_id']}|{change['segment']}".encode()
                value = orjson.dumps(change) if change["change"] == "entered" else None
                await producer.send(topics["memberships"], value, key=key)
            await producer.flush()
            # The cache as the sink would have built it from the changes.
            from segments.changes import Change
            from streams.serving.cache import CacheWrite

            await cache.apply([CacheWrite.from_change(Change.from_dict(c)) for c in changes])
            before = await cache_state(cache, history.customers)
            assert before == history.expected()
            sizes_before = await cache.segment_sizes(history.segments)

            await client.flushall()
            assert await cache_state(cache, history.customers) == {}
            result = await resync_cache(
                cache, kafka=KafkaConnection(BOOTSTRAP), topic=topics["memberships"], flush=True
            )
            assert result.members == sum(len(s) for s in before.values())
            assert await cache_state(cache, history.customers) == before
            assert await cache.segment_sizes(history.segments) == sizes_before
            # the `since` of each membership survives the rebuild
            entered = {}
            for change in changes:
                if change["change"] == "entered":
                    entered[(change["customer_id"], change["segment"])] = change["at"]
            for customer, segments in before.items():
                got = await cache.customer_segments(customer)
                assert got == [(s, entered[(customer, s)]) for s in segments]
        finally:
            await producer.stop()
            await client.aclose()

    asyncio.run(main())


def test_a_redis_that_restarts_empty_is_restored_from_memberships(private_redis, topics):
    """The local Redis keeps no data across a restart: the sink notices the missing
    sentinel and rebuilds from segment-memberships, then carries on with the changes."""

    async def main():
        history = History(seed=3, customers=400)
        client = connect(private_redis.url)
        cache = RedisCache(client, prefix="p:")
        sink = CacheSink(
            cache,
            kafka=KafkaConnection(BOOTSTRAP),
            topic=topics["changes"],
            group_id=f"sink-{uuid.uuid4().hex[:6]}",
            backoff=Backoff(first=0.05, maximum=0.5),
            memberships_topic=topics["memberships"],
        )
        producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP, linger_ms=5)
        await producer.start()

        async def publish(count: int) -> None:
            """As the worker does: the change, and the membership (tombstone on exit)."""
            for _ in range(count):
                change = history.next_change()
                key = f"{change['customer_id']}|{change['segment']}".encode()
                value = orjson.dumps({**change, "since": change["at"]})
                await producer.send(
                    topics["changes"], orjson.dumps(change), key=change["customer_id"].encode()
                )
                await producer.send(
                    topics["memberships"], value if change["change"] == "entered" else None, key=key
                )
            await producer.flush()

        async def converged():
            return await cache_state(cache, history.customers) == history.expected()

        # A rebuild writes the memberships before it sets the sentinel and counts itself,
        # so the cache can equal the history a moment before `resyncs` moves: each wait
        # is for both, never for the cache alone.
        async def rebuilt(times: int):
            return sink.stats.resyncs >= times and await converged()

        stop = asyncio.Event()
        task = asyncio.create_task(sink.run(stop))
        try:
            await publish(2000)
            await wait_for(lambda: rebuilt(1), 60, "the first cache", 0.2)
            private_redis.stop(save=False)  # everything in Redis is gone
            await publish(500)

            async def noticed():
                return sink.stats.failed_attempts >= 2

            await wait_for(noticed, 30, "the sink to notice the outage")
            private_redis.start()
            await publish(500)

            await wait_for(lambda: rebuilt(2), 60, "the cache restored and caught up", 0.2)
            assert sink.stats.resyncs == 2  # the new, empty cache at start; the restart
            assert await cache.is_complete()
        finally:
            stop.set()
            await task
            await producer.stop()
            await client.aclose()

    asyncio.run(main())


def test_a_rebuild_that_cannot_read_the_topic_is_retried_and_the_cache_stays_incomplete(
    private_redis, topics, monkeypatch
):
    """No memberships topic yet: the rebuild fails, the sentinel stays missing (lookups
    answer 503), and once the topic is there the next attempt rebuilds the cache."""
    from kafka.admin import KafkaAdminClient, NewTopic

    import streams.serving.resync

    monkeypatch.setattr(streams.serving.resync, "TOPIC_METADATA_TIMEOUT_S", 1.0)
    missing = topics["memberships"] + ".later"

    async def main():
        client = connect(private_redis.url)
        cache = RedisCache(client, prefix="p:")
        sink = CacheSink(
            cache,
            kafka=KafkaConnection(BOOTSTRAP),
            topic=topics["changes"],
            group_id=f"sink-{uuid.uuid4().hex[:6]}",
            backoff=Backoff(first=0.05, maximum=0.5),
            memberships_topic=missing,
            check_every_s=0.2,
        )
        stop = asyncio.Event()
        task = asyncio.create_task(sink.run(stop))
        admin = KafkaAdminClient(bootstrap_servers=BOOTSTRAP, client_id="test-redis-sink")
        try:
            await wait_for(lambda: "not found" in sink.stats.last_error, 60, "a failed rebuild")
            assert sink.stats.resyncs == 0 and not await cache.is_complete()
            admin.create_topics([NewTopic(missing, 1, 1)])
            producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP)
            await producer.start()
            try:
                change = change_json("c-1", "vip", 1)
                await producer.send_and_wait(missing, orjson.dumps(change), key=b"c-1|vip")
            finally:
                await producer.stop()

            async def rebuilt():
                return sink.stats.resyncs == 1 and await cache.is_complete()

            await wait_for(rebuilt, 90, "the rebuild once the topic exists")
            assert await cache.customer_segments("c-1") == [("vip", change["at"])]
        finally:
            stop.set()
            await task
            await client.aclose()
            admin.delete_topics([missing])
            admin.close()

    asyncio.run(main())
