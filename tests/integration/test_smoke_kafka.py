"""Smoke tests of the real local Kafka with the clients the project pins.

kafka-python and aiokafka: produce, consume in a group, commit, resume; transactions;
a compacted topic that really compacts. Faust, built on the worker's fixed App
(streams/worker/faust_fixes.py): a table whose changelog restores it after the local RocksDB
state is lost. Why these versions: docs/decisions/0001-kafka-version.md.
"""

from __future__ import annotations

import asyncio
import shutil
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord
from aiokafka.structs import TopicPartition as AioTopicPartition
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType

from tests.helpers import wait_until, wait_until_async
from tests.integration.conftest import CreateTopics
from tests.integration.worker_harness import WorkerProcess, committed_offsets, end_offsets


def consume(consumer: KafkaConsumer, count: int, timeout: float = 30) -> list[Any]:
    """Polls until at least `count` records arrived; returns all of them in arrival order."""
    records: list[Any] = []

    def enough() -> bool:
        for batch in consumer.poll(timeout_ms=200).values():
            records.extend(batch)
        return len(records) >= count

    wait_until(enough, timeout, interval=0, what=f"{count} records")
    return records


def read_all(bootstrap: str, topic: str) -> list[Any]:
    """Every record currently in partition 0 of `topic`, from its first offset to its end."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        consumer.seek_to_beginning(partition)
        end = consumer.end_offsets([partition])[partition]
        records: list[Any] = []

        def at_end() -> bool:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
            return bool(consumer.position(partition) >= end)

        wait_until(at_end, 30, interval=0, what=f"end of {topic}")
        return records
    finally:
        consumer.close()


def topic_config(admin: KafkaAdminClient, topic: str, name: str) -> str | None:
    """The value of one configuration entry of `topic`, as the broker reports it."""
    [response] = admin.describe_configs(
        [ConfigResource(ConfigResourceType.TOPIC, topic, configs={name: None})]
    )
    # resources: [(error_code, error_message, type, name, [(name, value, ...), ...])]
    for entry in response.resources[0][4]:
        if entry[0] == name:
            return str(entry[1])
    return None


@pytest.fixture
def producer(kafka_bootstrap: str) -> Iterator[KafkaProducer]:
    producer = KafkaProducer(
        bootstrap_servers=kafka_bootstrap,
        acks="all",
        key_serializer=str.encode,
        value_serializer=lambda value: None if value is None else value.encode(),
    )
    yield producer
    producer.close()


def test_kafka_python_group_consumes_commits_and_resumes(
    kafka_bootstrap: str, create_topics: CreateTopics, topic_prefix: str, producer: KafkaProducer
) -> None:
    [topic] = create_topics("purchases", partitions=3)
    keys = [f"c-{n % 7}" for n in range(60)]
    for n, key in enumerate(keys):
        producer.send(topic, key=key, value=str(n))
    producer.flush()

    group = f"{topic_prefix}group"
    first = KafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    records = consume(first, 60)
    first.commit()
    assignment = list(first.assignment())
    committed = {tp: first.committed(tp) for tp in assignment}
    assert committed == first.end_offsets(assignment)
    first.close()

    # Keyed records: one partition per customer, in the order they were sent.
    values_by_key: dict[str, list[int]] = defaultdict(list)
    partitions_by_key: dict[str, set[int]] = defaultdict(set)
    for record in records:
        values_by_key[record.key.decode()].append(int(record.value))
        partitions_by_key[record.key.decode()].add(record.partition)
    assert len(records) == 60
    assert all(values == sorted(values) for values in values_by_key.values())
    assert all(len(partitions) == 1 for partitions in partitions_by_key.values())

    # A new member of the group starts after the committed offsets.
    producer.send(topic, key="c-new", value="60")
    producer.flush()
    second = KafkaConsumer(
        topic,
        bootstrap_servers=kafka_bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    try:
        assert [record.value for record in consume(second, 1)] == [b"60"]
    finally:
        second.close()


def test_aiokafka_group_consumes_commits_and_resumes(
    kafka_bootstrap: str, create_topics: CreateTopics, topic_prefix: str
) -> None:
    [topic] = create_topics("purchases", partitions=2)
    group = f"{topic_prefix}group"

    async def consume_async(consumer: AIOKafkaConsumer, count: int) -> list[ConsumerRecord]:
        records: list[ConsumerRecord] = []

        async def enough() -> bool:
            for batch in (await consumer.getmany(timeout_ms=200)).values():
                records.extend(batch)
            return len(records) >= count

        await wait_until_async(enough, 30, interval=0, what=f"{count} records")
        return records

    async def scenario() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=kafka_bootstrap, enable_idempotence=True)
        await producer.start()
        try:
            for n in range(20):
                await producer.send(topic, key=f"c-{n % 4}".encode(), value=str(n).encode())
            await producer.flush()

            first = AIOKafkaConsumer(
                topic,
                bootstrap_servers=kafka_bootstrap,
                group_id=group,
                auto_offset_reset="earliest",
                enable_auto_commit=False,
            )
            await first.start()
            try:
                records = await consume_async(first, 20)
                await first.commit()
                assignment = list(first.assignment())
                committed = {tp: await first.committed(tp) for tp in assignment}
                assert committed == await first.end_offsets(assignment)
            finally:
                await first.stop()
            assert sorted(int(record.value) for record in records) == list(range(20))

            await producer.send_and_wait(topic, key=b"c-new", value=b"20")
            second = AIOKafkaConsumer(
                topic,
                bootstrap_servers=kafka_bootstrap,
                group_id=group,
                auto_offset_reset="earliest",
                enable_auto_commit=False,
            )
            await second.start()
            try:
                assert [record.value for record in await consume_async(second, 1)] == [b"20"]
            finally:
                await second.stop()
        finally:
            await producer.stop()

    asyncio.run(scenario())


def test_aiokafka_transactions_hide_aborted_writes(
    kafka_bootstrap: str, create_topics: CreateTopics, topic_prefix: str
) -> None:
    [topic] = create_topics("segment-changes")

    async def scenario() -> list[bytes]:
        producer = AIOKafkaProducer(
            bootstrap_servers=kafka_bootstrap, transactional_id=f"{topic_prefix}tx"
        )
        await producer.start()
        try:
            async with producer.transaction():
                await producer.send(topic, key=b"c-1", value=b"committed")
            await producer.begin_transaction()
            await producer.send(topic, key=b"c-1", value=b"aborted")
            await producer.abort_transaction()
            async with producer.transaction():
                await producer.send(topic, key=b"c-1", value=b"committed-too")
        finally:
            await producer.stop()

        consumer = AIOKafkaConsumer(
            bootstrap_servers=kafka_bootstrap,
            isolation_level="read_committed",
            enable_auto_commit=False,
        )
        await consumer.start()
        try:
            partition = AioTopicPartition(topic, 0)
            consumer.assign([partition])
            await consumer.seek_to_beginning(partition)
            end = (await consumer.end_offsets([partition]))[partition]
            values: list[bytes] = []

            async def at_end() -> bool:
                for batch in (await consumer.getmany(timeout_ms=200)).values():
                    values.extend(record.value for record in batch)
                return bool(await consumer.position(partition) >= end)

            await wait_until_async(at_end, 30, interval=0, what=f"end of {topic}")
            return values
        finally:
            await consumer.stop()

    assert asyncio.run(scenario()) == [b"committed", b"committed-too"]


def test_compacted_topic_keeps_the_latest_value_per_key(
    kafka_bootstrap: str,
    create_topics: CreateTopics,
    kafka_admin: KafkaAdminClient,
    producer: KafkaProducer,
) -> None:
    # Tiny segments and no dirty-ratio threshold so the cleaner runs within seconds.
    [topic] = create_topics(
        "segment-memberships",
        config={
            "cleanup.policy": "compact",
            "segment.ms": "100",
            "min.cleanable.dirty.ratio": "0.01",
            "delete.retention.ms": "100",
        },
    )
    assert topic_config(kafka_admin, topic, "cleanup.policy") == "compact"

    producer.send(topic, key="c-1|vip", value="1|entered")
    producer.send(topic, key="c-2|vip", value="1|entered")
    producer.send(topic, key="c-1|vip", value="2|exited")
    producer.send(topic, key="c-2|vip", value=None)  # tombstone: c-2 left
    producer.flush()

    def compacted() -> list[tuple[str, str | None]] | None:
        # Only closed segments are cleaned: each new record rolls the segment after
        # segment.ms, so keep appending a marker (which compacts away too).
        producer.send(topic, key="marker", value="x")
        producer.flush()
        view = [
            (r.key.decode(), None if r.value is None else r.value.decode())
            for r in read_all(kafka_bootstrap, topic)
            if r.key != b"marker"
        ]
        return view if view == [("c-1|vip", "2|exited")] else None

    assert wait_until(compacted, 90, interval=0.2, what="compaction of c-1 and c-2")


FAUST_APP = '''
"""A one-table Faust app configured by SEGMENTS_* like the worker: counts orders per customer."""
from streams.worker.faust_fixes import App

from streams.settings import load_settings

settings = load_settings(env_file=None)
app = App(
    settings.app_id,
    broker=settings.faust_broker,
    store="rocksdb://",
    datadir=str(settings.data_dir),
    topic_partitions=settings.partitions,
    topic_replication_factor=1,
    consumer_auto_offset_reset="earliest",
    web_enabled=False,
)
purchases = app.topic(
    settings.topics.purchases, key_type=str, value_type=str,
    key_serializer="raw", value_serializer="raw",
)
changes = app.topic(
    settings.topics.segment_changes, key_type=str, value_type=str,
    key_serializer="raw", value_serializer="raw",
)
orders = app.Table("orders", default=int)


@app.agent(purchases)
async def count_orders(stream):
    async for customer, _ in stream.items():
        orders[customer] += 1
        await changes.send(key=customer, value=str(orders[customer]))


if __name__ == "__main__":
    app.main()
'''


@pytest.mark.slow
def test_faust_table_is_restored_from_its_changelog(
    kafka_bootstrap: str,
    create_topics: CreateTopics,
    kafka_admin: KafkaAdminClient,
    segments_env: dict[str, str],
    producer: KafkaProducer,
    tmp_path: Path,
) -> None:
    partitions = int(segments_env["SEGMENTS_PARTITIONS"])
    [purchases] = create_topics("purchases", partitions=partitions)
    [changes] = create_topics("segment-changes")
    app_file = tmp_path / "smoke_app.py"
    app_file.write_text(FAUST_APP)
    data_dir = Path(segments_env["SEGMENTS_DATA_DIR"])
    group = segments_env["SEGMENTS_APP_ID"]

    reader = KafkaConsumer(changes, bootstrap_servers=kafka_bootstrap, auto_offset_reset="earliest")
    seen: dict[str, list[int]] = defaultdict(list)

    def counts_reach(expected: dict[str, list[int]]) -> bool:
        for batch in reader.poll(timeout_ms=200).values():
            for record in batch:
                seen[record.key.decode()].append(int(record.value))
        return all(len(seen[customer]) >= len(counts) for customer, counts in expected.items())

    def run(sends: list[str], expected: dict[str, list[int]], log_name: str) -> None:
        """Runs a worker until every customer in `expected` has its counts, in order.

        Faust delivers at least once: after a restart, a message fetched before the
        seek to the committed offset is fetched again after it (faust-streaming#596;
        the fixed App keeps it rather than lose the one fetched after the seek), and
        this bare app does not dedupe, so a customer's count may then rise once more.
        Only the first counts are the test's business: they prove where each
        customer's count started from.
        """
        seen.clear()
        worker = WorkerProcess(
            segments_env,
            tmp_path / log_name,
            arguments=(str(app_file), "worker", "--without-web", "-l", "info"),
        ).start()
        process = worker.process
        assert process is not None
        try:
            for customer in sends:
                producer.send(purchases, key=customer, value="{}")
            producer.flush()
            try:
                wait_until(
                    lambda: counts_reach(expected) or process.poll() is not None,
                    90,
                    interval=0,
                    what=f"worker output {expected}",
                )
            except AssertionError as error:
                committed = committed_offsets(kafka_bootstrap, group, purchases)
                ends = end_offsets(kafka_bootstrap, purchases)
                outputs = end_offsets(kafka_bootstrap, changes)
                raise AssertionError(
                    f"{error}; seen {dict(seen)}; {purchases} committed {committed} of {ends};"
                    f" {changes} ends at {outputs}\n{worker.dump_tasks()}"
                ) from None
            assert process.poll() is None, f"worker exited:\n{worker.tail()}"
            firsts = {name: seen[name][: len(counts)] for name, counts in expected.items()}
            assert firsts == expected, worker.tail()
        finally:
            assert worker.stop() == 0, f"worker did not stop cleanly:\n{worker.tail()}"

    try:
        run(["c-1", "c-1", "c-2", "c-1"], {"c-1": [1, 2, 3], "c-2": [1]}, "w1.log")
        assert any(data_dir.rglob("orders-*.db")), "the table lives in RocksDB"

        # Lose the local RocksDB state: the counts must come back from the changelog.
        shutil.rmtree(data_dir)
        run(["c-1", "c-2"], {"c-1": [4], "c-2": [2]}, "w2.log")
    finally:
        reader.close()

    changelog = f"{segments_env['SEGMENTS_APP_ID']}-orders-changelog"
    assert changelog in kafka_admin.list_topics()
    assert topic_config(kafka_admin, changelog, "cleanup.policy") == "compact"
