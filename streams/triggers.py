"""Trigger dispatcher: segment-changes -> webhooks, at most once per change, with a dead letter.

Delivery contract (docs/serving.md has the long form):

* A change fires a trigger when its segment and kind (`entered`/`exited`) match. The POST
  carries `Idempotency-Key: <change_id>`.
* At most once per (trigger, change_id), also across crashes: before the first attempt the
  dispatcher claims a marker in Redis (SET-if-absent in a Lua script, together with the
  per-customer cooldown). A redelivered change whose marker is `done`, `dead` or
  `cooldown` is skipped. One left `pending` by a dispatcher that died mid-call has an
  unknown outcome: it is never called again but written to the dead-letter topic with
  reason `outcome-unknown`, for a person to decide (the receiver may have it).
* Retries (timeouts, connection errors, 5xx, 408, 429) within one claim re-send the same
  Idempotency-Key, so a receiver that honours it sees one effect.
* History is not replayed: a new consumer group starts at the end of the topic, and a
  change whose `at` is older than `max_age` at dispatch time is skipped (counted).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import aiohttp
import click
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from prometheus_client import Counter, Histogram
from redis.exceptions import RedisError

from segments.rules.ruleset import Trigger
from streams.cache_sink import Backoff, record_lag, wait_for_topic, wait_or_stop
from streams.sinks.redis import decode_change

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
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
)

# KEYS[1] = fired marker of (trigger, change), KEYS[2] = cooldown of (trigger, customer);
# both carry the customer id as hash tag, so one slot. ARGV = owner, marker ttl ms,
# cooldown ms, change id. Returns the marker's existing state, "cooldown" or "claimed".
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

_RETRYABLE_STATUS = frozenset({408, 425, 429})


@dataclass(frozen=True)
class DispatchConfig:
    max_age_s: float = 6 * 3600.0  # older changes never fire (replays from history)
    attempts: int = 6  # webhook attempts before the dead letter
    backoff_first_s: float = 0.5
    backoff_max_s: float = 30.0
    timeout_s: float = 5.0  # per attempt
    concurrency: int = 64  # webhook calls in flight
    lease_s: float = 120.0  # how long another dispatcher's pending claim may be in flight
    from_beginning: bool = False  # a new group starts at the start of the topic (asked for)

    @property
    def marker_ttl_ms(self) -> int:
        return int(max(7 * 86400.0, 2 * self.max_age_s) * 1000)


@dataclass
class DispatchStats:
    fired: int = 0
    dead: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def skip(self, reason: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1


def _epoch_seconds(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


class _ReadyWhenPositioned(ConsumerRebalanceListener):
    """Sets `ready` once every assigned partition has a resolved position.

    With a new group starting at "latest", a change produced after `ready` is seen.
    """

    def __init__(self, consumer: AIOKafkaConsumer, ready: asyncio.Event) -> None:
        self.consumer, self.ready = consumer, ready

    async def on_partitions_revoked(self, revoked) -> None:
        pass

    async def on_partitions_assigned(self, assigned) -> None:
        # A new group starts at the end; commit that start at once, so a restart before
        # the first change resumes there instead of jumping to a later end.
        start = {}
        for tp in assigned:
            position = await self.consumer.position(tp)
            if await self.consumer.committed(tp) is None:
                start[tp] = position
        if start:
            await self.consumer.commit(start)
        self.ready.set()


class TriggerDispatcher:
    """Consumes segment-changes (own consumer group) and calls each matching trigger."""

    def __init__(
        self,
        redis_client: Any,
        triggers: Sequence[Trigger],
        *,
        bootstrap: str,
        topic: str,
        dlq_topic: str,
        group_id: str,
        redis_prefix: str = "",
        config: DispatchConfig | None = None,
    ) -> None:
        self.redis = redis_client
        self.triggers = list(triggers)
        self.bootstrap, self.topic, self.dlq_topic = bootstrap, topic, dlq_topic
        self.group_id = group_id
        self.prefix = redis_prefix
        self.config = config or DispatchConfig()
        self.owner = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.stats = DispatchStats()
        self.ready = asyncio.Event()  # set once partitions are assigned and positioned
        self._claim = redis_client.register_script(CLAIM_SCRIPT)
        self._by_kind: dict[tuple[str, str], list[Trigger]] = {}
        for trigger in self.triggers:
            self._by_kind.setdefault((trigger.segment, trigger.on), []).append(trigger)

    def marker_key(self, trigger: Trigger, change: dict[str, Any]) -> str:
        return f"{self.prefix}trig:{{{change['customer_id']}}}:{trigger.name}:{change['change_id']}"

    def cooldown_key(self, trigger: Trigger, customer_id: str) -> str:
        return f"{self.prefix}trigcool:{{{customer_id}}}:{trigger.name}"

    async def run(self, stop: asyncio.Event) -> None:
        if not await wait_for_topic(self.bootstrap, self.topic, stop):
            return
        consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=self.group_id,
            enable_auto_commit=False,
            auto_offset_reset="earliest" if self.config.from_beginning else "latest",
            max_poll_records=500,
            max_poll_interval_ms=30 * 60 * 1000,
        )
        producer = AIOKafkaProducer(bootstrap_servers=self.bootstrap, acks="all")
        timeout = aiohttp.ClientTimeout(total=self.config.timeout_s)
        await ensure_topic(self.bootstrap, self.dlq_topic)
        await producer.start()
        await consumer.start()
        consumer.subscribe([self.topic], listener=_ReadyWhenPositioned(consumer, self.ready))
        semaphore = asyncio.Semaphore(self.config.concurrency)
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                log.info("trigger_dispatcher_started triggers=%d", len(self.triggers))
                while not stop.is_set():
                    batches = await consumer.getmany(timeout_ms=200)
                    if not batches:
                        continue
                    jobs = []
                    offsets: dict[TopicPartition, int] = {}
                    for tp, records in batches.items():
                        for record in records:
                            jobs.extend(self._jobs(record.value))
                        offsets[tp] = records[-1].offset + 1

                    async def guarded(trigger: Trigger, change: dict[str, Any]) -> bool:
                        async with semaphore:
                            return await self._dispatch(session, producer, trigger, change, stop)

                    done = await asyncio.gather(*(guarded(t, c) for t, c in jobs))
                    if not all(done):
                        return  # stopped mid-dispatch: leave the offsets for the next run
                    try:
                        await consumer.commit(offsets)
                        record_lag(consumer, self.group_id, offsets)
                    except (CommitFailedError, KafkaError) as error:
                        log.warning("trigger_commit_failed error=%s", error)
        finally:
            await consumer.stop()
            await producer.stop()
            log.info("trigger_dispatcher_stopped")

    def _jobs(self, raw: bytes) -> list[tuple[Trigger, dict[str, Any]]]:
        try:
            change = decode_change(raw)
        except (ValueError, TypeError):
            return []  # the cache sink counts undecodable changes
        change.setdefault(
            "change_id", f"{change['customer_id']}:{change['segment']}:{change['seq']}"
        )
        matches = self._by_kind.get((change["segment"], change["change"]), [])
        return [(trigger, change) for trigger in matches]

    async def _dispatch(
        self,
        session: aiohttp.ClientSession,
        producer: AIOKafkaProducer,
        trigger: Trigger,
        change: dict[str, Any],
        stop: asyncio.Event,
    ) -> bool:
        """Handles one (trigger, change) to a final outcome; False only when stopped."""
        try:
            age = time.time() - _epoch_seconds(change["at"])
        except ValueError:
            age = float("inf")
        if age > self.config.max_age_s:
            return self._skip(trigger, "too-old")
        state = await self._redis_retry(lambda: self._claim_marker(trigger, change), stop)
        if state is None:
            return False
        if state == "claimed":
            return await self._deliver(session, producer, trigger, change, stop)
        if state == "cooldown":
            return self._skip(trigger, "cooldown")
        if state.startswith("pending:"):
            return await self._pending_elsewhere(producer, trigger, change, stop)
        return self._skip(trigger, f"already-{state}")

    async def _claim_marker(self, trigger: Trigger, change: dict[str, Any]) -> str:
        state = await self._claim(
            keys=[
                self.marker_key(trigger, change),
                self.cooldown_key(trigger, change["customer_id"]),
            ],
            args=[
                f"{self.owner}:{int(time.time() * 1000)}",
                self.config.marker_ttl_ms,
                trigger.cooldown // 1000,
                change["change_id"],
            ],
        )
        return state.decode() if isinstance(state, bytes) else str(state)

    async def _pending_elsewhere(self, producer, trigger, change, stop) -> bool:
        """A claim without an outcome: another dispatcher's call in flight, or one that died.

        Waits until it resolves or its lease runs out; then its outcome is unknown, and the
        change goes to the dead letter instead of risking a second call.
        """
        key = self.marker_key(trigger, change)
        while True:
            state = await self._redis_retry(lambda: self.redis.get(key), stop)
            if state is None and stop.is_set():
                return False
            state = state.decode() if isinstance(state, bytes) else (state or "")
            if not state.startswith("pending:"):
                return self._skip(trigger, f"already-{state or 'expired'}")
            claimed_ms = int(state.rsplit(":", 1)[1])
            remaining = claimed_ms / 1000 + self.config.lease_s - time.time()
            if remaining <= 0:
                await self._dead(producer, trigger, change, "outcome-unknown", 0, stop)
                return True
            if await wait_or_stop(stop, min(remaining, 1.0)):
                return False

    async def _deliver(self, session, producer, trigger, change, stop) -> bool:
        body = orjson.dumps(
            {
                "customer_id": change["customer_id"],
                "segment": change["segment"],
                "change": change["change"],
                "change_id": change["change_id"],
                "at": change["at"],
                "metrics": change.get("metrics") or {},
                "trigger": trigger.name,
            }
        )
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": change["change_id"],
            "User-Agent": "purchase-segments-triggers",
        }
        backoff = Backoff(self.config.backoff_first_s, self.config.backoff_max_s)
        reason = ""
        for attempt in range(1, self.config.attempts + 1):
            try:
                async with session.post(trigger.webhook, data=body, headers=headers) as response:
                    await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError) as error:
                status, reason = 0, f"{type(error).__name__}"
            if 200 <= status < 300:
                await self._redis_retry(lambda: self._mark(trigger, change, "done"), stop)
                self.stats.fired += 1
                TRIGGER_CALLS.labels(trigger.name, "fired", "").inc()
                TRIGGER_DELAY.labels(trigger.name).observe(
                    max(0.0, time.time() - _epoch_seconds(change["at"]))
                )
                return True
            if status:
                reason = f"http-{status}"
                if 400 <= status < 500 and status not in _RETRYABLE_STATUS:
                    break  # the receiver refuses this payload: retrying will not help
            log.warning(
                "trigger_attempt_failed trigger=%s change_id=%s attempt=%d reason=%s",
                trigger.name,
                change["change_id"],
                attempt,
                reason,
            )
            if attempt < self.config.attempts and await wait_or_stop(stop, backoff.next_delay()):
                # Stopped between attempts: no call is in flight and none succeeded, so
                # the claim can be released and the next run tries again from scratch.
                await self._release(trigger, change)
                return False
        await self._dead(producer, trigger, change, reason, attempt, stop)
        return True

    async def _release(self, trigger: Trigger, change: dict[str, Any]) -> None:
        try:
            await self.redis.delete(
                self.marker_key(trigger, change), self.cooldown_key(trigger, change["customer_id"])
            )
        except (RedisError, OSError) as error:  # then the next run dead-letters it as unknown
            log.warning("trigger_release_failed change_id=%s error=%s", change["change_id"], error)

    async def _mark(self, trigger: Trigger, change: dict[str, Any], state: str) -> None:
        await self.redis.set(self.marker_key(trigger, change), state, px=self.config.marker_ttl_ms)

    async def _dead(self, producer, trigger, change, reason: str, attempts: int, stop) -> None:
        record = orjson.dumps(
            {
                "trigger": trigger.name,
                "webhook": trigger.webhook,
                "reason": reason,
                "attempts": attempts,
                "change": change,
                "dead_at": time.time(),
            }
        )
        await producer.send_and_wait(
            self.dlq_topic,
            record,
            key=change["customer_id"].encode(),
            headers=[("reason", reason.encode())],
        )
        await self._redis_retry(lambda: self._mark(trigger, change, "dead"), stop)
        self.stats.dead += 1
        TRIGGER_CALLS.labels(trigger.name, "dead", reason).inc()
        log.error(
            "trigger_dead_letter trigger=%s change_id=%s reason=%s attempts=%d",
            trigger.name,
            change["change_id"],
            reason,
            attempts,
        )

    def _skip(self, trigger: Trigger, reason: str) -> bool:
        self.stats.skip(reason)
        TRIGGER_CALLS.labels(trigger.name, "skipped", reason).inc()
        return True

    async def _redis_retry(self, operation, stop: asyncio.Event):
        """Runs a Redis operation until it succeeds (backoff) or stop is set (returns None)."""
        backoff = Backoff(0.1, 5.0)
        while True:
            try:
                return await operation()
            except (RedisError, OSError) as error:
                log.warning("trigger_redis_unavailable error=%s", error)
                if await wait_or_stop(stop, backoff.next_delay()):
                    return None


async def ensure_topic(bootstrap: str, topic: str, partitions: int = 1) -> None:
    """Creates the dead-letter topic when missing (brokers may not auto-create topics)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if topic in set(await admin.list_topics()):
            return
        response = await admin.create_topics([NewTopic(topic, partitions, 1)])
        for _name, code, *_rest in getattr(response, "topic_errors", []):
            if code not in (0, TopicAlreadyExistsError.errno):
                raise KafkaError(f"creating {topic} failed with error code {code}")
    finally:
        await admin.close()


@click.command("triggers")
@click.option("--from-beginning", is_flag=True, help="a new consumer group reads all history")
@click.option("--max-age", type=float, default=6 * 3600.0, show_default=True,
              help="seconds; older changes never fire")  # fmt: skip
@click.option("--attempts", type=int, default=6, show_default=True)
@click.option("--lease", type=float, default=120.0, show_default=True,
              help="seconds a claimed call may stay unresolved before it is unknown")  # fmt: skip
@click.option("--group", default=None, help="consumer group (default <app_id>-triggers)")
def triggers_command(
    from_beginning: bool, max_age: float, attempts: int, lease: float, group: str | None
) -> None:
    """Run only the trigger dispatcher (also part of `segments serve`)."""
    import signal

    from streams.serving import ServingConfig

    config = ServingConfig.load()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        client = config.redis_client()
        dispatcher = TriggerDispatcher(
            client,
            config.ruleset().triggers,
            bootstrap=config.kafka_bootstrap,
            topic=config.changes_topic,
            dlq_topic=config.triggers_dlq_topic,
            group_id=group or f"{config.app_id}-triggers",
            redis_prefix=config.redis_prefix,
            config=DispatchConfig(
                max_age_s=max_age, attempts=attempts, lease_s=lease, from_beginning=from_beginning
            ),
        )
        ready = asyncio.create_task(dispatcher.ready.wait())
        ready.add_done_callback(lambda _: click.echo("triggers: ready", err=True))
        try:
            await dispatcher.run(stop)
        finally:
            ready.cancel()
            await client.aclose()

    asyncio.run(main())


if __name__ == "__main__":
    triggers_command()
