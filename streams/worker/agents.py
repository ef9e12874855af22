"""The Faust agents: messages in, the processor's sends out; the adapter agent; the tick timer.

Everything a segment means lives in segments/, and the worker's delivery
logic in streams.worker.processor; this module only moves messages between Kafka
and those, so an agent body is a handful of lines.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Iterable
from typing import Any

from segments.adapters import IdentityMap, from_pos_receipt, from_shopify_order
from segments.events import Rejection, encode_event
from segments.rules.evaluator import CompiledRules
from streams.worker.app import SegmentsApp
from streams.worker.dlq import dead_letter
from streams.worker.faust_store import FaustCustomerTable, committed_offsets
from streams.worker.metrics import DEADLINE_LATENESS
from streams.worker.processor import DeadLetter, Flush, Outgoing, Publish, SegmentProcessor
from streams.worker.timers import TICK, wall_now

log = logging.getLogger(__name__)

TICK_INTERVAL_S = 0.5  # seconds between ticks per owned partition


def build_processor(segments_app: SegmentsApp, rules: CompiledRules) -> SegmentProcessor:
    """The processor over the app's `customers` table and its consumer's committed offsets."""
    event_clock = segments_app.settings.clock == "event"

    def observe_lateness(due: int) -> None:
        DEADLINE_LATENESS.observe(max(0, wall_now() - due) / 1_000_000)

    return SegmentProcessor(
        rules,
        segments_app.names,
        FaustCustomerTable(segments_app.customers),
        committed_offsets(segments_app.app, segments_app.names.purchases),
        event_clock=event_clock,
        on_due=None if event_clock else observe_lateness,
    )


#: Seconds between flushes of the processor outside commits: bounds how long a change
#: waits in memory (the producer's linger comes on top); each flush still covers every
#: event handled since the one before.
FLUSH_INTERVAL_S = 0.02
#: Dirty customers above which the agent flushes at once: bounds the memory they take.
MAX_DIRTY = 20_000


async def send_all(
    producer: Any, dlq_topic: str, table: FaustCustomerTable, outgoing: Iterable[Outgoing]
) -> None:
    """Queue every send; a Publish is marked acked once Kafka has all its messages.

    Faust flushes the producer before it commits an offset, so nothing here is
    awaited beyond the queueing.
    """
    for item in outgoing:
        if isinstance(item, DeadLetter):
            await dead_letter(
                producer, dlq_topic, item.key, item.value, item.reason, item.message, item.source
            )
        elif isinstance(item, Flush):
            await send_flush(producer, table, item)
        else:
            await _publish(producer, item)


async def send_flush(producer: Any, table: FaustCustomerTable, flush: Flush) -> None:
    """A flush's changelog records (their values are in the local table already), then its
    changes and membership records. Once the last changelog record of a partition is in
    Kafka its offset is recorded as persisted, as Faust does after each changelog send."""
    changelog = table.changelog_topic
    last: dict[int, Any] = {}
    for partition, key, value in flush.writes:
        last[partition] = await producer.send(changelog, key, value, partition, None, None)
    for partition, future in last.items():
        future.add_done_callback(_on_changelog_sent(table, partition))
    if flush.publish is not None:
        await _publish(producer, flush.publish)


async def _publish(producer: Any, item: Publish) -> None:
    futures = [
        await producer.send(topic, key, value, None, None, None)
        for topic, key, value in item.messages
    ]
    asyncio.gather(*futures).add_done_callback(_on_sent(item))


def _on_changelog_sent(table: FaustCustomerTable, partition: int) -> Any:
    def done(result: asyncio.Future[Any]) -> None:
        if not result.cancelled() and result.exception() is None:
            table.persisted(partition, result.result().offset)

    return done


def _on_sent(item: Publish) -> Any:
    def done(result: asyncio.Future[Any]) -> None:
        if result.cancelled() or result.exception() is not None:
            log.error("publish_failed messages=%d kept_in_outbox", len(item.messages))
            return
        item.acked()

    return done


class Flusher:
    """Flushes the processor and sends what it wrote, one flush at a time (a later flush's
    records of a customer never overtake an earlier one's)."""

    def __init__(self, segments_app: SegmentsApp, processor: SegmentProcessor) -> None:
        self.segments_app = segments_app
        self.processor = processor
        table = processor.table
        assert isinstance(table, FaustCustomerTable)
        self.table = table
        self.lock = asyncio.Lock()

    async def flush(self) -> bool:
        """False when the sends failed: the offsets must then not be committed."""
        async with self.lock:
            flush = self.processor.flush()
            if flush is None:
                return True
            try:
                await send_flush(self.segments_app.app.producer, self.table, flush)
            except Exception:
                # The values are in the local table with their changes in the outbox:
                # reopening the partitions republishes them. Nothing is committed now.
                log.exception("flush_send_failed writes=%d", len(flush.writes))
                self.processor.forget_partitions()
                return False
            return True

    async def send(self, outgoing: list[Outgoing]) -> None:
        async with self.lock:
            await send_all(
                self.segments_app.app.producer,
                self.segments_app.names.purchases_dlq,
                self.table,
                outgoing,
            )


class AdapterProcessor:
    """Native POS receipts and online orders -> canonical events on `purchases`, keyed by customer.

    The canonical event goes through the same topic as every other producer's,
    so the segment agent sees one stream per customer and dedupes on event_id.
    """

    def __init__(
        self, segments_app: SegmentsApp, rules: CompiledRules, identities: IdentityMap
    ) -> None:
        self.segments_app = segments_app
        self.names = segments_app.names
        self.identities = identities
        ruleset = rules.ruleset
        self.currencies = frozenset((ruleset.base_currency, *ruleset.rates))
        self.counts: Counter[str] = Counter()

    async def handle(self, topic: str, partition: int, offset: int, key: Any, value: Any) -> None:
        producer = self.segments_app.app.producer
        try:
            if topic == self.names.purchases_pos:
                event = from_pos_receipt(value or b"", self.identities, self.currencies)
            else:
                event = from_shopify_order(value or b"", self.identities, self.currencies)
        except Rejection as rejection:
            self.counts[f"adapter_rejected.{rejection.reason}"] += 1
            await dead_letter(
                producer,
                self.names.purchases_dlq,
                key,
                value,
                rejection.reason,
                rejection.message,
                (topic, partition, offset),
            )
            return
        self.counts["adapted"] += 1
        await producer.send(
            self.names.purchases, event.customer_id.encode(), encode_event(event), None, None, None
        )


def register_agents(
    segments_app: SegmentsApp, processor: SegmentProcessor, adapter: AdapterProcessor
) -> None:
    """Attach the agents, the tick timer and the rebalance hook to the app."""
    app = segments_app.app
    names = segments_app.names

    flusher = Flusher(segments_app, processor)
    # Every offsets commit flushes the processor after computing its offsets
    # (streams.worker.faust_fixes.FlushingConsumer, decision 0014).
    app.flush_before_commit = flusher.flush  # type: ignore[attr-defined]

    @app.agent(segments_app.events, concurrency=1, name="segments")
    async def segment_agent(stream: Any) -> None:
        async for event in stream.events():
            message = event.message
            if message.topic == names.ticks:
                outgoing = processor.tick(message.partition, wall_now())
            else:
                outgoing = processor.message(
                    message.partition, message.offset, event.key, event.value, wall_now()
                )
            try:
                if outgoing:
                    await flusher.send(outgoing)
                if processor.dirty_count() >= MAX_DIRTY:
                    await flusher.flush()
            except Exception:
                # The changes stay in their customers' outboxes: reopening the
                # partition from the table republishes them.
                log.exception("send_failed partition=%d", message.partition)
                processor.forget_partition(message.partition)

    @app.task  # type: ignore[untyped-decorator]  # faust: untyped
    async def flush_states() -> None:
        # Outside any event: a flush writes each table partition explicitly. A loop rather
        # than app.timer: mode's timer logs a warning each time a run outlasts its interval,
        # which under a backlog is most flushes.
        while not app.should_stop:
            await app.sleep(FLUSH_INTERVAL_S)
            await flusher.flush()

    @app.agent(segments_app.native, concurrency=1, name="adapter")
    async def adapter_agent(stream: Any) -> None:
        async for event in stream.events():
            message = event.message
            await adapter.handle(
                message.topic, message.partition, message.offset, event.key, event.value
            )

    @app.timer(interval=TICK_INTERVAL_S)  # type: ignore[untyped-decorator]  # faust: untyped
    async def send_ticks() -> None:
        for tp in app.consumer.assignment():
            if tp.topic == names.purchases:
                await app.producer.send(names.ticks, None, TICK, tp.partition, None, None)

    @app.timer(interval=5.0)  # type: ignore[untyped-decorator]  # faust: untyped
    async def log_counts() -> None:
        counts = processor.counts + adapter.counts
        if counts:
            keys = sorted(counts)
            # One key=%d per count: in the JSON log each count is a field of its own.
            template = "worker_counts " + " ".join(f"{key}=%d" for key in keys)
            log.info(template, *(counts[key] for key in keys))

    # mode's SignalHandlerT (a Callable with mypy_extensions' VarArg/NamedArg) matches no
    # function mypy can see, typed or not: the ignore is for that declaration.
    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def on_assigned(app_: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        processor.forget_partitions()

    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def on_revoked(app_: Any, revoked: Any, *args: Any, signal: Any, **kwargs: Any) -> None:
        # Faust committed (and so flushed) before this signal: what a revoked partition
        # still holds was handled after its last commit and is handled again by its next
        # owner. Dropping it keeps a later flush off the partition's closed database.
        for tp in revoked:
            if tp.topic == names.purchases:
                processor.forget_partition(tp.partition)
