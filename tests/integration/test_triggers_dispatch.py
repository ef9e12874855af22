"""Trigger dispatcher against real Kafka, real Redis and a real HTTP receiver on 127.0.0.1.

Retries use short test settings (FAST_RETRIES): the production defaults are a 1 h span,
1 s first delay, 5 min cap and 10 s timeout (docs/serving.md).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from itertools import pairwise
from pathlib import Path

import orjson
import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from segments.rules.ruleset import Trigger
from streams.kafka.connection import KafkaConnection
from streams.serving.cache import connect
from streams.serving.triggers import DispatchConfig, TriggerDispatcher
from tests.helpers import wait_for

pytestmark = pytest.mark.integration

BOOTSTRAP = os.environ.get("SEGMENTS_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
REDIS_URL = os.environ.get("SEGMENTS_REDIS_URL", "redis://127.0.0.1:6379/0")
REPO = Path(__file__).resolve().parents[2]


def iso(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def change(customer: str, segment: str, seq: int, *, at: datetime | None = None) -> dict:
    return {
        "change_id": f"{customer}:{segment}:{seq}",
        "customer_id": customer,
        "segment": segment,
        "change": "entered" if seq % 2 else "exited",
        "at": iso(at or datetime.now(UTC)),
        "cause": "time",
        "event_id": None,
        "rules_version": 1,
        "seq": seq,
        "metrics": {"days_since_last_purchase": 91},
    }


class Receiver:
    """A webhook receiver on 127.0.0.1 that records calls and can be told to fail or be slow.

    Every request is recorded in `requests` as [key, start, end] (monotonic seconds), also
    those the client gave up on: the server cancels a handler whose client disconnected.
    """

    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[tuple[str, dict, str]] = []  # answered 2xx: (path, body, key)
        self.requests: list[list] = []  # every request: [key, start, end or None]
        self.fail: dict[str, int] = {}  # change_id -> how many calls to answer 500
        self.always_fail = False
        self.slow: dict[str, int] = {}  # change_id -> how many calls to answer after `slow_s`
        self.slow_s = 0.0
        self.retry_after: dict[str, str] = {}  # change_id -> answer 503 with this Retry-After once
        self.delay = delay
        self.url = ""
        self.port = 0
        self.active = 0  # requests being handled now
        self.most_active = 0

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        key = request.headers.get("Idempotency-Key", "")
        entry = [key, time.monotonic(), None]
        self.requests.append(entry)
        self.active += 1
        self.most_active = max(self.most_active, self.active)
        try:
            if self.delay:
                await asyncio.sleep(self.delay)  # a slow receiver, not synchronisation
            if self.slow.get(key, 0) > 0:
                self.slow[key] -= 1
                await asyncio.sleep(self.slow_s)  # slower than the dispatcher's timeout
            if key in self.retry_after:
                return web.Response(status=503, headers={"Retry-After": self.retry_after.pop(key)})
            if self.always_fail or self.fail.get(key, 0) > 0:
                self.fail[key] = self.fail.get(key, 0) - 1
                return web.Response(status=500)
            self.calls.append((request.path, body, key))
            return web.Response(status=204)
        finally:
            self.active -= 1
            entry[2] = time.monotonic()

    async def __aenter__(self) -> Receiver:
        await self.up()
        self.url = f"http://127.0.0.1:{self.port}"
        return self

    async def up(self) -> None:
        """Listens (again, on the same port after `down`)."""
        app = web.Application()
        app.router.add_post("/hooks/{name}", self.handle)
        self.runner = web.AppRunner(app, handler_cancellation=True)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", self.port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        """Closes the port and every connection: calls fail with connection refused."""
        await self.runner.cleanup()

    async def __aexit__(self, *exc) -> None:
        await self.runner.cleanup()

    def keys(self) -> list[str]:
        return [key for _path, _body, key in self.calls]

    def attempts(self, key: str) -> list[tuple[float, float]]:
        return [(start, end) for k, start, end in self.requests if k == key]


@pytest.fixture
def names():
    from kafka.admin import KafkaAdminClient, NewTopic

    prefix = f"test-{uuid.uuid4().hex[:8]}."
    topics = {
        "prefix": prefix,
        "changes": prefix + "segment-changes",
        "dlq": prefix + "triggers.dlq",
    }
    admin = KafkaAdminClient(bootstrap_servers=BOOTSTRAP, client_id="test-triggers")
    admin.create_topics([NewTopic(topics["changes"], 2, 1)])
    yield topics
    try:
        existing = set(admin.list_topics())
        admin.delete_topics([t for t in (topics["changes"], topics["dlq"]) if t in existing])
    finally:
        admin.close()
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


async def send(topic: str, changes: list[dict]) -> list[tuple[int, int]]:
    """Publishes the changes; returns the (partition, offset) of each."""
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP)
    await producer.start()
    try:
        sent = [
            await producer.send(topic, orjson.dumps(item), key=item["customer_id"].encode())
            for item in changes
        ]
        metadata = [await result for result in sent]
        return [(record.partition, record.offset) for record in metadata]
    finally:
        await producer.stop()


async def committed(names) -> dict[int, int]:
    """The dispatcher group's committed offset per partition of the changes topic."""
    consumer = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP, group_id=names["prefix"] + "triggers")
    await consumer.start()
    try:
        out = {}
        for partition in (0, 1):
            offset = await consumer.committed(TopicPartition(names["changes"], partition))
            out[partition] = offset if offset is not None else -1
        return out
    finally:
        await consumer.stop()


async def end_offsets(names) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP)
    await consumer.start()
    try:
        tps = [TopicPartition(names["changes"], partition) for partition in (0, 1)]
        return {tp.partition: offset for tp, offset in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()


async def read_dlq(topic: str) -> list[dict]:
    consumer = AIOKafkaConsumer(bootstrap_servers=BOOTSTRAP, enable_auto_commit=False)
    await consumer.start()
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            await consumer._client.force_metadata_update()
            partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in partitions]
        if not tps:
            return []
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        out = []

        async def behind() -> bool:
            return any([await consumer.position(tp) < end[tp] for tp in tps])

        while await behind():
            for records in (await consumer.getmany(timeout_ms=500)).values():
                out += [orjson.loads(r.value) for r in records]
        return out
    finally:
        await consumer.stop()


# Short retries for tests: the first delay bound 0.05 s doubling to 0.5 s, over 30 s.
FAST_RETRIES = {"retry_first_s": 0.05, "retry_max_delay_s": 0.5, "retry_span_s": 30.0}


class Running:
    """A dispatcher running in this event loop until the block ends."""

    def __init__(self, names, triggers, **config) -> None:
        self.client = connect(REDIS_URL)
        self.dispatcher = TriggerDispatcher(
            self.client,
            triggers,
            kafka=KafkaConnection(BOOTSTRAP),
            topic=names["changes"],
            dlq_topic=names["dlq"],
            group_id=names["prefix"] + "triggers",
            redis_prefix=names["prefix"],
            config=DispatchConfig(**{**FAST_RETRIES, **config}),
        )
        self.stop = asyncio.Event()

    async def __aenter__(self) -> TriggerDispatcher:
        self.task = asyncio.create_task(self.dispatcher.run(self.stop))
        ready = asyncio.create_task(self.dispatcher.ready.wait())
        done, _ = await asyncio.wait({self.task, ready}, timeout=60, return_when="FIRST_COMPLETED")
        if self.task in done:
            self.task.result()  # raises what stopped it
        assert ready in done, "dispatcher never got its partitions"
        return self.dispatcher

    async def __aexit__(self, *exc) -> None:
        self.stop.set()
        await self.task
        await self.client.aclose()


def winback(url: str, **kw) -> Trigger:
    return Trigger("winback-email", "win_back", "entered", f"{url}/hooks/winback", **kw)


def test_fires_once_per_matching_change_with_idempotency_key(names):
    async def main():
        async with Receiver() as receiver, Running(names, [winback(receiver.url)]) as dispatcher:
            sent = [
                change("c-1", "win_back", 1),
                change("c-2", "win_back", 1),
                change("c-1", "win_back", 2),  # exited: no trigger on exit
                change("c-3", "vip", 1),  # other segment
                change("c-2", "win_back", 1),  # the same change published twice
            ]
            await send(names["changes"], sent)
            await wait_for(lambda: dispatcher.stats.skipped.get("already-done"), 30, "dedupe")
            assert sorted(receiver.keys()) == ["c-1:win_back:1", "c-2:win_back:1"]
            path, body, _key = receiver.calls[0]
            assert path == "/hooks/winback"
            assert body["trigger"] == "winback-email"
            assert body["segment"] == "win_back"
            assert body["metrics"] == {"days_since_last_purchase": 91}
            assert set(body) >= {"customer_id", "segment", "change_id", "at", "metrics"}

    asyncio.run(main())


def test_a_receiver_down_for_a_while_gets_every_call_when_it_is_back(names):
    """Defect 8: 6 attempts over about 15 s dead-lettered every call to a receiver that was
    down for 60 s. Now calls are retried over the span and delivered when it is back."""

    async def main():
        async with Receiver() as receiver, Running(names, [winback(receiver.url)]) as dispatcher:
            await receiver.down()
            down_at = time.monotonic()
            sent = [change(f"c-{i}", "win_back", 1) for i in range(10)]
            await send(names["changes"], sent)
            # down for several seconds, long enough for each call to fail a few times
            await wait_for(
                lambda: dispatcher.stats.failed_attempts >= 40 and time.monotonic() - down_at >= 5,
                60,
                "several seconds of failed attempts",
            )
            assert dispatcher.stats.dead == 0
            await receiver.up()
            await wait_for(lambda: len(receiver.keys()) == 10, 30, "every call after the outage")
            assert sorted(receiver.keys()) == sorted(c["change_id"] for c in sent)
            assert dispatcher.stats.dead == 0

            async def all_committed():
                return await committed(names) == await end_offsets(names)

            await wait_for(all_committed, 30, "the offsets committed once delivered")
        assert await read_dlq(names["dlq"]) == []

    asyncio.run(main())


def test_a_receiver_slower_than_the_timeout_is_not_flooded(names):
    """Each call's attempts never overlap (the next one starts after the last timed out and
    a wait of at least the timeout), and the calls are delivered once it answers in time."""

    async def main():
        timeout = 0.5
        async with Receiver() as receiver:
            receiver.slow_s = 30.0  # far slower than the timeout; cancelled when abandoned
            sent = [change(f"c-{i}", "win_back", 1) for i in range(6)]
            for item in sent:
                receiver.slow[item["change_id"]] = 3  # three slow answers, then a fast one
            async with Running(
                names, [winback(receiver.url)], timeout_s=timeout, concurrency=2
            ) as dispatcher:
                await send(names["changes"], sent)
                await wait_for(lambda: len(set(receiver.keys())) == 6, 60, "every call, at last")
                assert dispatcher.stats.dead == 0
        for item in sent:
            attempts = receiver.attempts(item["change_id"])
            assert len(attempts) >= 4, attempts  # 3 slow ones, then (under load) 1 or more
            for (start, end), (next_start, _end) in pairwise(attempts):
                assert end is not None and end <= next_start, "an attempt overlapped the last"
                # timed out after `timeout`, then waited at least `timeout` (less what the
                # first request took to reach the receiver: 0.25 s of slack under load)
                assert next_start - start >= 2 * timeout - 0.25, "retried too soon"
        assert await read_dlq(names["dlq"]) == []

    asyncio.run(main())


def test_calls_in_flight_to_one_webhook_are_bounded(names):
    async def main():
        async with (
            Receiver(delay=0.3) as receiver,
            Running(names, [winback(receiver.url)], concurrency=3) as dispatcher,
        ):
            await send(names["changes"], [change(f"c-{i}", "win_back", 1) for i in range(15)])
            await wait_for(lambda: len(receiver.keys()) == 15, 60, "every call")
            assert receiver.most_active == 3
            assert dispatcher.stats.failed_attempts == 0

    asyncio.run(main())


def test_after_the_retry_span_the_call_is_dead_lettered_with_its_reason(names):
    async def main():
        span = 1.5
        async with (
            Receiver() as receiver,
            Running(names, [winback(receiver.url)], retry_span_s=span) as dispatcher,
        ):
            receiver.fail["c-1:win_back:1"] = 2  # two 500s, then success
            await send(names["changes"], [change("c-1", "win_back", 1)])
            await wait_for(lambda: receiver.keys() == ["c-1:win_back:1"], 30, "a retried call")
            receiver.always_fail = True
            await send(names["changes"], [change("c-2", "win_back", 1)])
            await wait_for(lambda: dispatcher.stats.dead == 1, 30, "a dead letter")
            (dead,) = await read_dlq(names["dlq"])
            assert dead["reason"] == "http-500"
            assert dead["change"]["change_id"] == "c-2:win_back:1"
            assert dead["dead_at"] - dead["first_attempt_at"] >= span - 0.01
            attempts = receiver.attempts("c-2:win_back:1")  # each with the same key
            assert dead["attempts"] == len(attempts) >= 3
            assert attempts[-1][0] - attempts[0][0] >= span - 0.5  # the last at the span's end
            assert receiver.keys() == ["c-1:win_back:1"]

    asyncio.run(main())


def test_retry_after_is_honoured_and_one_past_the_span_dead_letters_at_once(names):
    async def main():
        async with (
            Receiver() as receiver,
            Running(names, [winback(receiver.url)], retry_span_s=10.0) as dispatcher,
        ):
            receiver.retry_after["c-1:win_back:1"] = "1"
            receiver.retry_after["c-2:win_back:1"] = "3600"
            await send(
                names["changes"], [change("c-1", "win_back", 1), change("c-2", "win_back", 1)]
            )
            await wait_for(lambda: receiver.keys() == ["c-1:win_back:1"], 30, "the retried call")
            (first, _), (second, _) = receiver.attempts("c-1:win_back:1")
            assert second - first >= 1.0
            await wait_for(lambda: dispatcher.stats.dead == 1, 30, "the dead letter")
            (dead,) = await read_dlq(names["dlq"])
            assert (dead["reason"], dead["attempts"]) == ("http-503", 1)

    asyncio.run(main())


def test_a_failing_call_holds_back_its_offset_but_no_other_call(names):
    """Other customers' calls go on while one is retried; its partition commits no further
    than that change, so a restart would redeliver it; once delivered, all is committed."""

    async def main():
        async with Receiver() as receiver, Running(names, [winback(receiver.url)]) as dispatcher:
            receiver.fail["c-stuck:win_back:1"] = 10**9
            ((stuck_partition, stuck_offset),) = await send(
                names["changes"], [change("c-stuck", "win_back", 1)]
            )
            others = [change(f"c-{i}", "win_back", 1) for i in range(20)]
            await send(names["changes"], others)
            await wait_for(lambda: len(receiver.keys()) == 20, 30, "the other customers' calls")
            assert dispatcher.stats.failed_attempts >= 1 and dispatcher.stats.dead == 0
            ends = await end_offsets(names)
            other_partition = 1 - stuck_partition

            async def others_committed():
                offsets = await committed(names)
                return offsets[other_partition] == ends[other_partition] and offsets

            offsets = await wait_for(others_committed, 30, "the other partition committed")
            assert offsets[stuck_partition] <= stuck_offset
            assert ends[stuck_partition] > stuck_offset + 1, "test needs changes behind it"
            receiver.fail.clear()
            await wait_for(
                lambda: "c-stuck:win_back:1" in set(receiver.keys()), 30, "the stuck call"
            )

            async def all_committed():
                return await committed(names) == ends

            await wait_for(all_committed, 30, "every offset committed")
            assert dispatcher.stats.dead == 0

    asyncio.run(main())


def test_fetching_pauses_while_max_pending_changes_are_unfinished(names):
    async def main():
        async with (
            Receiver() as receiver,
            Running(names, [winback(receiver.url)], max_pending=2) as dispatcher,
        ):
            receiver.fail = {"c-1:win_back:1": 10**9, "c-2:win_back:1": 10**9}
            await send(names["changes"], [change("c-1", "win_back", 1)])
            await send(names["changes"], [change("c-2", "win_back", 1)])
            await wait_for(lambda: dispatcher.stats.failed_attempts >= 2, 30, "two in retry")
            await send(names["changes"], [change("c-3", "win_back", 1)])
            # many retries of the two give the dispatcher many polls in which not to fetch
            await wait_for(lambda: dispatcher.stats.failed_attempts >= 30, 30, "more retries")
            assert receiver.attempts("c-3:win_back:1") == []
            receiver.fail.clear()
            await wait_for(lambda: len(receiver.keys()) == 3, 30, "every call once unpaused")
            assert receiver.keys()[0] != "c-3:win_back:1"  # fetched once one had finished
            assert dispatcher.stats.dead == 0

    asyncio.run(main())


def test_a_stop_during_retries_leaves_the_change_to_the_next_run(names):
    async def main():
        async with Receiver() as receiver:
            receiver.always_fail = True
            async with Running(names, [winback(receiver.url)]) as dispatcher:
                ((partition, offset),) = await send(
                    names["changes"], [change("c-1", "win_back", 1)]
                )
                await wait_for(lambda: dispatcher.stats.failed_attempts >= 2, 30, "two failures")
            assert (await committed(names))[partition] <= offset  # not committed: redelivered
            receiver.always_fail = False
            async with Running(names, [winback(receiver.url)]) as again:
                await wait_for(lambda: receiver.keys() == ["c-1:win_back:1"], 30, "the retry")
                assert (again.stats.fired, again.stats.resumed, again.stats.dead) == (1, 1, 0)
            assert {key for key, _start, _end in receiver.requests} == {"c-1:win_back:1"}
        assert await read_dlq(names["dlq"]) == []

    asyncio.run(main())


def test_a_rebalance_hands_calls_in_retry_over_without_overlap(names):
    """A second dispatcher joins the group while calls are retried: the revoked ones are
    taken over by the new owner, never called by both at once, and all are delivered."""

    async def main():
        async with Receiver(delay=0.2) as receiver:  # each call takes a while: overlaps show
            receiver.always_fail = True
            sent = [change(f"c-{i}", "win_back", 1) for i in range(20)]
            async with Running(names, [winback(receiver.url)]) as first:
                await send(names["changes"], sent)
                await wait_for(lambda: first.stats.failed_attempts >= 40, 30, "calls in retry")
                async with Running(names, [winback(receiver.url)]) as second:
                    receiver.always_fail = False
                    await wait_for(lambda: len(set(receiver.keys())) == 20, 60, "every call")
                    assert second.stats.resumed >= 1  # it took pending calls over
                    assert first.stats.dead == second.stats.dead == 0
        for item in sent:
            attempts = sorted(receiver.attempts(item["change_id"]))
            for (_start, end), (next_start, _end) in pairwise(attempts):
                assert end is not None and end <= next_start, "two dispatchers called at once"

    asyncio.run(main())


@pytest.mark.slow
def test_a_killed_dispatcher_loses_no_call(names, tmp_path):
    """SIGKILL the dispatcher process while calls fail and are retried, restart it with the
    receiver healthy: every change is delivered, none is dead-lettered, and only the calls
    in flight at the kill are made twice (with the same Idempotency-Key)."""

    async def main():
        async with Receiver(delay=0.005) as receiver:
            rules = tmp_path / "rules.yaml"
            rules.write_text(
                "version: 1\nbase_currency: EUR\nsegments:\n"
                "  - name: win_back\n    when: days_since_last_purchase() > 90\n"
                "triggers:\n  - name: winback-email\n    segment: win_back\n"
                f"    on: entered\n    webhook: {receiver.url}/hooks/winback\n"
            )
            concurrency = 8
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("SEGMENTS_")},
                "SEGMENTS_KAFKA_BOOTSTRAP": BOOTSTRAP,
                "SEGMENTS_REDIS_URL": REDIS_URL,
                "SEGMENTS_TOPIC_PREFIX": names["prefix"],
                "SEGMENTS_REDIS_PREFIX": names["prefix"],
                "SEGMENTS_APP_ID": names["prefix"] + "app",
                "SEGMENTS_RULES": str(rules),
                "SEGMENTS_TRIGGER_RETRY_DELAY": "50ms",
                "SEGMENTS_TRIGGER_RETRY_MAX_DELAY": "500ms",
                "SEGMENTS_TRIGGER_RETRY_SPAN": "5m",
                "SEGMENTS_TRIGGER_CONCURRENCY": str(concurrency),
            }
            command = [sys.executable, "-m", "streams", "triggers"]

            drains: list[asyncio.Task] = []

            async def start() -> asyncio.subprocess.Process:
                process = await asyncio.create_subprocess_exec(
                    *command, env=env, cwd=tmp_path, stderr=asyncio.subprocess.PIPE
                )
                while True:  # wait for "triggers_ready" (bounded by the outer timeout)
                    line = await asyncio.wait_for(process.stderr.readline(), 60)
                    assert line, "dispatcher exited before it was ready"
                    if b"triggers_ready" in line:
                        break
                drains.append(asyncio.create_task(process.stderr.read()))  # keep draining
                return process

            first = await start()
            total = 1500
            changes = [change(f"c-{i}", "win_back", 1) for i in range(total)]
            await send(names["changes"], changes)
            await wait_for(lambda: len(receiver.calls) >= 200, 60, "some calls before the outage")
            receiver.always_fail = True  # the receiver fails: calls are being retried
            failing_from = len(receiver.requests)
            await wait_for(
                lambda: len(receiver.requests) - failing_from >= 100, 60, "calls in retry"
            )
            first.send_signal(signal.SIGKILL)
            await first.wait()
            assert len(set(receiver.keys())) < total, "the kill came too late to test anything"
            receiver.always_fail = False

            second = await start()
            try:
                await wait_for(
                    lambda: len(set(receiver.keys())) == total, 120, "every change delivered"
                )
            finally:
                second.send_signal(signal.SIGTERM)
                await asyncio.wait_for(second.wait(), 30)
            assert await read_dlq(names["dlq"]) == []
            keys = receiver.keys()
            # at least once: only the calls holding a webhook slot at the kill (in flight,
            # or answered and not yet marked done) are made twice
            assert len(keys) - len(set(keys)) <= concurrency

    asyncio.run(main())


def test_cooldown_per_customer_and_history_is_not_replayed(names):
    async def main():
        old = datetime.now(UTC) - timedelta(days=3)
        # published before the dispatcher's group existed: never fires (starts at latest)
        await send(names["changes"], [change("c-0", "win_back", 1)])
        async with Receiver() as receiver:
            trigger = winback(receiver.url, cooldown=30 * 86400 * 1_000_000)
            async with Running(names, [trigger], max_age_s=3600) as dispatcher:
                await send(
                    names["changes"],
                    [
                        change("c-1", "win_back", 1),
                        change("c-1", "win_back", 3),  # re-entry within the cooldown
                        change("c-9", "win_back", 1, at=old),  # replayed from history
                        change("c-2", "win_back", 1),
                    ],
                )
                await wait_for(
                    lambda: (
                        sum(dispatcher.stats.skipped.values()) == 2 and len(receiver.calls) == 2
                    ),
                    30,
                    "two calls and two skips",
                )
                assert sorted(receiver.keys()) == ["c-1:win_back:1", "c-2:win_back:1"]
                assert dispatcher.stats.skipped == {"cooldown": 1, "too-old": 1}

    asyncio.run(main())
