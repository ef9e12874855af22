"""Oversize input reaches the dead-letter topic (whole or truncated) and the partition moves on.

Issue 9, defect 3: a 1,040,000-byte invalid message and a 2 MiB one made the
agent crash on MessageSizeTooLarge while dead-lettering them, and the offset
moved past them with no dead letter.
"""

from __future__ import annotations

import hashlib
import time
import urllib.request
from pathlib import Path

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from kafka import KafkaProducer
from kafka.partitioner import murmur2

from streams.settings import Topics
from streams.worker.dlq import HEAD_BYTES
from tests.integration.conftest import CreateTopics
from tests.integration.worker_harness import (
    Record,
    committed_offsets,
    end_offsets,
    running_workers,
    wait_drained,
)

pytestmark = pytest.mark.slow

PARTITIONS = 2


def _event(event_id: str, customer_id: str) -> bytes:
    return orjson.dumps(
        {
            "event_id": event_id,
            "customer_id": customer_id,
            "occurred_at": "2025-03-01T10:00:00Z",
            "channel": "pos",
            "currency": "EUR",
            "total": "10.00",
        }
    )


def _padded(customer_id: str, size: int) -> bytes:
    """Invalid JSON (never closed) of exactly `size` bytes."""
    start = b'{"event_id": "big", "customer_id": "' + customer_id.encode() + b'", "pad": "'
    return start + b"x" * (size - len(start))


def _metric(port: int, sample: str) -> float:
    """The value of one sample (name and labels as exposed) of the worker's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    for line in text.splitlines():
        if line.startswith(sample + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {sample} in /metrics:\n{text}")


def read_large_records(bootstrap: str, topic: str) -> list[Record]:
    """Every record of `topic`; aiokafka, because kafka-python refuses a 1 MB response."""
    import asyncio

    ends = end_offsets(bootstrap, topic)
    tps = [TopicPartition(topic, p) for p, end in ends.items() if end > 0]
    if not tps:
        return []

    async def read() -> list[Record]:
        consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
        await consumer.start()
        try:
            consumer.assign(tps)
            await consumer.seek_to_beginning(*tps)
            records: list[Record] = []
            deadline = time.monotonic() + 60
            while [tp for tp in tps if await consumer.position(tp) < ends[tp.partition]]:
                assert time.monotonic() < deadline, f"{topic} not read to its end within 60 s"
                batch = await consumer.getmany(timeout_ms=1000)
                for messages in batch.values():
                    records.extend(
                        Record(m.partition, m.offset, m.key, m.value, tuple(m.headers))
                        for m in messages
                    )
            return records
        finally:
            await consumer.stop()

    return asyncio.run(read())


def test_oversize_messages_are_dead_lettered_and_the_partition_moves_on(
    segments_env: dict[str, str], topics: Topics, create_topics: CreateTopics, tmp_path: Path
) -> None:
    env = {**segments_env, "SEGMENTS_CLOCK": "event"}  # 2025 events are not too late
    bootstrap = env["SEGMENTS_KAFKA_BOOTSTRAP"]
    # `purchases` takes 4 MiB messages; the dead-letter topic keeps the broker's default.
    create_topics(
        topics.purchases, partitions=PARTITIONS, config={"max.message.bytes": str(4 << 20)}
    )
    near_limit = _padded("c-near", 1_040_000)  # under a default broker's limit
    two_mib = _padded("c-huge", 2 << 20)
    assert len(near_limit) == 1_040_000 and len(two_mib) == 2 << 20
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", max_request_size=8 << 20)
    try:
        # Each oversize message is followed, on its own partition, by valid events.
        sends = [
            (b"c-near", _event("before-near", "c-near")),
            (b"c-near", near_limit),
            (b"c-near", _event("after-near", "c-near")),
            (b"c-huge", _event("before-huge", "c-huge")),
            (b"c-huge", two_mib),
            (b"c-huge", _event("after-huge", "c-huge")),
        ]
        for key, value in sends:
            producer.send(topics.purchases, key=key, value=value).get(timeout=60)
    finally:
        producer.close()

    with running_workers(env, tmp_path) as (worker,):
        worker.wait_ready()
        wait_drained(
            bootstrap, segments_env["SEGMENTS_APP_ID"], topics.purchases, workers=(worker,)
        )
        # Committed past both oversize messages, and every valid event was applied.
        committed = committed_offsets(bootstrap, segments_env["SEGMENTS_APP_ID"], topics.purchases)
        for partition, end in end_offsets(bootstrap, topics.purchases).items():
            assert committed.get(partition, 0) >= end
        applied = _metric(
            worker.port, 'segments_worker_messages_total{agent="segments",outcome="applied"}'
        )
        dead = read_large_records(bootstrap, topics.purchases_dlq)
        log = worker.log_text()
        assert worker.stop() == 0

    assert applied == 4
    assert "MessageSizeTooLarge" not in log and "crashed" not in log.lower()
    assert len(dead) == 2
    by_key = {record.key: record for record in dead}
    for key in (b"c-near", b"c-huge"):
        assert by_key[key].partition == (murmur2(key) & 0x7FFFFFFF) % PARTITIONS

    # 1,040,000 bytes fit in one dead-letter record: the original, whole.
    near = by_key[b"c-near"]
    near_headers = dict(near.headers)
    assert near.value == near_limit
    assert "truncated" not in near_headers
    assert near_headers["reason"] == b"invalid_json"

    # 2 MiB does not fit under the producer's 1 MiB limit: head, size, sha256, reasons.
    huge = by_key[b"c-huge"]
    huge_headers = dict(huge.headers)
    assert huge_headers["truncated"] == b"true"
    assert huge.value == two_mib[:HEAD_BYTES]
    assert int(huge_headers["size"]) == len(two_mib)
    assert huge_headers["sha256"].decode() == hashlib.sha256(two_mib).hexdigest()
    assert huge_headers["reason"] == b"payload_too_large"
    assert b"over the producer's limit" in huge_headers["truncated_reason"]
    assert huge_headers["source_topic"] == topics.purchases.encode()
    assert int(huge_headers["source_offset"]) == 1
