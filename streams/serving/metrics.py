"""Metrics more than one serving part writes: Redis up, cache complete, consumer lag."""

from __future__ import annotations

from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import Gauge

CONSUMER_LAG = Gauge(
    "segments_serving_consumer_lag",
    "segment-changes messages not yet handled by a serving consumer group, per partition.",
    ["group", "partition"],
)
REDIS_UP = Gauge(
    "segments_cache_redis_up",
    "1 when Redis answered this process's last look at the cache (a sink check, a scrape), "
    "0 when it did not.",
)
CACHE_COMPLETE = Gauge(
    "segments_cache_complete",
    "1 when the cache's sentinel key is present (built from segment-memberships); 0 while "
    "it is missing or being rebuilt, when every lookup answers 503.",
)


def record_lag(consumer: AIOKafkaConsumer, group: str, offsets: dict[TopicPartition, Any]) -> None:
    """Lag = the partition's high watermark (as last fetched) - the committed offset."""
    for tp, offset in offsets.items():
        highwater = consumer.highwater(tp)
        if highwater is not None:
            CONSUMER_LAG.labels(group, str(tp.partition)).set(max(0, highwater - offset))
