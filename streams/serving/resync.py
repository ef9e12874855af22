"""Rebuilding the Redis cache from the compacted segment-memberships topic."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition

from segments.changes import CodecError, MembershipRecord
from streams.kafka.connection import KafkaConnection
from streams.serving.cache import CacheWrite, RedisCache, TraitWrite

log = logging.getLogger(__name__)


class TopicNotFound(LookupError):
    """The memberships topic is not in the metadata (missing, or without a leader yet)."""


@dataclass
class ResyncResult:
    records_read: int = 0
    members: int = 0
    tombstones: int = 0
    skipped: int = 0
    keys_deleted: int = 0
    applied: int = 0
    traits: int = 0  # trait values read from trait-values (each written seq-checked)
    traits_applied: int = 0
    traits_topic_missing: bool = False


async def read_memberships(
    kafka: KafkaConnection, topic: str
) -> tuple[dict[bytes, bytes | None], int]:
    """Reads the topic from the start to the end offsets seen at start: latest value per key."""
    consumer = AIOKafkaConsumer(**kafka.aiokafka_args(enable_auto_commit=False, group_id=None))
    await consumer.start()
    try:
        partitions = await _partitions(consumer, topic)
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        end = await consumer.end_offsets(tps)
        latest: dict[bytes, bytes | None] = {}
        read = 0
        pending = {tp for tp in tps if end[tp] > 0}
        while pending:
            for tp in list(pending):
                if await consumer.position(tp) >= end[tp]:
                    pending.discard(tp)
            if not pending:
                break
            batches = await consumer.getmany(*pending, timeout_ms=500, max_records=5000)
            for tp, records in batches.items():
                for record in records:
                    if record.offset >= end[tp]:
                        continue
                    read += 1
                    latest[record.key or b""] = record.value
        return latest, read
    finally:
        await consumer.stop()


TOPIC_METADATA_TIMEOUT_S = 30.0  # how long a topic may take to appear in the metadata


async def _partitions(consumer: AIOKafkaConsumer, topic: str) -> set[int]:
    """The topic's partitions, waiting up to `timeout` s for a new topic's metadata.

    A topic created a moment ago may not be in the metadata yet (no leader elected): that
    is waited for, not taken for a missing topic.
    """
    timeout = TOPIC_METADATA_TIMEOUT_S
    deadline = time.monotonic() + timeout
    while True:
        partitions = consumer.partitions_for_topic(topic)
        if partitions:
            return set(partitions)
        if time.monotonic() >= deadline:
            raise TopicNotFound(
                f"topic {topic!r} not found, or it has no partition leader, after {timeout:g}s"
            )
        await consumer._client.force_metadata_update()  # the topic may be new to this client
        await asyncio.sleep(0.1)  # the broker needs a moment: do not hammer it meanwhile


async def topic_exists(kafka: KafkaConnection, topic: str) -> bool:
    """Whether the broker lists the topic (one admin request)."""
    from aiokafka.admin import AIOKafkaAdminClient

    admin = AIOKafkaAdminClient(**kafka.aiokafka_args())
    await admin.start()
    try:
        return topic in set(await admin.list_topics())
    finally:
        await admin.close()


async def read_trait_values(
    kafka: KafkaConnection, topic: str, result: ResyncResult
) -> list[TraitWrite]:
    """Every customer's last trait change from the compacted trait-values topic.

    A deployment whose worker does not publish traits has no such topic: no traits, and
    one log line (result.traits_topic_missing).
    """
    if not await topic_exists(kafka, topic):
        result.traits_topic_missing = True
        log.info("resync_traits_skipped topic=%s reason=topic-missing", topic)
        return []
    latest, read = await read_memberships(kafka, topic)
    result.records_read += read
    writes = []
    for key, value in latest.items():
        if value is None:  # never written by the worker (a null trait value is a record)
            continue
        try:
            writes.append(TraitWrite.from_json(value))
        except CodecError as error:
            result.skipped += 1
            log.warning("resync_skip topic=%s key=%r reason=%s", topic, key[:200], error)
    return writes


async def resync_cache(
    cache: RedisCache,
    *,
    kafka: KafkaConnection,
    topic: str,
    flush: bool = True,
    batch: int = 2000,
    traits_topic: str | None = None,
) -> ResyncResult:
    """Rebuilds the cache: optionally deletes this prefix's keys, then writes every member
    and, with `traits_topic` (trait-values), every trait value.

    Writes are seq-checked, so a cache sink running at the same time cannot be overwritten
    by an older membership or trait value; keys deleted by the flush are re-created from
    the topics.
    """
    result = ResyncResult()
    latest, result.records_read = await read_memberships(kafka, topic)
    traits = await read_trait_values(kafka, traits_topic, result) if traits_topic else []
    result.traits = len(traits)
    writes = []
    for key, value in latest.items():
        if value is None:
            result.tombstones += 1
            continue
        try:
            writes.append(CacheWrite.from_membership(MembershipRecord.from_record(key, value)))
        except CodecError as error:
            result.skipped += 1
            log.warning("resync_skip key=%r reason=%s", key[:200], error)
    result.members = len(writes)
    if flush:
        # The sentinel (every slot's, on a Cluster) goes first: from now until it is set
        # again below, every lookup answers 503 rather than an empty list for a key not
        # yet rewritten.
        await cache.mark_incomplete()
        result.keys_deleted = await cache.delete_all()
    for start in range(0, len(writes), batch):
        applied = await cache.apply(writes[start : start + batch])
        result.applied += sum(1 for r in applied if r.applied)
    for start in range(0, len(traits), batch):
        result.traits_applied += sum(await cache.apply_traits(traits[start : start + batch]))
    await cache.mark_complete("resynced")
    return result
