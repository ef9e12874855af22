"""Trigger dispatcher against real Kafka, real Redis and a real HTTP receiver on 127.0.0.1."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from aiohttp import web
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from segments.rules.ruleset import Trigger
from streams.sinks.redis import connect
from streams.triggers import DispatchConfig, TriggerDispatcher
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
    """A webhook receiver on 127.0.0.1 that records calls and can be told to fail."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls: list[tuple[str, dict, str]] = []  # (path, body, idempotency key)
        self.fail: dict[str, int] = {}  # change_id -> how many calls to answer 500
        self.always_fail = False
        self.delay = delay
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.json()
        key = request.headers.get("Idempotency-Key", "")
        if self.delay:
            await asyncio.sleep(self.delay)  # a slow receiver, not synchronisation
        if self.always_fail or self.fail.get(key, 0) > 0:
            self.fail[key] = self.fail.get(key, 0) - 1
            return web.Response(status=500)
        self.calls.append((request.path, body, key))
        return web.Response(status=204)

    async def __aenter__(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hooks/{name}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc) -> None:
        await self.runner.cleanup()

    def keys(self) -> list[str]:
        return [key for _path, _body, key in self.calls]


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


async def send(topic: str, changes: list[dict]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=BOOTSTRAP)
    await producer.start()
    try:
        for item in changes:
            await producer.send(topic, orjson.dumps(item), key=item["customer_id"].encode())
        await producer.flush()
    finally:
        await producer.stop()


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


class Running:
    """A dispatcher running in this event loop until the block ends."""

    def __init__(self, names, triggers, **config) -> None:
        self.client = connect(REDIS_URL)
        self.dispatcher = TriggerDispatcher(
            self.client,
            triggers,
            bootstrap=BOOTSTRAP,
            topic=names["changes"],
            dlq_topic=names["dlq"],
            group_id=names["prefix"] + "triggers",
            redis_prefix=names["prefix"],
            config=DispatchConfig(**{"backoff_first_s": 0.02, "backoff_max_s": 0.1, **config}),
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


def test_retries_with_backoff_then_dead_letters(names):
    async def main():
        async with (
            Receiver() as receiver,
            Running(names, [winback(receiver.url)], attempts=4) as dispatcher,
        ):
            receiver.fail["c-1:win_back:1"] = 2  # two 500s, then success
            await send(names["changes"], [change("c-1", "win_back", 1)])
            await wait_for(lambda: receiver.keys() == ["c-1:win_back:1"], 30, "a retried call")
            receiver.always_fail = True
            await send(names["changes"], [change("c-2", "win_back", 1)])
            await wait_for(lambda: dispatcher.stats.dead == 1, 30, "a dead letter")
            (dead,) = await read_dlq(names["dlq"])
            assert dead["reason"] == "http-500"
            assert dead["attempts"] == 4
            assert dead["change"]["change_id"] == "c-2:win_back:1"
            assert receiver.keys() == ["c-1:win_back:1"]

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


@pytest.mark.slow
def test_killed_dispatcher_never_fires_a_change_twice(names, tmp_path):
    """SIGKILL the dispatcher process mid-stream, restart it: no change_id is called twice,
    and every change is either delivered or dead-lettered as outcome-unknown."""

    async def main():
        async with Receiver(delay=0.005) as receiver:
            rules = tmp_path / "rules.yaml"
            rules.write_text(
                "version: 1\nbase_currency: EUR\nsegments:\n"
                "  - name: win_back\n    when: days_since_last_purchase() > 90\n"
                "triggers:\n  - name: winback-email\n    segment: win_back\n"
                f"    on: entered\n    webhook: {receiver.url}/hooks/winback\n"
            )
            env = {
                **{k: v for k, v in os.environ.items() if not k.startswith("SEGMENTS_")},
                "SEGMENTS_KAFKA_BOOTSTRAP": BOOTSTRAP,
                "SEGMENTS_REDIS_URL": REDIS_URL,
                "SEGMENTS_TOPIC_PREFIX": names["prefix"],
                "SEGMENTS_REDIS_PREFIX": names["prefix"],
                "SEGMENTS_APP_ID": names["prefix"] + "app",
                "SEGMENTS_RULES": str(rules),
            }
            command = [sys.executable, "-m", "streams.triggers", "--lease", "3"]

            drains: list[asyncio.Task] = []

            async def start() -> asyncio.subprocess.Process:
                process = await asyncio.create_subprocess_exec(
                    *command, env=env, cwd=tmp_path, stderr=asyncio.subprocess.PIPE
                )
                while True:  # wait for "triggers: ready" (bounded by the outer timeout)
                    line = await asyncio.wait_for(process.stderr.readline(), 60)
                    assert line, "dispatcher exited before it was ready"
                    if b"triggers: ready" in line:
                        break
                drains.append(asyncio.create_task(process.stderr.read()))  # keep draining
                return process

            first = await start()
            total = 1500
            changes = [change(f"c-{i}", "win_back", 1) for i in range(total)]
            await send(names["changes"], changes)
            await wait_for(lambda: len(receiver.calls) >= 200, 60, "some calls before the kill")
            first.send_signal(signal.SIGKILL)
            await first.wait()
            received_at_kill = len(receiver.calls)
            assert received_at_kill < total, "the kill came too late to test anything"

            second = await start()
            try:

                async def settled():
                    dead = await read_dlq(names["dlq"])
                    keys = set(receiver.keys()) | {d["change"]["change_id"] for d in dead}
                    return len(keys) == total and (dead, keys)

                dead, _keys = await wait_for(settled, 120, "every change delivered or dead", 0.5)
            finally:
                second.send_signal(signal.SIGTERM)
                await asyncio.wait_for(second.wait(), 30)
            keys = receiver.keys()
            assert len(keys) == len(set(keys)), "a change was called twice"
            # Only the calls in flight at the kill have an unknown outcome (the receiver may
            # or may not have them); they are dead-lettered, never called a second time.
            assert all(d["reason"] == "outcome-unknown" for d in dead)
            assert len(dead) <= 64  # at most the dispatcher's concurrency

    asyncio.run(main())


def test_a_stop_between_attempts_releases_the_claim_for_the_next_run(names):
    async def main():
        async with Receiver() as receiver:
            receiver.always_fail = True
            running = Running(
                names, [winback(receiver.url)], attempts=10, backoff_first_s=5, backoff_max_s=5
            )
            async with running as dispatcher:
                await send(names["changes"], [change("c-1", "win_back", 1)])
                await wait_for(lambda: receiver.fail.get("c-1:win_back:1", 0) < 0, 30, "a 500")
            # stopped during the backoff: the claim is gone, the offset uncommitted
            marker = dispatcher.marker_key(winback(receiver.url), change("c-1", "win_back", 1))
            client = connect(REDIS_URL)
            assert await client.get(marker) is None
            await client.aclose()
            receiver.always_fail = False
            async with Running(names, [winback(receiver.url)]) as again:
                await wait_for(lambda: receiver.keys() == ["c-1:win_back:1"], 30, "the retry")
                assert again.stats.fired == 1

    asyncio.run(main())
