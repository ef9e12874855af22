"""The Faust app: its topics and the one `customers` table, built from the settings."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faust
from faust.types import TableT

from streams.kafka.connection import KafkaConnection
from streams.settings import Settings, Topics
from streams.worker.faust_fixes import App
from streams.worker.web import faust_web_settings

# RocksDB per table partition, sized for a 2-core / 24 GiB machine running
# SEGMENTS_PARTITIONS partitions: small memtables and a shared-size block cache
# per partition keep the whole store well under a gigabyte.
ROCKSDB_OPTIONS: dict[str, Any] = {
    "driver": "rocksdict",
    "write_buffer_size": 16 * 1024 * 1024,
    "max_write_buffer_number": 2,
    "target_file_size_base": 32 * 1024 * 1024,
    "block_cache_size": 32 * 1024 * 1024,
    "max_open_files": 256,
}


def raw_schema() -> faust.Schema[bytes, bytes]:
    """Bytes in, bytes out: decoding is the core's job (segments.events), not Faust's."""
    return faust.Schema(
        key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw"
    )


@dataclass
class SegmentsApp:
    """The app and everything agents need, passed explicitly instead of module globals."""

    settings: Settings
    names: Topics
    app: faust.App
    events: faust.TopicT  # `purchases` and the ticks topic, read by one agent
    ticks: faust.TopicT
    native: faust.TopicT  # `purchases.pos` and `purchases.online`
    customers: TableT[bytes, bytes]


def changelog_topic(settings: Settings) -> str:
    """The customers table's changelog, as Faust names it."""
    return f"{settings.app_id}-customers-changelog"


def create_app(settings: Settings, min_insync_replicas: int | None = None) -> SegmentsApp:
    """`min_insync_replicas`: set on the changelog when Faust creates it, as ensure_topics
    sets it on the other topics (streams.kafka.topics.min_insync_replicas)."""
    names = settings.topics
    app = App(
        settings.app_id,
        broker=settings.faust_broker,
        broker_credentials=KafkaConnection.from_settings(settings).faust_credentials(),
        store="rocksdb://",
        datadir=str(settings.data_dir),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor or 1,
        # At-least-once on purpose: Faust's exactly_once has open bugs; effects
        # are idempotent instead (docs/worker.md).
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        # Fewer, larger produce requests: each event sends about five messages
        # (changelog, changes, memberships); 20 ms is far inside the 1 s budget.
        producer_linger=0.02,
        # 1 MiB instead of Faust's 1,000,000 bytes: a dead letter keeps an
        # original of up to about 1 MiB - 4 KiB whole, and a default topic
        # (max.message.bytes 1,048,588) still takes the record (streams/worker/dlq.py).
        producer_max_request_size=1024 * 1024,
        broker_commit_every=1000,
        broker_commit_interval=1.0,
        table_standby_replicas=0,
        # A killed worker's partitions move after 10 s instead of Faust's 60 s.
        broker_session_timeout=10.0,
        broker_heartbeat_interval=2.0,
        stream_buffer_maxsize=1024,
        **faust_web_settings(
            settings.web_host,
            settings.web_port,
            settings.api_token_value,
            settings.web_advertised_host,
        ),
    )
    # purchases and ticks share partition numbers: one agent reads both, so a
    # tick for partition p is handled in the same stream, in order, as p's events.
    events = app.topic(names.purchases, names.ticks, schema=raw_schema())
    ticks = app.topic(names.ticks, partitions=settings.partitions, schema=raw_schema())
    native = app.topic(names.purchases_pos, names.purchases_online, schema=raw_schema())
    customers = app.Table(
        "customers",
        default=None,
        partitions=settings.partitions,
        options=ROCKSDB_OPTIONS,
        key_type=bytes,  # bytes types make Faust's table serializers "raw"
        value_type=bytes,
        extra_topic_configs=(
            {"min.insync.replicas": str(min_insync_replicas)} if min_insync_replicas else None
        ),
    )
    return SegmentsApp(settings, names, app, events, ticks, native, customers)
