"""Trigger dispatcher: segment-changes -> webhooks, at least once per change, with a dead letter.

Delivery contract (docs/serving.md has the long form, docs/decisions/0006 the why):

* A change fires a trigger when its segment and kind (`entered`/`exited`) match. Every
  attempt of its POST carries `Idempotency-Key: <change_id>`: receivers dedupe on it.
* At least once per (trigger, change_id): a marker in Redis (`pending:<owner>:<first ms>`,
  then `done` or `dead`) is claimed in a Lua script together with the per-customer
  cooldown. A redelivered change whose marker is `done`, `dead` or `cooldown` is skipped;
  one still `pending` (a dispatcher stopped or killed during its retries) is taken over
  and called again, its retry span still counted from the first claim.
* Failures (timeouts, connection errors, 5xx, 408, 425, 429) are retried with exponential
  backoff and full jitter, honouring `Retry-After`, for `retry_span_s` from the first
  attempt; then the change goes to the dead-letter topic with its last reason.
* A change's offset is committed only once its calls reached an outcome (fired, dead or
  skipped): each partition commits up to its oldest unfinished change, while later
  changes are dispatched meanwhile (at most `max_pending` unfinished), so one failing
  receiver delays no other call, and a restart loses nothing.
* History is not replayed: a new consumer group starts at the end of the topic, and a
  change whose `at` is older than `max_age` at dispatch time is skipped (counted).
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import random
import time
import uuid
from collections.abc import Awaitable, Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any, Generic, TypeVar

import aiohttp
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from prometheus_client import Counter, Gauge, Histogram
from redis.exceptions import RedisError

from segments.changes import Change, CodecError
from segments.rules.ruleset import Trigger
from streams.kafka.connection import KafkaConnection
from streams.kafka.retry import Backoff, wait_or_stop
from streams.kafka.topics import ensure_topic, wait_for_topic
from streams.serving.metrics import record_lag
from streams.settings import Settings

log = logging.getLogger(__name__)

TRIGGER_CALLS = Counter(
    "segments_trigger_outcomes_total",
    "Trigger outcomes per change: fired, dead (to the DLQ), skipped (with reason).",
    ["trigger", "outcome", "reason"],
)
TRIGGER_DELAY = Histogram(
    "segments_trigger_delay_seconds",
    "From a change's `at` to the webhook's 2xx answer.",
    ["trigger"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600),
)
TRIGGER_FAILED_ATTEMPTS = Counter(
    "segments_trigger_failed_attempts_total",
    "Webhook attempts that failed (each is retried until the retry span ends).",
    ["trigger", "reason"],
)
TRIGGER_RETRYING = Gauge(
    "segments_trigger_retrying",
    "Changes whose webhook call failed and waits for its next attempt.",
    ["trigger"],
)

# KEYS[1] = fired marker of (trigger, change), KEYS[2] = cooldown of (trigger, customer);
# both carry the customer id as hash tag, so one slot. ARGV = owner:ms, marker ttl ms,
# cooldown ms, change id. Returns the marker's existing state (`pending:...` is taken
# over by the caller), "cooldown" or "claimed".
CLAIM_SCRIPT = """
local state = redis.call('GET', KEYS[1])
if state then return state end
local cooldown = tonumber(ARGV[3])
if cooldown > 0 and redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('SET', KEYS[1], 'cooldown', 'PX', ARGV[2])
  return 'cooldown'
end
redis.call('SET', KEYS[1], 'pending:' .. ARGV[1], 'PX', ARGV[2])
if cooldown > 0 then redis.call('SET', KEYS[2], ARGV[4], 'PX', cooldown) end
return 'claimed'
"""


def _hash_tag(customer_id: str) -> str:
    """`{<customer_id>}`: the claim script's two keys in one Redis Cluster slot.

    Redis hashes the text between the first `{` and the next `}`; an id that starts with
    `}` would leave that empty, and then each whole key is hashed (two slots): such an
    id gets a `_` in front, which keeps the tag non-empty and the same in both keys.
    """
    return f"{{_{customer_id}}}" if customer_id.startswith("}") else f"{{{customer_id}}}"


_RETRYABLE_STATUS = frozenset({408, 425, 429})
_WARN_EVERY_S = 10.0  # failed attempts are logged at most this often per trigger


@dataclass(frozen=True)
class RetrySchedule:
    """Exponential backoff with full jitter, bounded by a total span.

    The delay after the n-th failed attempt (n = 0 for the first) is uniform in
    [0, min(max_delay_s, first_s * 2**n)]; attempts stop `span_s` after the first one.
    """

    first_s: float = 1.0
    max_delay_s: float = 300.0
    span_s: float = 3600.0

    def bound(self, retry: int) -> float:
        if retry >= 64:  # 2**64 * any sane first delay is past every cap
            return self.max_delay_s
        return min(self.max_delay_s, self.first_s * 2.0**retry)

    def delay(self, retry: int, rng: random.Random | None = None) -> float:
        return (rng or random).uniform(0.0, self.bound(retry))

    def next_delay(
        self,
        retry: int,
        *,
        remaining: float,
        timed_out: bool = False,
        timeout_s: float = 0.0,
        retry_after: float | None = None,
        rng: random.Random | None = None,
    ) -> float | None:
        """Seconds to wait before the next attempt; None when the span leaves no room for one.

        After a timeout the wait is at least the timeout: the receiver may still be working
        on the call it did not answer in time, and the next attempt should not overlap it.
        A `Retry-After` is a lower bound; one that points past the span ends the retries.
        The last attempt is made when the span ends, not skipped.
        """
        if remaining <= 0:
            return None
        delay = self.delay(retry, rng)
        if timed_out:
            delay = max(delay, timeout_s)
        if retry_after is not None:
            if retry_after > remaining:
                return None
            delay = max(delay, retry_after)
        return min(delay, remaining)


def parse_retry_after(value: str | None, now: float) -> float | None:
    """`Retry-After` (seconds or an HTTP date) as seconds from `now`; None when absent or bad."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        moment = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return max(0.0, moment.timestamp() - now)


P = TypeVar("P", bound=Hashable)


class OffsetTracker(Generic[P]):
    """Which offset each partition may commit: the oldest unfinished record's, else the next.

    Records finish in any order (a failing call retries while later ones are delivered);
    a commit never passes a record whose calls have no outcome yet, so a restart
    redelivers it (at least once).
    """

    def __init__(self) -> None:
        self._unfinished: dict[P, set[int]] = {}
        self._next: dict[P, int] = {}
        self._committed: dict[P, int] = {}

    def start(self, partition: P, offset: int) -> None:
        """A record whose calls are being made."""
        self._unfinished.setdefault(partition, set()).add(offset)
        self.seen(partition, offset)

    def seen(self, partition: P, offset: int) -> None:
        """A record with nothing to do (no trigger matches)."""
        self._next[partition] = max(self._next.get(partition, 0), offset + 1)

    def finish(self, partition: P, offset: int) -> None:
        self._unfinished.get(partition, set()).discard(offset)

    @property
    def unfinished(self) -> int:
        return sum(len(offsets) for offsets in self._unfinished.values())

    def position(self, partition: P) -> int | None:
        unfinished = self._unfinished.get(partition)
        if unfinished:
            return min(unfinished)
        return self._next.get(partition)

    def committable(self, partitions: Iterable[P] | None = None) -> dict[P, int]:
        """Positions that moved since the last `committed()`, of `partitions` (default all)."""
        out = {}
        for partition in self._next if partitions is None else partitions:
            position = self.position(partition)
            if position is not None and position != self._committed.get(partition):
                out[partition] = position
        return out

    def committed(self, positions: dict[P, int]) -> None:
        self._committed.update(positions)

    def forget(self, partitions: Iterable[P]) -> None:
        """Partitions this consumer no longer owns (revoked): their new owner resumes them."""
        for partition in partitions:
            self._unfinished.pop(partition, None)
            self._next.pop(partition, None)
            self._committed.pop(partition, None)


DEFAULT_MAX_AGE_S = 6 * 3600.0  # serve's and triggers' --max-age default


def _setting(name: str) -> Any:
    """The default of a SEGMENTS_TRIGGER_* setting: defined once, in streams.settings."""
    return Settings.model_fields[name].default


@dataclass(frozen=True)
class DispatchConfig:
    """The dispatcher's part of the settings, plus the knobs only a caller sets."""

    max_age_s: float = DEFAULT_MAX_AGE_S  # older changes never fire (replays from history)
    # a failing call is retried this long from its first attempt
    retry_span_s: float = _setting("trigger_retry_span")
    # bound of the first retry delay; doubles per attempt
    retry_first_s: float = _setting("trigger_retry_delay")
    retry_max_delay_s: float = _setting("trigger_retry_max_delay")  # largest bound of one delay
    timeout_s: float = _setting("trigger_timeout")  # per attempt
    concurrency: int = _setting("trigger_concurrency")  # webhook calls in flight per webhook URL
    max_pending: int = 10_000  # unfinished changes before fetching pauses
    from_beginning: bool = False  # a new group starts at the start of the topic (asked for)
    replication_factor: int | None = None  # of the dead-letter topic; None: the broker's

    @property
    def marker_ttl_ms(self) -> int:
        return int(max(7 * 86400.0, 2 * self.max_age_s, 2 * self.retry_span_s) * 1000)

    @property
    def schedule(self) -> RetrySchedule:
        return RetrySchedule(self.retry_first_s, self.retry_max_delay_s, self.retry_span_s)

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: Any) -> DispatchConfig:
        """From streams.settings.Settings (its SEGMENTS_TRIGGER_* fields)."""
        values: dict[str, Any] = {
            "retry_span_s": settings.trigger_retry_span,
            "retry_first_s": settings.trigger_retry_delay,
            "retry_max_delay_s": settings.trigger_retry_max_delay,
            "timeout_s": settings.trigger_timeout,
            "concurrency": settings.trigger_concurrency,
            "replication_factor": settings.replication_factor,
        }
        return cls(**{**values, **overrides})


@dataclass
class DispatchStats:
    fired: int = 0
    dead: int = 0
    resumed: int = 0  # pending changes taken over (after a stop, crash or rebalance)
    failed_attempts: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]  # aiokafka is untyped
    """Hands revoked partitions over cleanly and sets `ready` once assigned ones are positioned.

    With a new group starting at "latest", a change produced after `ready` is seen.
    """

    def __init__(self, dispatcher: TriggerDispatcher, consumer: AIOKafkaConsumer) -> None:
        self.dispatcher, self.consumer = dispatcher, consumer

    async def on_partitions_revoked(self, revoked: set[TopicPartition]) -> None:
        await self.dispatcher._revoked(self.consumer, set(revoked))

    async def on_partitions_assigned(self, assigned: set[TopicPartition]) -> None:
        # A new group starts at the end; commit that start at once, so a restart before
        # the first change resumes there instead of jumping to a later end.
        start = {}
        for tp in assigned:
            position = await self.consumer.position(tp)
            if await self.consumer.committed(tp) is None:
                start[tp] = position
        if start:
            await self.consumer.commit(start)
        self.dispatcher.ready.set()


class TriggerDispatcher:
    """Consumes segment-changes (own consumer group) and calls each matching trigger."""

    def __init__(
        self,
        redis_client: Any,
        triggers: Sequence[Trigger],
        *,
        kafka: KafkaConnection,
        topic: str,
        dlq_topic: str,
        group_id: str,
        redis_prefix: str = "",
        config: DispatchConfig | None = None,
    ) -> None:
        self.redis = redis_client
        self.triggers = list(triggers)
        self.kafka, self.topic, self.dlq_topic = kafka, topic, dlq_topic
        self.group_id = group_id
        self.prefix = redis_prefix
        self.config = config or DispatchConfig()
        self.schedule = self.config.schedule
        self.owner = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.stats = DispatchStats()
        self.ready = asyncio.Event()  # set once partitions are assigned and positioned
        self._claim = redis_client.register_script(CLAIM_SCRIPT)
        self._by_kind: dict[tuple[str, str], list[Trigger]] = {}
        for trigger in self.triggers:
            self._by_kind.setdefault((trigger.segment, trigger.on), []).append(trigger)
        self._offsets: OffsetTracker[TopicPartition] = OffsetTracker()
        self._tasks: dict[TopicPartition, set[asyncio.Task[None]]] = {}
        self._failures: list[BaseException] = []
        self._in_flight: dict[str, asyncio.Task[Any]] = {}  # marker key -> its dispatch
        self._webhook_slots: dict[str, asyncio.Semaphore] = {}
        self._retrying: dict[str, int] = {}  # trigger -> changes waiting for a retry
        self._warned_at: dict[str, float] = {}
        self._paused = False
        self._last_commit = 0.0

    def marker_key(self, trigger: Trigger, change: Change) -> str:
        tag = _hash_tag(change.customer_id)
        return f"{self.prefix}trig:{tag}:{trigger.name}:{change.change_id}"

    def cooldown_key(self, trigger: Trigger, customer_id: str) -> str:
        return f"{self.prefix}trigcool:{_hash_tag(customer_id)}:{trigger.name}"

    async def run(self, stop: asyncio.Event) -> None:
        if not await wait_for_topic(self.kafka, self.topic, stop):
            return
        consumer = AIOKafkaConsumer(
            **self.kafka.aiokafka_args(
                group_id=self.group_id,
                enable_auto_commit=False,
                auto_offset_reset="earliest" if self.config.from_beginning else "latest",
                max_poll_records=500,
            )
        )
        producer = AIOKafkaProducer(**self.kafka.aiokafka_args(acks="all", enable_idempotence=True))
        timeout = aiohttp.ClientTimeout(total=self.config.timeout_s)
        await ensure_topic(
            self.kafka, self.dlq_topic, replication_factor=self.config.replication_factor
        )
        await producer.start()
        await consumer.start()
        consumer.subscribe([self.topic], listener=_Rebalance(self, consumer))
        # Calls are bounded per webhook by semaphores, not by the connector's pool (whose
        # queueing would count against the call's timeout).
        connector = aiohttp.TCPConnector(limit=0)
        try:
            async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:
                log.info("trigger_dispatcher_started triggers=%d", len(self.triggers))
                while not stop.is_set():
                    if self._failures:
                        raise self._failures[0]
                    self._flow_control(consumer)
                    batches = await consumer.getmany(timeout_ms=200)
                    for tp, records in batches.items():
                        for record in records:
                            self._start(session, producer, tp, record.offset, record.value, stop)
                    await self._commit(consumer)
        finally:
            # Calls in flight are abandoned (the receiver may have them: they are made
            # again on the next run, at least once); what finished is committed.
            await self._cancel(list(self._tasks))
            await self._commit(consumer, force=True)
            await consumer.stop()
            await producer.stop()
            log.info("trigger_dispatcher_stopped")

    def _start(
        self,
        session: aiohttp.ClientSession,
        producer: AIOKafkaProducer,
        tp: TopicPartition,
        offset: int,
        raw: bytes,
        stop: asyncio.Event,
    ) -> None:
        jobs = self._jobs(raw)
        if not jobs:
            self._offsets.seen(tp, offset)
            return
        self._offsets.start(tp, offset)

        async def handle() -> None:
            outcomes = await asyncio.gather(
                *(
                    self._dispatch(session, producer, trigger, change, stop)
                    for trigger, change in jobs
                )
            )
            if all(outcomes):
                self._offsets.finish(tp, offset)

        task = asyncio.create_task(handle(), name=f"trigger-{tp.partition}-{offset}")
        self._tasks.setdefault(tp, set()).add(task)
        task.add_done_callback(lambda done: self._task_done(tp, done))

    def _task_done(self, tp: TopicPartition, task: asyncio.Task[None]) -> None:
        self._tasks.get(tp, set()).discard(task)
        error = None if task.cancelled() else task.exception()
        if error is not None:
            self._failures.append(error)

    def _flow_control(self, consumer: AIOKafkaConsumer) -> None:
        """Pauses fetching while `max_pending` changes have no outcome (memory stays bounded)."""
        full = self._offsets.unfinished >= self.config.max_pending
        if full and not self._paused:
            log.warning(
                "trigger_dispatcher_paused unfinished=%d max_pending=%d",
                self._offsets.unfinished,
                self.config.max_pending,
            )
        if full:
            consumer.pause(*consumer.assignment())  # also partitions assigned since
        elif self._paused:
            consumer.resume(*consumer.paused())
            log.info("trigger_dispatcher_resumed unfinished=%d", self._offsets.unfinished)
        self._paused = full

    async def _commit(
        self,
        consumer: AIOKafkaConsumer,
        partitions: Iterable[TopicPartition] | None = None,
        *,
        force: bool = False,
    ) -> None:
        # At most once a second unless forced: a commit that fails (broker down) is retried
        # on the next one, without a warning every poll.
        if not force and time.monotonic() - self._last_commit < 1.0:
            return
        assigned = consumer.assignment()
        positions = {
            tp: offset
            for tp, offset in self._offsets.committable(partitions).items()
            if tp in assigned
        }
        if not positions:
            return
        self._last_commit = time.monotonic()
        try:
            await asyncio.wait_for(consumer.commit(positions), 30)
        except (CommitFailedError, KafkaError, TimeoutError) as error:
            log.warning("trigger_commit_failed error=%s", error)
            return
        self._offsets.committed(positions)
        record_lag(consumer, self.group_id, positions)

    async def _revoked(self, consumer: AIOKafkaConsumer, revoked: set[TopicPartition]) -> None:
        """Stops the revoked partitions' calls and commits what finished: the new owner
        takes their pending changes over, so no call is made by two dispatchers at once."""
        await self._cancel(revoked)
        await self._commit(consumer, revoked, force=True)
        self._offsets.forget(revoked)

    async def _cancel(self, partitions: Iterable[TopicPartition]) -> None:
        tasks = [task for tp in partitions for task in self._tasks.pop(tp, set())]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _jobs(self, raw: bytes) -> list[tuple[Trigger, Change]]:
        try:
            change = Change.from_json(raw)
        except CodecError:
            return []  # the cache sink counts undecodable changes
        matches = self._by_kind.get((change.segment, change.change), [])
        return [(trigger, change) for trigger in matches]

    async def _dispatch(
        self,
        session: aiohttp.ClientSession,
        producer: AIOKafkaProducer,
        trigger: Trigger,
        change: Change,
        stop: asyncio.Event,
    ) -> bool:
        """Handles one (trigger, change) to a final outcome; False only when stopped."""
        age = time.time() - change.at / 1_000_000
        if age > self.config.max_age_s:
            return self._skip(trigger, "too-old")
        key = self.marker_key(trigger, change)
        # The same change published twice waits for the first's outcome: one call at a time.
        while (earlier := self._in_flight.get(key)) is not None:
            await asyncio.wait({earlier})
        me = asyncio.current_task()
        assert me is not None
        self._in_flight[key] = me
        # A webhook slot is held from the claim to the outcome (not while waiting for a
        # retry): it bounds the calls in flight to the webhook, the Redis commands behind
        # them, and so the calls a crash leaves without their `done` mark.
        slot = _Slot(
            self._webhook_slots.setdefault(
                trigger.webhook, asyncio.Semaphore(self.config.concurrency)
            )
        )
        try:
            await slot.take()
            now = time.time()
            state = await self._redis_retry(lambda: self._claim_marker(trigger, change, now), stop)
            if state is None:
                return False
            if state == "claimed":
                return await self._deliver(session, producer, trigger, change, now, slot, stop)
            if state.startswith("pending:"):
                # Claimed by a run that was stopped, killed or lost the partition before an
                # outcome: make the call again (the receiver dedupes on the key).
                first_at = int(state.rsplit(":", 1)[1]) / 1000
                self.stats.resumed += 1
                log.info(
                    "trigger_resumed trigger=%s change_id=%s first_attempt_age_s=%.0f",
                    trigger.name,
                    change.change_id,
                    now - first_at,
                )
                return await self._deliver(session, producer, trigger, change, first_at, slot, stop)
            if state == "cooldown":
                return self._skip(trigger, "cooldown")
            return self._skip(trigger, f"already-{state}")
        finally:
            slot.give()
            if self._in_flight.get(key) is me:
                del self._in_flight[key]

    async def _claim_marker(self, trigger: Trigger, change: Change, now: float) -> str:
        state = await self._claim(
            keys=[
                self.marker_key(trigger, change),
                self.cooldown_key(trigger, change.customer_id),
            ],
            args=[
                f"{self.owner}:{int(now * 1000)}",
                self.config.marker_ttl_ms,
                trigger.cooldown // 1000,
                change.change_id,
            ],
        )
        return state.decode() if isinstance(state, bytes) else str(state)

    async def _deliver(
        self,
        session: aiohttp.ClientSession,
        producer: AIOKafkaProducer,
        trigger: Trigger,
        change: Change,
        first_at: float,
        slot: _Slot,
        stop: asyncio.Event,
    ) -> bool:
        """Calls the webhook until a 2xx, a refusal or the end of the retry span."""
        body = orjson.dumps(
            {
                "customer_id": change.customer_id,
                "segment": change.segment,
                "change": change.change,
                "change_id": change.change_id,
                "at": change.at_iso,
                "metrics": change.metrics,
                "trigger": trigger.name,
            }
        )
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": change.change_id,
            "User-Agent": "purchase-segments-triggers",
        }
        deadline = first_at + self.schedule.span_s
        attempt = 0
        while True:
            attempt += 1
            status, reason, retry_after, timed_out = await _post(
                session, trigger.webhook, body, headers
            )
            if 200 <= status < 300:
                await self._redis_retry(lambda: self._mark(trigger, change, "done"), stop)
                self.stats.fired += 1
                TRIGGER_CALLS.labels(trigger.name, "fired", "").inc()
                TRIGGER_DELAY.labels(trigger.name).observe(
                    max(0.0, time.time() - change.at / 1_000_000)
                )
                return True
            self.stats.failed_attempts += 1
            TRIGGER_FAILED_ATTEMPTS.labels(trigger.name, reason).inc()
            if 400 <= status < 500 and status not in _RETRYABLE_STATUS:
                break  # the receiver refuses this payload: retrying will not help
            now = time.time()
            delay = self.schedule.next_delay(
                attempt - 1,
                remaining=deadline - now,
                timed_out=timed_out,
                timeout_s=self.config.timeout_s,
                retry_after=parse_retry_after(retry_after, now),
            )
            if delay is None:
                break
            self._attempt_failed(trigger, change, attempt, reason, delay)
            self._retrying[trigger.name] = self._retrying.get(trigger.name, 0) + 1
            TRIGGER_RETRYING.labels(trigger.name).inc()
            slot.give()  # other changes' calls go on while this one waits
            try:
                if await wait_or_stop(stop, delay):
                    return False  # the marker stays pending: the next run takes it over
            finally:
                self._retrying[trigger.name] -= 1
                TRIGGER_RETRYING.labels(trigger.name).dec()
            await slot.take()
        return await self._dead(producer, trigger, change, reason, attempt, first_at, stop)

    def _attempt_failed(
        self, trigger: Trigger, change: Change, attempt: int, reason: str, delay: float
    ) -> None:
        """Logs a failed attempt: each at DEBUG, at most one WARNING per trigger per 10 s."""
        now = time.monotonic()
        level = logging.DEBUG
        if now - self._warned_at.get(trigger.name, -_WARN_EVERY_S) >= _WARN_EVERY_S:
            self._warned_at[trigger.name] = now
            level = logging.WARNING
        log.log(
            level,
            "trigger_attempt_failed trigger=%s change_id=%s attempt=%d reason=%s retry_in=%.2fs"
            " retrying=%d",
            trigger.name,
            change.change_id,
            attempt,
            reason,
            delay,
            self._retrying.get(trigger.name, 0) + 1,
        )

    async def _mark(self, trigger: Trigger, change: Change, state: str) -> bool:
        await self.redis.set(self.marker_key(trigger, change), state, px=self.config.marker_ttl_ms)
        return True

    async def _dead(
        self,
        producer: AIOKafkaProducer,
        trigger: Trigger,
        change: Change,
        reason: str,
        attempts: int,
        first_at: float,
        stop: asyncio.Event,
    ) -> bool:
        """Writes the change to the dead-letter topic, then marks it `dead`; False if stopped."""
        record = orjson.dumps(
            {
                "trigger": trigger.name,
                "webhook": trigger.webhook,
                "reason": reason,
                "attempts": attempts,
                "change": change.to_dict(),
                "first_attempt_at": first_at,
                "dead_at": time.time(),
            }
        )
        sent = await _retry(
            lambda: producer.send_and_wait(
                self.dlq_topic,
                record,
                key=change.customer_id.encode(),
                headers=[("reason", reason.encode())],
            ),
            (KafkaError, OSError),
            "trigger_dlq_unavailable",
            stop,
        )
        if sent is None:
            return False
        if await self._redis_retry(lambda: self._mark(trigger, change, "dead"), stop) is None:
            return False
        self.stats.dead += 1
        TRIGGER_CALLS.labels(trigger.name, "dead", reason).inc()
        log.error(
            "trigger_dead_letter trigger=%s change_id=%s reason=%s attempts=%d after_s=%.0f",
            trigger.name,
            change.change_id,
            reason,
            attempts,
            time.time() - first_at,
        )
        return True

    def _skip(self, trigger: Trigger, reason: str) -> bool:
        self.stats.skip(reason)
        TRIGGER_CALLS.labels(trigger.name, "skipped", reason).inc()
        return True

    async def _redis_retry(
        self, operation: Callable[[], Awaitable[Any]], stop: asyncio.Event
    ) -> Any:
        """Runs a Redis operation until it succeeds (backoff) or stop is set (returns None)."""
        return await _retry(operation, (RedisError, OSError), "trigger_redis_unavailable", stop)


class _Slot:
    """One of a webhook's concurrency slots, given back during retry waits."""

    def __init__(self, semaphore: asyncio.Semaphore) -> None:
        self.semaphore, self.held = semaphore, False

    async def take(self) -> None:
        await self.semaphore.acquire()
        self.held = True

    def give(self) -> None:
        if self.held:
            self.held = False
            self.semaphore.release()


async def _post(
    session: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]
) -> tuple[int, str, str | None, bool]:
    """One attempt: (status or 0, reason, Retry-After header, timed out)."""
    try:
        async with session.post(url, data=body, headers=headers) as response:
            await response.read()
            return (
                response.status,
                f"http-{response.status}",
                response.headers.get("Retry-After"),
                False,
            )
    except TimeoutError:
        # aiohttp closed the connection: this attempt is no longer in flight on our side.
        return 0, "TimeoutError", None, True
    except aiohttp.ClientError as error:
        return 0, type(error).__name__, None, False


async def _retry(
    operation: Callable[[], Awaitable[Any]],
    errors: tuple[type[BaseException], ...],
    event: str,
    stop: asyncio.Event,
) -> Any:
    """Runs `operation` until it succeeds (backoff up to 5 s) or stop is set (returns None)."""
    backoff = Backoff(0.1, 5.0)
    while True:
        try:
            return await operation()
        except errors as error:
            log.warning("%s error=%s", event, error)
            if await wait_or_stop(stop, backoff.next_delay()):
                return None
