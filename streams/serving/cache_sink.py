"""Cache sink: segment-changes -> Redis in batches; offsets committed only once Redis has them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from prometheus_client import Counter, Histogram
from redis.exceptions import RedisError

from segments.changes import Change, CodecError
from segments.clock import parse_instant
from streams.kafka.connection import KafkaConnection
from streams.kafka.retry import Backoff, wait_or_stop
from streams.kafka.topics import wait_for_topic
from streams.serving.cache import Applied, CacheWrite, RedisCache, TraitWrite, parse_field
from streams.serving.churn import ChurnHistory
from streams.serving.metrics import CACHE_COMPLETE, REDIS_UP, record_lag
from streams.serving.resync import resync_cache

log = logging.getLogger(__name__)

SEGMENT_CHANGES = Counter(
    "segments_changes_total",
    "Segment changes applied to the cache (each change id counted once), by kind and cause.",
    ["segment", "change", "cause"],
)
TIME_IN_SEGMENT = Histogram(
    "segments_time_in_segment_seconds",
    "How long a customer stayed in a segment, observed when it exits.",
    ["segment"],
    buckets=[3600 * h for h in (1, 6, 24)] + [86400 * d for d in (7, 30, 90, 182, 365, 730)],
)
CACHE_WRITE_FAILURES = Counter(
    "segments_cache_write_failures_total", "Batches that Redis did not take (each retried)."
)
CACHE_UNDECODABLE = Counter(
    "segments_cache_undecodable_total",
    "segment-changes (or trait-changes) messages skipped as not a change.",
)
CACHE_REBUILDS = Counter(
    "segments_cache_rebuilds_total",
    "Rebuilds of the cache from segment-memberships after its sentinel was found missing.",
    ["outcome"],
)


class RebuildFailed(Exception):
    """The cache could not be rebuilt for a reason other than Redis (e.g. Kafka)."""


@dataclass
class SinkStats:
    batches: int = 0
    changes_applied: int = 0
    changes_ignored: int = 0
    traits_applied: int = 0
    traits_ignored: int = 0
    failed_attempts: int = 0
    resyncs: int = 0
    rebuilding: bool = False
    redis_ok: bool = True
    last_error: str = ""
    positions: dict[TopicPartition, int] = field(default_factory=dict)


class CacheSink:
    """Consumes segment-changes (and trait-changes) with its own consumer group and applies
    them to Redis.

    At-least-once: a batch's offsets are committed only after its pipeline succeeded; while
    Redis is down the same batch is retried with backoff (nothing new is read), and a
    restarted sink resumes from the last committed offsets. The seq check in the Lua scripts
    makes the repeats harmless.
    """

    def __init__(
        self,
        cache: RedisCache,
        *,
        kafka: KafkaConnection,
        topic: str,
        group_id: str,
        batch_size: int = 2000,
        backoff: Backoff | None = None,
        churn: ChurnHistory | None = None,
        memberships_topic: str | None = None,
        check_every_s: float = 1.0,
        traits_topic: str | None = None,
        trait_values_topic: str | None = None,
    ) -> None:
        self.cache = cache
        self.kafka = kafka
        self.topic = topic
        self.group_id = group_id
        self.batch_size = batch_size
        self.backoff = backoff or Backoff()
        self.churn = churn
        # With a memberships topic, a cache found without its sentinel key (new, flushed,
        # or a Redis that restarted empty) is rebuilt from it before more changes apply.
        # The sentinel is looked at before every batch and every check_every_s while idle:
        # an emptied Redis is noticed within seconds even when no change flows. Without a
        # memberships topic the sink never sets the sentinel, and lookups answer 503.
        self.memberships_topic = memberships_topic
        self.check_every_s = check_every_s
        # Trait changes go to the same customer hashes (fields "trait:<name>"), read by the
        # same consumer; a rebuild reads trait values from the compacted trait_values_topic.
        # A deployment whose worker does not publish traits yet has neither topic: the
        # subscription is a pattern, so trait-changes is picked up once it is created.
        self.traits_topic = traits_topic
        self.trait_values_topic = trait_values_topic
        self._next_check = 0.0
        self.stats = SinkStats()
        self.consumer: AIOKafkaConsumer | None = None

    async def run(self, stop: asyncio.Event) -> None:
        if not await wait_for_topic(self.kafka, self.topic, stop):
            return
        consumer = AIOKafkaConsumer(
            **self.kafka.aiokafka_args(
                group_id=self.group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest",
                max_poll_records=self.batch_size,
                # A long Redis outage holds one batch; stay in the group meanwhile.
                max_poll_interval_ms=30 * 60 * 1000,
                # A trait-changes topic created after the start is seen within this long.
                metadata_max_age_ms=10_000,
            ),
        )
        if self.traits_topic:
            # A pattern, not a list: a consumer subscribed to a missing topic waits in
            # start() without end; trait-changes may not exist yet (an older worker).
            names = (self.topic, self.traits_topic)
            consumer.subscribe(pattern="|".join(f"^{re.escape(name)}$" for name in names))
        else:
            consumer.subscribe([self.topic])
        self.consumer = consumer
        await consumer.start()
        log.info(
            "cache_sink_started topic=%s traits_topic=%s group=%s",
            self.topic,
            self.traits_topic,
            self.group_id,
        )
        try:
            while not stop.is_set():
                due = self.memberships_topic and time.monotonic() >= self._next_check
                if due and not await self._check_until_complete(stop):
                    return
                batches = await consumer.getmany(timeout_ms=200, max_records=self.batch_size)
                if not batches:
                    continue
                changes, traits, offsets = self._decode(batches)
                if not await self._apply_until_done(changes, stop, traits):
                    return  # stopped mid-retry: offsets stay uncommitted, replayed on restart
                try:
                    await consumer.commit(offsets)
                    self.stats.positions.update(offsets)
                    record_lag(
                        consumer,
                        self.group_id,
                        {tp: o for tp, o in offsets.items() if tp.topic == self.topic},
                    )
                except (CommitFailedError, KafkaError) as error:
                    # A rebalance moved the partitions: their new owner re-applies (no-ops).
                    log.warning("cache_sink_commit_failed error=%s", error)
        finally:
            await consumer.stop()
            log.info("cache_sink_stopped")

    def _decode(
        self, batches: dict[TopicPartition, list[Any]]
    ) -> tuple[list[Change], list[TraitWrite], dict[TopicPartition, int]]:
        changes: list[Change] = []
        traits: list[TraitWrite] = []
        offsets: dict[TopicPartition, int] = {}
        for tp, records in batches.items():
            is_traits = tp.topic != self.topic
            for record in records:
                try:
                    if is_traits:
                        traits.append(TraitWrite.from_json(record.value))
                    else:
                        changes.append(Change.from_json(record.value))
                except CodecError as error:
                    CACHE_UNDECODABLE.inc()
                    log.warning(
                        "cache_sink_skip topic=%s partition=%d offset=%d reason=%s",
                        tp.topic,
                        tp.partition,
                        record.offset,
                        error,
                    )
            offsets[tp] = records[-1].offset + 1
        return changes, traits, offsets

    async def _apply_until_done(
        self, changes: list[Change], stop: asyncio.Event, traits: Sequence[TraitWrite] = ()
    ) -> bool:
        writes = [CacheWrite.from_change(change) for change in changes]
        first: list[Applied] | None = None
        while True:
            try:
                if self.memberships_topic and not await self._complete_cache(stop):
                    return False
                results = await self.cache.apply(writes)
                # Applied again after a trait failure (seq-checked: no-ops unless the cache
                # was lost meanwhile), but counted as the first application found them.
                first = first or results
                traits_applied = await self.cache.apply_traits(traits)
            except (RedisError, OSError, RebuildFailed) as error:
                delay = self.backoff.next_delay()
                if isinstance(error, RebuildFailed):
                    self._rebuild_failed(error, delay)
                else:
                    CACHE_WRITE_FAILURES.inc()
                    self._redis_failed(error, delay)
                if await wait_or_stop(stop, delay):
                    return False
                continue
            self._redis_answered()
            results = first or results
            self.stats.batches += 1
            applied = sum(1 for r in results if r.applied)
            self.stats.changes_applied += applied
            self.stats.changes_ignored += len(results) - applied
            self.stats.traits_applied += sum(traits_applied)
            self.stats.traits_ignored += len(traits_applied) - sum(traits_applied)
            record_metrics(results, changes, self.churn)
            return True

    async def _check_until_complete(self, stop: asyncio.Event) -> bool:
        """The idle check: rebuilds a cache found without its sentinel; False when stopped."""
        while True:
            try:
                if not await self._complete_cache(stop):
                    return False
            except (RedisError, OSError, RebuildFailed) as error:
                delay = self.backoff.next_delay()
                if isinstance(error, RebuildFailed):
                    self._rebuild_failed(error, delay)
                else:
                    self._redis_failed(error, delay)
                if await wait_or_stop(stop, delay):
                    return False
                continue
            self._redis_answered()
            return True

    async def _complete_cache(self, stop: asyncio.Event) -> bool:
        """Makes sure the sentinel is there: when it is not, rebuilds from segment-memberships.

        False when stopped during a rebuild. Raises RedisError/OSError when Redis does not
        answer, RebuildFailed when the topic cannot be read; the sentinel stays missing
        then, so lookups keep answering 503.
        """
        self._next_check = time.monotonic() + self.check_every_s
        if await self.cache.is_complete():
            CACHE_COMPLETE.set(1)
            return True
        CACHE_COMPLETE.set(0)
        self.stats.rebuilding = True
        log.warning(
            "cache_sink_cache_lost sentinel=%s action=resync topic=%s",
            self.cache.keys.sentinel() + (":{<slot>}" if self.cache.cluster else ""),
            self.memberships_topic,
        )
        assert self.memberships_topic is not None
        started = time.monotonic()
        rebuild = asyncio.ensure_future(
            resync_cache(
                self.cache,
                kafka=self.kafka,
                topic=self.memberships_topic,
                flush=False,
                traits_topic=self.trait_values_topic,
            )
        )
        stopped = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({rebuild, stopped}, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            rebuild.cancel()  # no rebuild left running behind a cancelled sink
            raise
        finally:
            stopped.cancel()
        if not rebuild.done():  # a stop does not wait for a long rebuild: the next start redoes it
            rebuild.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await rebuild
            return False
        try:
            result = rebuild.result()
        except (RedisError, OSError):
            raise
        except Exception as error:  # Kafka, or a topic that does not exist (yet)
            raise RebuildFailed(f"{type(error).__name__}: {error}") from error
        self.stats.rebuilding = False
        self.stats.resyncs += 1
        CACHE_REBUILDS.labels("done").inc()
        CACHE_COMPLETE.set(1)
        self._next_check = time.monotonic() + self.check_every_s
        log.info(
            "cache_sink_resynced members=%d written=%d traits=%d seconds=%.1f",
            result.members,
            result.applied,
            result.traits,
            time.monotonic() - started,
        )
        return True

    def _redis_failed(self, error: BaseException, delay: float) -> None:
        self.stats.failed_attempts += 1
        self.stats.redis_ok = False
        self.stats.last_error = f"{type(error).__name__}: {error}"
        REDIS_UP.set(0)
        log.warning(
            "cache_sink_redis_unavailable attempt=%d retry_in=%.2fs error=%s",
            self.backoff.attempt,
            delay,
            self.stats.last_error,
        )

    def _rebuild_failed(self, error: RebuildFailed, delay: float) -> None:
        self.stats.last_error = str(error)
        CACHE_REBUILDS.labels("failed").inc()
        log.error(
            "cache_sink_resync_failed attempt=%d retry_in=%.2fs error=%s",
            self.backoff.attempt,
            delay,
            error,
        )

    def _redis_answered(self) -> None:
        if not self.stats.redis_ok:
            log.info("cache_sink_redis_back attempts=%d", self.backoff.attempt)
        self.backoff.reset()
        self.stats.redis_ok = True
        REDIS_UP.set(1)


def record_metrics(
    results: Sequence[Applied], changes: Sequence[Change], churn: ChurnHistory | None = None
) -> None:
    """Churn metrics from applied (newer-seq) changes, so a replayed change counts once."""
    for result, change in zip(results, changes, strict=True):
        if not result.applied:
            continue
        SEGMENT_CHANGES.labels(change.segment, change.change, change.cause).inc()
        if churn is not None:
            churn.record(change.segment, change.change, change.cause, time.time())
        if not change.entered and result.previous:
            _seq, was_member, since = parse_field(result.previous)
            if was_member:
                seconds = _seconds_since(since, change.at)
                if seconds is not None and seconds >= 0:
                    TIME_IN_SEGMENT.labels(change.segment).observe(seconds)


def _seconds_since(start: str, end: int) -> float | None:
    try:
        return (end - parse_instant(start.replace("Z", "+00:00"))) / 1_000_000
    except ValueError:
        return None
