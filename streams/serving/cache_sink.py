"""Cache sink: segment-changes -> Redis in batches; offsets committed only once Redis has them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from prometheus_client import Counter, Gauge, Histogram
from redis.exceptions import RedisError

from streams.serving.cache import Applied, CacheWrite, RedisCache, decode_change, parse_field

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
CONSUMER_LAG = Gauge(
    "segments_serving_consumer_lag",
    "segment-changes messages not yet handled by a serving consumer group, per partition.",
    ["group", "partition"],
)
CACHE_UNDECODABLE = Counter(
    "segments_cache_undecodable_total", "segment-changes messages skipped as not a change."
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
CACHE_REBUILDS = Counter(
    "segments_cache_rebuilds_total",
    "Rebuilds of the cache from segment-memberships after its sentinel was found missing.",
    ["outcome"],
)


class RebuildFailed(Exception):
    """The cache could not be rebuilt for a reason other than Redis (e.g. Kafka)."""


@dataclass
class Backoff:
    """Exponential backoff with full jitter: first, first*2, ... capped at maximum seconds."""

    first: float = 0.1
    maximum: float = 5.0
    attempt: int = 0

    def next_delay(self) -> float:
        delay = min(self.maximum, self.first * (2**self.attempt))
        self.attempt += 1
        return random.uniform(delay / 2, delay)

    def reset(self) -> None:
        self.attempt = 0


async def wait_or_stop(stop: asyncio.Event, seconds: float) -> bool:
    """Waits `seconds` unless stop is set first; True when stopped."""
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)
    return stop.is_set()


async def wait_for_topic(bootstrap: str, topic: str, stop: asyncio.Event) -> bool:
    """Waits until `topic` exists (the worker creates it); False when stopped first.

    A consumer subscribed to a missing topic waits in start() without end, deaf to stop.
    """
    from aiokafka.admin import AIOKafkaAdminClient

    backoff, logged = Backoff(0.2, 5.0), 0.0
    while not stop.is_set():
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        try:
            await admin.start()
            if topic in set(await admin.list_topics()):
                return True
        except (KafkaError, OSError) as error:
            log.warning("kafka_unavailable waiting_for=%s error=%s", topic, error)
        finally:
            await admin.close()
        if time.monotonic() - logged > 30:
            log.info("waiting_for_topic topic=%s (the worker creates it)", topic)
            logged = time.monotonic()
        if await wait_or_stop(stop, backoff.next_delay()):
            break
    return False


@dataclass
class SinkStats:
    batches: int = 0
    changes_applied: int = 0
    changes_ignored: int = 0
    failed_attempts: int = 0
    resyncs: int = 0
    rebuilding: bool = False
    redis_ok: bool = True
    last_error: str = ""
    positions: dict[TopicPartition, int] = field(default_factory=dict)


class CacheSink:
    """Consumes segment-changes with its own consumer group and applies them to Redis.

    At-least-once: a batch's offsets are committed only after its pipeline succeeded; while
    Redis is down the same batch is retried with backoff (nothing new is read), and a
    restarted sink resumes from the last committed offsets. The seq check in the Lua scripts
    makes the repeats harmless.
    """

    def __init__(
        self,
        cache: RedisCache,
        *,
        bootstrap: str,
        topic: str,
        group_id: str,
        batch_size: int = 2000,
        backoff: Backoff | None = None,
        churn: ChurnHistory | None = None,
        memberships_topic: str | None = None,
        check_every_s: float = 1.0,
    ) -> None:
        self.cache = cache
        self.bootstrap = bootstrap
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
        self._next_check = 0.0
        self.stats = SinkStats()
        self.consumer: AIOKafkaConsumer | None = None

    async def run(self, stop: asyncio.Event) -> None:
        if not await wait_for_topic(self.bootstrap, self.topic, stop):
            return
        consumer = AIOKafkaConsumer(
            self.topic,
            bootstrap_servers=self.bootstrap,
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            max_poll_records=self.batch_size,
            # A long Redis outage holds one batch; stay in the group meanwhile.
            max_poll_interval_ms=30 * 60 * 1000,
        )
        self.consumer = consumer
        await consumer.start()
        log.info("cache_sink_started topic=%s group=%s", self.topic, self.group_id)
        try:
            while not stop.is_set():
                due = self.memberships_topic and time.monotonic() >= self._next_check
                if due and not await self._check_until_complete(stop):
                    return
                batches = await consumer.getmany(timeout_ms=200, max_records=self.batch_size)
                if not batches:
                    continue
                changes, offsets = self._decode(batches)
                if not await self._apply_until_done(changes, stop):
                    return  # stopped mid-retry: offsets stay uncommitted, replayed on restart
                try:
                    await consumer.commit(offsets)
                    self.stats.positions.update(offsets)
                    record_lag(consumer, self.group_id, offsets)
                except (CommitFailedError, KafkaError) as error:
                    # A rebalance moved the partitions: their new owner re-applies (no-ops).
                    log.warning("cache_sink_commit_failed error=%s", error)
        finally:
            await consumer.stop()
            log.info("cache_sink_stopped")

    def _decode(self, batches: dict) -> tuple[list[dict], dict[TopicPartition, int]]:
        changes: list[dict] = []
        offsets: dict[TopicPartition, int] = {}
        for tp, records in batches.items():
            for record in records:
                try:
                    changes.append(decode_change(record.value))
                except (ValueError, TypeError) as error:
                    CACHE_UNDECODABLE.inc()
                    log.warning(
                        "cache_sink_skip topic=%s partition=%d offset=%d reason=%s",
                        tp.topic,
                        tp.partition,
                        record.offset,
                        error,
                    )
            offsets[tp] = records[-1].offset + 1
        return changes, offsets

    async def _apply_until_done(self, changes: list[dict], stop: asyncio.Event) -> bool:
        writes = [CacheWrite.from_change(change) for change in changes]
        while True:
            try:
                if self.memberships_topic and not await self._complete_cache(stop):
                    return False
                results = await self.cache.apply(writes)
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
            self.stats.batches += 1
            applied = sum(1 for r in results if r.applied)
            self.stats.changes_applied += applied
            self.stats.changes_ignored += len(results) - applied
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
        from streams.serving.resync import resync_cache

        self._next_check = time.monotonic() + self.check_every_s
        if await self.cache.is_complete():
            CACHE_COMPLETE.set(1)
            return True
        CACHE_COMPLETE.set(0)
        self.stats.rebuilding = True
        log.warning(
            "cache_sink_cache_lost sentinel=%s action=resync topic=%s",
            self.cache.keys.sentinel(),
            self.memberships_topic,
        )
        assert self.memberships_topic is not None
        started = time.monotonic()
        rebuild = asyncio.ensure_future(
            resync_cache(
                self.cache, bootstrap=self.bootstrap, topic=self.memberships_topic, flush=False
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
            "cache_sink_resynced members=%d written=%d seconds=%.1f",
            result.members,
            result.applied,
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


def record_lag(consumer: AIOKafkaConsumer, group: str, offsets: dict) -> None:
    """Lag = the partition's high watermark (as last fetched) - the committed offset."""
    for tp, offset in offsets.items():
        highwater = consumer.highwater(tp)
        if highwater is not None:
            CONSUMER_LAG.labels(group, str(tp.partition)).set(max(0, highwater - offset))


class ChurnHistory:
    """Entries and exits per segment and cause in hourly buckets (the last 48 hours)."""

    def __init__(self, hours: int = 48, sample_every_s: float = 60.0) -> None:
        self.hours = hours
        self.sample_every_s = sample_every_s
        self.buckets: dict[int, dict[tuple[str, str, str], int]] = {}
        self.sizes: deque[tuple[float, dict[str, int]]] = deque(
            maxlen=int(hours * 3600 / sample_every_s) + 1
        )

    def sample_sizes(self, sizes: dict[str, int], now: float) -> None:
        """Keeps segment sizes for the size-over-time chart (one sample per interval)."""
        if not self.sizes or now - self.sizes[-1][0] >= self.sample_every_s * 0.99:
            self.sizes.append((now, dict(sizes)))

    def history(self, now: float) -> dict[str, Any]:
        """The dashboard's series: hourly entries/exits, exit causes, sampled sizes."""
        current = int(now // 3600)
        hours = list(range(current - self.hours + 1, current + 1))
        entered: dict[str, list[int]] = {}
        exited: dict[str, list[int]] = {}
        causes: dict[str, dict[str, int]] = {}
        for index, hour in enumerate(hours):
            for (segment, change, cause), count in self.buckets.get(hour, {}).items():
                series = entered if change == "entered" else exited
                series.setdefault(segment, [0] * len(hours))[index] += count
                if change == "exited":
                    per = causes.setdefault(segment, {})
                    per[cause] = per.get(cause, 0) + count
        return {
            "hours": [hour * 3600 for hour in hours],
            "entered": entered,
            "exited": exited,
            "exit_causes": causes,
            "sizes": [{"at": at, "sizes": sizes} for at, sizes in self.sizes],
        }

    def record(self, segment: str, change: str, cause: str, now: float) -> None:
        hour = int(now // 3600)
        bucket = self.buckets.setdefault(hour, {})
        bucket[(segment, change, cause)] = bucket.get((segment, change, cause), 0) + 1
        for old in [h for h in self.buckets if h <= hour - self.hours]:
            del self.buckets[old]

    def rates(self, now: float) -> dict[str, dict[str, Any]]:
        """Per segment: entries and exits in the trailing hour, and the top exit cause."""
        out: dict[str, dict[str, Any]] = {}
        hour, into = int(now // 3600), (now % 3600) / 3600
        causes: dict[str, dict[str, int]] = {}
        for bucket_hour, weight in ((hour, 1.0), (hour - 1, 1.0 - into)):
            for (segment, change, cause), count in self.buckets.get(bucket_hour, {}).items():
                entry = out.setdefault(segment, {"entered_last_hour": 0, "exited_last_hour": 0})
                entry[f"{change}_last_hour"] += round(count * weight)
                if change == "exited":
                    per = causes.setdefault(segment, {})
                    per[cause] = per.get(cause, 0) + count
        for segment, per in causes.items():
            out[segment]["top_exit_cause"] = max(per, key=per.__getitem__)
        return out


def record_metrics(
    results: Sequence[Applied], changes: Sequence[dict], churn: ChurnHistory | None = None
) -> None:
    """Churn metrics from applied (newer-seq) changes, so a replayed change counts once."""
    for result, change in zip(results, changes, strict=True):
        if not result.applied:
            continue
        cause = change.get("cause") or ""
        SEGMENT_CHANGES.labels(change["segment"], change["change"], cause).inc()
        if churn is not None:
            churn.record(change["segment"], change["change"], cause, time.time())
        if change["change"] == "exited" and result.previous:
            _seq, was_member, since = parse_field(result.previous)
            if was_member:
                seconds = _seconds_between(since, change["at"])
                if seconds is not None and seconds >= 0:
                    TIME_IN_SEGMENT.labels(change["segment"]).observe(seconds)


def _seconds_between(start: str, end: str) -> float | None:
    try:
        return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    except ValueError:
        return None
