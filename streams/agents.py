"""The segment agent: decode -> step() -> persist state and outbox -> publish; the adapter agent.

Everything a segment means lives in segments/; this module only moves bytes
between Kafka, the `customers` table and step(), and owns delivery: the
table value carries the customer's unpublished changes (an outbox) so a crash
between the table write and the publish re-publishes the same changes.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any

import orjson
from faust.types import TP

from segments.adapters import IdentityMap, from_pos_receipt, from_shopify_order
from segments.aggregates import CustomerState, state_from_bytes, state_to_bytes
from segments.changes import ENTERED, EXITED, format_instant
from segments.events import ClockMark, Purchase, Rejection, Return, decode_event, encode_event
from segments.membership import DuplicateEvent, Tick, step
from segments.rules.evaluator import CompiledRules
from streams.app import SegmentsApp
from streams.dlq import dead_letter
from streams.timers import TICK, PartitionTime, wall_now
from streams.worker_metrics import DEADLINE_LATENESS

log = logging.getLogger(__name__)

RECORD_FORMAT = 1
MAX_ACKED_CUSTOMERS = 100_000  # acknowledged ids remembered per partition until the next save
CLOCK_KEY = b"\x00clock:"  # + partition number; never a customer id (ids are text)


@dataclass
class CustomerRecord:
    """The table value: header [format, clock, due, offset, outbox] newline CustomerState.

    `due` is copied out of the state so the deadline index is rebuilt without
    decoding states; `clock` is the partition clock and `offset` the `purchases`
    offset being handled when it was written: the largest of each restore the
    partition's event clock and tell re-delivered messages from new ones.
    """

    clock: int | None
    due: int | None
    offset: int
    outbox: list[dict[str, Any]]  # Change.to_dict() of changes not yet acknowledged by Kafka
    state: bytes

    def to_bytes(self) -> bytes:
        header = orjson.dumps([RECORD_FORMAT, self.clock, self.due, self.offset, self.outbox])
        return header + b"\n" + self.state

    @classmethod
    def from_bytes(cls, data: bytes) -> CustomerRecord:
        header, _, state = data.partition(b"\n")
        fmt, clock, due, offset, outbox = orjson.loads(header)
        if fmt != RECORD_FORMAT:
            raise ValueError(f"customer record format {fmt} is not {RECORD_FORMAT}")
        return cls(clock, due, offset, outbox, state)


def membership_value(change: dict[str, Any]) -> bytes | None:
    """The compacted `segment-memberships` value: a record on entry, a tombstone on exit."""
    if change["change"] != ENTERED:
        return None
    return orjson.dumps(
        {
            "customer_id": change["customer_id"],
            "segment": change["segment"],
            "since": change["at"],
            "seq": change["seq"],
            "change_id": change["change_id"],
            "rules_version": change["rules_version"],
        }
    )


def current_membership_change(state: CustomerState, segment: str) -> dict[str, Any]:
    """The state's membership of a segment, shaped like the change that led to it."""
    membership = state.memberships[segment]
    return {
        "customer_id": state.customer_id,
        "segment": segment,
        "change": ENTERED if membership.member else EXITED,
        "at": format_instant(membership.since),
        "seq": membership.seq,
        "change_id": f"{state.customer_id}:{segment}:{membership.seq}",
        "rules_version": state.rules_version,
    }


class SegmentProcessor:
    """Handles one message of `purchases` or of the ticks topic, inside the agent's stream."""

    def __init__(self, segments_app: SegmentsApp, rules: CompiledRules) -> None:
        self.segments_app = segments_app
        self.names = segments_app.names
        self.table = segments_app.customers
        self.rules = rules
        self.event_clock = segments_app.config.clock == "event"
        ruleset = rules.ruleset
        self.currencies = frozenset((ruleset.base_currency, *ruleset.rates))
        self.partitions: dict[int, PartitionTime] = {}
        self.counts: Counter[str] = Counter()

    @property
    def producer(self) -> Any:
        return self.segments_app.app.producer

    def forget_partitions(self) -> None:
        """After a rebalance every partition is opened again from the table.

        Faust re-runs recovery and seeks kept partitions back to their committed
        offsets, so in-memory clocks and indexes could be ahead of what comes next.
        """
        self.partitions.clear()

    async def handle_or_dead_letter(
        self, topic: str, partition: int, offset: int, key: Any, value: Any
    ) -> None:
        """handle(), but an unexpected error (a bug) dead-letters the message with reason
        processing_error instead of crashing the agent: the partition never blocks."""
        try:
            await self.handle(topic, partition, offset, key, value)
        except Exception as error:
            log.exception(
                "processing_error topic=%s partition=%d offset=%d", topic, partition, offset
            )
            self.partitions.pop(partition, None)  # reopened from the table next time
            if topic != self.names.ticks:
                rejection = Rejection("processing_error", f"{type(error).__name__}: {error}")
                await self._reject(key, value, rejection, (topic, partition, offset))

    async def handle(self, topic: str, partition: int, offset: int, key: Any, value: Any) -> None:
        part = self.partitions.get(partition)
        if part is None:
            part = await self._open(partition)
        source = (topic, partition, offset)
        if topic == self.names.ticks:
            self.counts["ticks"] += 1
            if not self.event_clock:
                await self._advance(part, wall_now())
            return
        self.counts["messages"] += 1
        redelivered = offset <= part.handled_offset
        part.offset = max(part.offset, offset)
        try:
            item = decode_event(value or b"", self.currencies)
            if not isinstance(item, ClockMark):
                self._check_key(item, key)
        except Rejection as rejection:
            await self._reject(key, value, rejection, source)
            return
        if isinstance(item, ClockMark):
            self.counts["clock_marks"] += 1
            if self.event_clock:
                await self._advance(part, item.at)
                self._persist_clock(part)
            return
        if self.event_clock:
            now = item.occurred_at if part.clock is None else max(item.occurred_at, part.clock)
        else:
            now = wall_now()
            if item.occurred_at > now + self.rules.ruleset.max_future_skew:
                rejection = Rejection(
                    "too_far_ahead", "occurred_at is more than max_future_skew ahead of the clock"
                )
                await self._reject(key, value, rejection, source)
                return
        # Time-driven changes of every customer here come before this event.
        await self._advance(part, now)
        await self._apply(part, item, now, key, value, source, redelivered)
        if self.event_clock:
            self._persist_clock(part)

    def _check_key(self, event: Purchase | Return, key: Any) -> None:
        # State lives in the partition of the message; a wrongly keyed event would
        # split a customer over two partitions.
        if key != event.customer_id.encode():
            raise Rejection("wrong_key", "the message key is not the event's customer_id")

    async def _apply(
        self,
        part: PartitionTime,
        event: Purchase | Return,
        now: int,
        key: Any,
        value: Any,
        source: tuple[str, int, int],
        redelivered: bool,
    ) -> None:
        customer_id = event.customer_id
        record, state = self._stored(part, customer_id)
        if record is not None:
            state = self._decoded(part, customer_id, record, state)
        previous_due = state.due if state is not None else None
        try:
            state, changes = step(state, event, self.rules, now)
        except DuplicateEvent:
            self.counts["duplicates"] += 1
            log.debug("duplicate_event partition=%d offset=%d", source[1], source[2])
            return
        except Rejection as rejection:
            part.states.pop(customer_id, None)  # step() leaves it untouched; be sure anyway
            if redelivered and rejection.reason == "too_late":
                # Applied before a crash, and its id is no longer remembered
                # (ids are kept for max_lateness): a duplicate, not a late event.
                self.counts["duplicates"] += 1
                return
            await self._reject(key, value, rejection, source)
            return
        self.counts["applied"] += 1
        await self._save(part, customer_id, record, state, changes)
        if state.due != previous_due:
            part.schedule(state.due, customer_id)

    async def _advance(self, part: PartitionTime, to: int) -> None:
        """Apply every deadline of this partition due at or before `to`, in `at` order."""
        for due, customer_id in part.pop_due(to):
            record, state = self._stored(part, customer_id)
            if record is None or part.due_of(customer_id, record.due) != due:
                continue  # superseded: the customer's deadline moved after this entry
            state = self._decoded(part, customer_id, record, state)
            part.advance_clock(due)
            if not self.event_clock:
                DEADLINE_LATENESS.observe(max(0, wall_now() - due) / 1_000_000)
            version = state.rules_version
            state, changes = step(state, Tick(due), self.rules, due)
            if changes or state.rules_version != version:
                await self._save(part, customer_id, record, state, changes)
            else:
                # Only the deadline moved: no table write (no changelog message). After a
                # restart the stored, older deadline is evaluated again and changes nothing.
                self.counts["ticks_unwritten"] += 1
                part.unwritten_due[customer_id] = state.due
            part.schedule(state.due, customer_id)
        part.advance_clock(to)

    def _stored(
        self, part: PartitionTime, customer_id: str
    ) -> tuple[CustomerRecord | None, CustomerState | None]:
        """The customer's table value, with its decoded state when that is kept in memory.

        Decoded states of recently read or written customers are kept per
        partition (`PartitionTime.states`): the agent is the only writer of its
        partitions' table values, so a kept state is what the table holds, but
        for the due of an unwritten tick. step() updates a kept state in place;
        every path that does not then write it either leaves it untouched (a
        duplicate or rejection) or drops the whole partition (an unexpected error).
        """
        cached = part.states.get(customer_id)
        if cached is not None:
            return cached
        data = self.table.get(customer_id.encode())
        return (CustomerRecord.from_bytes(data), None) if data is not None else (None, None)

    def _decoded(
        self,
        part: PartitionTime,
        customer_id: str,
        record: CustomerRecord,
        state: CustomerState | None,
    ) -> CustomerState:
        """The state of `record`, kept, with its current due."""
        if state is None:
            state = state_from_bytes(customer_id, record.state)
            part.keep(customer_id, record, state)
        # deadlines before this due were checked and changed nothing
        state.due = part.due_of(customer_id, record.due)
        return state

    async def _save(
        self,
        part: PartitionTime,
        customer_id: str,
        record: CustomerRecord | None,
        state: Any,
        changes: list[Any],
    ) -> None:
        outbox = record.outbox if record is not None else []
        acked = part.acked.pop(customer_id, None)
        part.unwritten_due.pop(customer_id, None)  # the record written now holds the due
        if outbox and record is not None and record.offset < self._flushed_before(part.partition):
            outbox = []  # written before the last commit, so flushed to Kafka
        elif acked:
            outbox = [change for change in outbox if change["change_id"] not in acked]
        new = [change.to_dict() for change in changes]
        written = CustomerRecord(
            part.clock, state.due, part.offset, outbox + new, state_to_bytes(state)
        )
        self.table[customer_id.encode()] = written.to_bytes()
        part.keep(customer_id, written, state)
        part.persisted_clock = part.clock
        if new:
            await self._publish(part, customer_id, new)

    async def _publish(
        self,
        part: PartitionTime,
        customer_id: str,
        changes: list[dict[str, Any]],
        state: CustomerState | None = None,
    ) -> None:
        """Send changes and membership records; once Kafka acknowledges all, mark them acked.

        Republishing an outbox passes the current `state`: the membership records
        then come from it, so an old change sent again never overwrites a newer
        membership in the compacted topic.
        """
        send = self.producer.send
        key = customer_id.encode()
        futures = []
        for change in changes:
            self.counts["changes"] += 1
            futures.append(
                await send(self.names.segment_changes, key, orjson.dumps(change), None, None, None)
            )
        segments = {change["segment"]: change for change in changes}  # the last of each
        for segment, change in segments.items():
            if state is not None:
                change = current_membership_change(state, segment)
            futures.append(
                await send(
                    self.names.segment_memberships,
                    f"{customer_id}|{segment}".encode(),
                    membership_value(change),
                    None,
                    None,
                    None,
                )
            )
        ids = {change["change_id"] for change in changes}

        def on_sent(result: asyncio.Future[Any]) -> None:
            if result.cancelled() or result.exception() is not None:
                log.error("publish_failed customer_changes=%d kept_in_outbox", len(ids))
                return
            if len(part.acked) >= MAX_ACKED_CUSTOMERS:
                part.acked.clear()  # only an optimisation: the next save keeps more
            part.acked.setdefault(customer_id, set()).update(ids)

        asyncio.gather(*futures).add_done_callback(on_sent)

    def _flushed_before(self, partition: int) -> int:
        """Records written at an offset below this one have every change in Kafka.

        Faust flushes the producer (every send acknowledged) before it commits
        an offset, so changes written while handling messages before the
        committed one are published. Writes during a tick carry the offset of
        the message before the tick, hence the one-message margin.
        """
        committed = self.segments_app.app.consumer._committed_offset.get(
            TP(self.names.purchases, partition)
        )
        return -1 if committed is None else int(committed) - 1

    def _persist_clock(self, part: PartitionTime) -> None:
        """Write the clock when no customer record carried it (a mark, a duplicate)."""
        if part.clock is not None and part.clock != part.persisted_clock:
            self.table[CLOCK_KEY + str(part.partition).encode()] = orjson.dumps(
                [part.clock, part.offset]
            )
            part.persisted_clock = part.clock

    async def _open(self, partition: int) -> PartitionTime:
        """Rebuild a partition's deadline index and clock from the table; republish outboxes."""
        part = PartitionTime(partition)
        # Faust's RocksDB store keeps one database per partition; reading it
        # directly is the only way to list one partition's keys.
        store = self.table.data
        unsure_from = self._flushed_before(partition)
        pending: list[tuple[str, CustomerRecord]] = []
        customers = 0
        for key, value in store._visible_items(store._db_for_partition(partition)):
            if key.startswith(CLOCK_KEY):
                clock, offset = orjson.loads(value)
                part.advance_clock(clock)
                part.handled_offset = max(part.handled_offset, offset)
                continue
            record = CustomerRecord.from_bytes(value)
            customer_id = key.decode()
            customers += 1
            if record.due is not None:
                part.deadlines.append((record.due, customer_id))
            if record.clock is not None:
                part.advance_clock(record.clock)
            part.handled_offset = max(part.handled_offset, record.offset)
            if record.outbox and record.offset >= unsure_from:
                pending.append((customer_id, record))
        heapq.heapify(part.deadlines)
        part.persisted_clock = part.clock
        part.offset = part.handled_offset
        self.partitions[partition] = part
        log.info(
            "partition_opened partition=%d customers=%d deadlines=%d clock=%s republish=%d",
            partition,
            customers,
            len(part.deadlines),
            part.clock,
            sum(len(record.outbox) for _, record in pending),
        )
        for customer_id, record in pending:
            state = state_from_bytes(customer_id, record.state)
            await self._publish(part, customer_id, record.outbox, state)
        return part

    async def _reject(
        self, key: Any, value: Any, rejection: Rejection, source: tuple[str, int, int]
    ) -> None:
        self.counts[f"rejected.{rejection.reason}"] += 1
        await dead_letter(
            self.producer,
            self.names.purchases_dlq,
            key,
            value,
            rejection.reason,
            rejection.message,
            source,
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
    interval = segments_app.config.tick_interval

    @app.agent(segments_app.events, concurrency=1, name="segments")
    async def segment_agent(stream: Any) -> None:
        async for event in stream.events():
            message = event.message
            await processor.handle_or_dead_letter(
                message.topic, message.partition, message.offset, event.key, event.value
            )

    @app.agent(segments_app.native, concurrency=1, name="adapter")
    async def adapter_agent(stream: Any) -> None:
        async for event in stream.events():
            message = event.message
            await adapter.handle(
                message.topic, message.partition, message.offset, event.key, event.value
            )

    @app.timer(interval=interval)
    async def send_ticks() -> None:
        for tp in app.consumer.assignment():
            if tp.topic == names.purchases:
                await app.producer.send(names.ticks, None, TICK, tp.partition, None, None)

    @app.timer(interval=5.0)
    async def log_counts() -> None:
        counts = processor.counts + adapter.counts
        if counts:
            log.info("worker_counts %s", " ".join(f"{k}={v}" for k, v in sorted(counts.items())))

    @app.on_partitions_assigned.connect
    async def on_assigned(app_: Any, assigned: set[Any], **kwargs: Any) -> None:
        processor.forget_partitions()
