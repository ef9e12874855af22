"""The segment worker without Faust: a message -> engine calls -> table writes and an outbox.

The processor is synchronous and knows no broker: it reads and writes
customer records through a `CustomerTable`, asks a `committed_offset`
function what Kafka has committed, and returns what must be sent (`Publish`,
`DeadLetter`, `Flush`). The Faust shell (streams.worker.agents, streams.worker.faust_fixes)
sends them; the broker-free driver (streams.worker.driver) keeps them in lists.

A customer's state changed by an event stays in memory (dirty) until `flush()`,
which writes each dirty customer's table value once and returns its changes and
last membership records in one `Flush`; the shell flushes before every offsets
commit, after computing the offsets (decision 0014). Delivery works like an
outbox: the table value carries the customer's unacknowledged changes, so a crash
between the table write and the publish re-publishes the same changes.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from segments.aggregates import (
    CustomerState,
    state_from_bytes,
    state_to_bytes,
    stored_rules_version,
)
from segments.changes import Change, MembershipRecord, TraitChange, membership_key, trait_value_key
from segments.engine import Engine
from segments.events import ClockMark, Purchase, Rejection, Return, decode_event
from segments.membership import DuplicateEvent
from segments.rules.evaluator import CompiledRules
from streams.settings import Topics

log = logging.getLogger(__name__)

# 2: written by a flush; its clock is the partition clock of the flush, which restores the
# partition clock only through the clock key written after it (decision 0014). 1: written
# per event; its clock restores the partition clock.
RECORD_FORMAT = 2
RECORD_FORMATS = (1, 2)
# A change as the outbox keeps it: its segment-changes JSON object (Change.to_dict()), or
# for a trait change its trait-changes JSON object (TraitChange.to_dict(), with "trait").
# Kept encoded, not decoded, on every table read: it is only ever sent again as it is.
EncodedChange = dict[str, Any]
Messages = list[tuple[str, bytes, bytes | None]]  # (topic, key, value)
MAX_ACKED_CUSTOMERS = 100_000  # acknowledged ids remembered per partition until the next save
CLOCK_KEY = b"\x00clock:"  # + partition number; never a customer id (ids are text)
# Decoded customer states kept per partition between their events and ticks: each
# is a few KiB, so 8 partitions keep well under 200 MiB.
MAX_KEPT_STATES = 4_096


class CustomerTable(Protocol):
    """The customers table as the processor sees it: bytes by key, and one partition's items."""

    def get(self, key: bytes) -> bytes | None: ...

    def write(self, partition: int, key: bytes, value: bytes) -> None:
        """Write the local copy only: the shell sends the changelog record (`Flush.writes`)."""
        ...

    def partition_items(self, partition: int) -> Iterable[tuple[bytes, bytes]]: ...


@dataclass
class CustomerRecord:
    """The table value: header [format, clock, due, offset, outbox] newline CustomerState.

    `due` is copied out of the state so the deadline queue is rebuilt without
    decoding states; `offset` is the largest `purchases` offset handled in the
    partition when it was written: the largest tells re-delivered messages from
    new ones. `clock` is the partition clock when it was written. In format 2
    (a flush's) it is the customer's own clock, which tells a re-delivered event
    it has already seen from a late one; the partition clock is restored from
    the clock key written after the flush's values (decision 0014).
    """

    clock: int | None
    due: int | None
    offset: int
    outbox: list[EncodedChange]  # changes not yet acknowledged by Kafka
    state: bytes
    format: int = RECORD_FORMAT

    def to_bytes(self) -> bytes:
        header = orjson.dumps([self.format, self.clock, self.due, self.offset, self.outbox])
        return header + b"\n" + self.state

    @classmethod
    def from_bytes(cls, data: bytes) -> CustomerRecord:
        header, _, state = data.partition(b"\n")
        fmt, clock, due, offset, outbox = orjson.loads(header)
        if fmt not in RECORD_FORMATS:
            raise ValueError(f"customer record format {fmt} is not one of {RECORD_FORMATS}")
        return cls(clock, due, offset, outbox, state, fmt)


@dataclass(frozen=True, slots=True)
class Publish:
    """Changes and membership records; `acked` runs once Kafka has them all."""

    messages: Messages
    acked: Callable[[], None]


@dataclass(frozen=True, slots=True)
class DeadLetter:
    key: bytes | None
    value: bytes | None
    reason: str
    message: str
    source: tuple[str, int, int]  # topic, partition, offset


@dataclass(frozen=True, slots=True)
class Flush:
    """What a flush wrote to the local table (partition, key, value), for the shell to
    send to the changelog in this order, and the changes and membership records to publish."""

    writes: list[tuple[int, bytes, bytes]]
    publish: Publish | None


Outgoing = Publish | DeadLetter | Flush


@dataclass(slots=True)
class _Dirty:
    """A customer changed since the last flush: its last written value (for the outbox),
    its state, and the messages applied to it (its changes are in `PartitionStates.log`)."""

    record: CustomerRecord | None
    state: CustomerState
    messages: list[tuple[int, bytes | None, bytes | None]]  # (offset, key, value)


class PartitionStates:
    """The engine's `States` over one table partition, with decoded states kept in memory.

    The processor is the only writer of its partitions' table values. A state
    changed since the last flush is `dirty` (never evicted); a `kept` state is
    what the table holds, but for the due of an unwritten tick
    (`unwritten_due`). step() updates a state in place; every path that does
    not then put it either leaves it untouched (a duplicate, a rejection) or
    reverts the customer to its table value (an unexpected error, `revert`).
    """

    def __init__(self, processor: SegmentProcessor, partition: int) -> None:
        self.processor = processor
        self.partition = partition
        self.engine = Engine(
            processor.rules,
            self,
            wall_clock=not processor.event_clock,
            on_due=processor.on_due,
        )
        self.persisted_clock: int | None = None  # the largest clock already written
        self.offset = -1  # the largest `purchases` offset handled
        self.handled_offset = -1  # the largest offset found in the table at open
        self.acked: dict[str, set[str]] = {}  # customer -> published change ids
        # customer -> due after a tick that changed nothing and so was not written;
        # the stored `due` is older, and every deadline before this one changed nothing
        self.unwritten_due: dict[str, int | None] = {}
        # customer -> (table value, decoded state), oldest first, at most MAX_KEPT_STATES
        self.kept: dict[str, tuple[CustomerRecord, CustomerState]] = {}
        # customers changed since the last flush, in the order they first changed
        self.dirty: dict[str, _Dirty] = {}
        # their changes in the order they were made, over all customers: published in
        # that order, so `at` never decreases on a partition of segment-changes
        self.log: list[tuple[str, Change | TraitChange]] = []
        self.stepping: str | None = None  # the customer last handed to the engine
        # the message being applied: (customer, offset, key, value)
        self.message: tuple[str, int, bytes | None, bytes | None] | None = None
        self.persisted_offset = -1  # the offset in the last clock key written
        self.outgoing: list[Outgoing] = []

    @property
    def clock(self) -> int | None:
        return self.engine.clock

    def _keep(self, customer_id: str, record: CustomerRecord, state: CustomerState) -> None:
        kept = self.kept
        kept.pop(customer_id, None)
        kept[customer_id] = (record, state)
        if len(kept) > MAX_KEPT_STATES:
            del kept[next(iter(kept))]

    def _record(self, customer_id: str) -> tuple[CustomerRecord | None, CustomerState | None]:
        kept = self.kept.get(customer_id)
        if kept is not None:
            return kept
        data = self.processor.table.get(customer_id.encode())
        return (CustomerRecord.from_bytes(data), None) if data is not None else (None, None)

    def get(self, customer_id: str) -> CustomerState | None:
        self.stepping = customer_id
        dirty = self.dirty.get(customer_id)
        if dirty is not None:
            return dirty.state  # its due is current
        record, state = self._record(customer_id)
        if record is None:
            return None
        if state is None:
            state = state_from_bytes(customer_id, record.state)
            self._keep(customer_id, record, state)
        # deadlines before this due were checked and changed nothing
        state.due = self.unwritten_due.get(customer_id, record.due)
        return state

    def put(
        self, state: CustomerState, changes: list[Change | TraitChange], *, due_only: bool
    ) -> None:
        customer_id = state.customer_id
        dirty = self.dirty.get(customer_id)
        if dirty is None:
            if due_only:
                # Only the deadline moved: no table write (no changelog message). After a
                # restart the stored, older deadline is evaluated again and changes nothing.
                self.processor.counts["ticks_unwritten"] += 1
                self.unwritten_due[customer_id] = state.due
                return
            kept = self.kept.pop(customer_id, None)
            record = kept[0] if kept is not None else self._record(customer_id)[0]
            self.unwritten_due.pop(customer_id, None)  # the flush writes the due
            dirty = self.dirty[customer_id] = _Dirty(record, state, [])
        else:
            dirty.state = state
        if changes:
            self.log.extend((customer_id, change) for change in changes)
        message = self.message
        if message is not None and message[0] == customer_id and not due_only:
            dirty.messages.append(message[1:])

    def flush(
        self, writes: list[tuple[int, bytes, bytes]], messages: Messages
    ) -> dict[str, set[str]]:
        """Write every dirty customer's value once, then the clock key; add the changelog
        records to `writes` and the changes and last membership records to `messages`.
        Returns the change ids published per customer."""
        partition = self.partition
        table = self.processor.table
        flushed_before = self.processor.flushed_before(self)
        published: dict[str, set[str]] = {}
        dirty, self.dirty = self.dirty, {}
        log, self.log = self.log, []
        new: dict[str, list[EncodedChange]] = {}
        encoded_log: list[tuple[str, EncodedChange]] = []
        last: dict[tuple[str, str], Change] = {}  # (customer, segment) -> its last change
        for customer_id, change in log:
            encoded = change.to_dict()
            new.setdefault(customer_id, []).append(encoded)
            encoded_log.append((customer_id, encoded))
            if type(change) is Change:
                last[customer_id, change.segment] = change
        # None: a tombstone
        records = {key: MembershipRecord.of_change(change) for key, change in last.items()}
        self._messages(encoded_log, records, messages)
        for customer_id, item in dirty.items():
            record = item.record
            outbox = record.outbox if record is not None else []
            acked = self.acked.pop(customer_id, None)
            if outbox and record is not None and record.offset < flushed_before:
                outbox = []  # written before the last commit, so flushed to Kafka
            elif acked:
                outbox = [change for change in outbox if change["change_id"] not in acked]
            changes = new.get(customer_id, [])
            written = CustomerRecord(
                self.clock,
                item.state.due,
                self.offset,
                outbox + changes,
                state_to_bytes(item.state),
            )
            key = customer_id.encode()
            value = written.to_bytes()
            table.write(partition, key, value)
            writes.append((partition, key, value))
            self._keep(customer_id, written, item.state)
            if changes:
                published[customer_id] = {change["change_id"] for change in changes}
        clock = self.clock
        if clock is not None and (
            clock != self.persisted_clock or self.offset != self.persisted_offset
        ):
            # After the customers' values: a restart restores the clock of the last
            # flush whose every value reached the changelog (decision 0014).
            key = CLOCK_KEY + str(partition).encode()
            value = orjson.dumps([clock, self.offset])
            table.write(partition, key, value)
            writes.append((partition, key, value))
            self.persisted_clock = clock
            self.persisted_offset = self.offset
        return published

    def seen_by_record(self, customer_id: str, occurred_at: int) -> bool:
        """Whether a re-delivered event is older than max_lateness behind its customer's
        flushed clock: applied before (its id may be forgotten by now), never a late one.

        The partition clock restored after a flush that reached the changelog only in
        part is that of the flush before, behind the customers whose values did reach it.
        """
        if customer_id in self.dirty:
            return False  # its state is in memory, and the partition clock with it
        record, _ = self._record(customer_id)
        if record is None or record.format == 1 or record.clock is None:
            return False
        return occurred_at < record.clock - self.processor.rules.ruleset.max_lateness

    def revert(self, customer_id: str) -> list[tuple[int, bytes | None, bytes | None]]:
        """Drop the customer's unflushed state (step() may have left it half updated): it
        is read again from the table. Returns the messages applied to it since its last
        flush, which that state no longer holds."""
        self.kept.pop(customer_id, None)
        self.unwritten_due.pop(customer_id, None)
        dirty = self.dirty.pop(customer_id, None)
        self.log = [entry for entry in self.log if entry[0] != customer_id]
        return dirty.messages if dirty is not None else []

    def forget(self, customer_id: str) -> None:
        self.kept.pop(customer_id, None)

    def republish(
        self, customer_id: str, outbox: list[EncodedChange], state: CustomerState
    ) -> None:
        """Queue an outbox again, with the membership records of the current `state`, so an
        old change sent again never overwrites a newer membership in the compacted topic."""
        segments = dict.fromkeys(change["segment"] for change in outbox if "segment" in change)
        records = {
            (customer_id, segment): MembershipRecord.of_state(state, segment)
            for segment in segments
        }
        messages: Messages = []
        self._messages([(customer_id, change) for change in outbox], records, messages)
        ids = {change["change_id"] for change in outbox}
        self.outgoing.append(Publish(messages, self.acker({customer_id: ids})))

    def _messages(
        self,
        changes: list[tuple[str, EncodedChange]],
        records: dict[tuple[str, str], MembershipRecord | None],
        messages: Messages,
    ) -> None:
        """Add to `messages` the changes (customer, encoded change) in their order, then the
        membership records by (customer, segment) (None: a tombstone), then each
        customer's trait-values records."""
        names = self.processor.names
        # a trait's last change is its newest (later ones come after it): its compacted
        # trait-values record, never a tombstone (SPEC section 3, traits)
        trait_values: dict[tuple[str, str], bytes] = {}
        trait_changes = 0
        for customer_id, change in changes:
            value = orjson.dumps(change)
            trait = change.get("trait")
            if trait is None:
                messages.append((names.segment_changes, customer_id.encode(), value))
            else:
                messages.append((names.trait_changes, customer_id.encode(), value))
                trait_values[customer_id, trait] = value
                trait_changes += 1
        counts = self.processor.counts
        counts["changes"] += len(changes) - trait_changes
        for (customer_id, segment), record in records.items():
            encoded = record.to_json() if record is not None else None
            messages.append(
                (names.segment_memberships, membership_key(customer_id, segment), encoded)
            )
        if trait_changes:
            counts["trait_changes"] += trait_changes
            for (customer_id, trait), value in trait_values.items():
                messages.append((names.trait_values, trait_value_key(customer_id, trait), value))

    def acker(self, published: dict[str, set[str]]) -> Callable[[], None]:
        """Marks `published` (change ids per customer) acked: the next write of each
        customer's value leaves them out of its outbox."""
        acked = self.acked

        def on_acked() -> None:
            if len(acked) >= MAX_ACKED_CUSTOMERS:
                acked.clear()  # only an optimisation: the next write keeps more
            for customer_id, ids in published.items():
                acked.setdefault(customer_id, set()).update(ids)

        return on_acked

    def take_outgoing(self) -> list[Outgoing]:
        outgoing, self.outgoing = self.outgoing, []
        return outgoing


class SegmentProcessor:
    """Turns one message of `purchases`, or one tick, into engine calls; returns what to send.

    `committed_offset(partition)`: the `purchases` offset Kafka has committed
    for the partition (None before the first commit). The shell flushes every
    send before it commits, so a record written before that offset has all its
    changes in Kafka. `on_due(due)`: called for every deadline evaluated.
    """

    def __init__(
        self,
        rules: CompiledRules,
        names: Topics,
        table: CustomerTable,
        committed_offset: Callable[[int], int | None],
        *,
        event_clock: bool,
        on_due: Callable[[int], None] | None = None,
    ) -> None:
        self.rules = rules
        self.names = names
        self.table = table
        self.committed_offset = committed_offset
        self.event_clock = event_clock
        self.on_due = on_due
        ruleset = rules.ruleset
        self.currencies = frozenset((ruleset.base_currency, *ruleset.rates))
        self.partitions: dict[int, PartitionStates] = {}
        self.counts: Counter[str] = Counter()

    def forget_partitions(self) -> None:
        """After a rebalance every partition is opened again from the table.

        Faust re-runs recovery and seeks kept partitions back to their committed
        offsets, so in-memory clocks and queues could be ahead of what comes next.
        """
        self.partitions.clear()

    def forget_partition(self, partition: int) -> None:
        self.partitions.pop(partition, None)

    def dirty_count(self) -> int:
        """Customers changed since the last flush."""
        return sum(len(part.dirty) for part in self.partitions.values())

    def flushed_before(self, part: PartitionStates) -> int:
        """Records written at an offset below this one have every change in Kafka.

        Writes during a tick carry the offset of the message before the tick,
        hence the one-message margin below the committed offset.
        """
        committed = self.committed_offset(part.partition)
        return -1 if committed is None else int(committed) - 1

    def message(
        self, partition: int, offset: int, key: bytes | None, value: bytes | None, wall: int
    ) -> list[Outgoing]:
        """A `purchases` message; an unexpected error dead-letters it (processing_error),
        so the partition never blocks. The customer being stepped is reverted to its table
        value and the messages applied to it since its last flush are dead-lettered with
        it; every other dirty customer is flushed, and the partition is reopened from the
        table (decision 0014)."""
        try:
            return self._message(partition, offset, key, value, wall)
        except Exception as error:
            log.exception("processing_error partition=%d offset=%d", partition, offset)
            outgoing = self._recover(partition)
            message = f"{type(error).__name__}: {error}"
            source = (self.names.purchases, partition, offset)
            outgoing.append(self._processing_error(key, value, message, source))
            return outgoing

    def tick(self, partition: int, wall: int) -> list[Outgoing]:
        """A tick of an owned partition: opens it (and rolls out a new rule version), and
        on the wall clock applies every deadline due by now."""
        self.counts["ticks"] += 1
        try:
            part = self._partition(partition, wall)
            if not self.event_clock:
                part.stepping = None
                part.engine.advance(wall)
            return part.take_outgoing()
        except Exception:
            log.exception("processing_error partition=%d tick", partition)
            return self._recover(partition)

    def flush(self) -> Flush | None:
        """Write every dirty customer's table value (once each) and return the changelog
        records and the changes and membership records to send; None when nothing changed.

        The shell calls it before every offsets commit, after computing the offsets:
        every message acknowledged by then is in the processor's state."""
        writes: list[tuple[int, bytes, bytes]] = []
        messages: Messages = []
        ackers: list[Callable[[], None]] = []
        for part in self.partitions.values():
            published = part.flush(writes, messages)
            if published:
                ackers.append(part.acker(published))
        if not writes and not messages:
            return None
        self.counts["flushes"] += 1
        self.counts["table_writes"] += len(writes)

        def acked() -> None:
            for acker in ackers:
                acker()

        return Flush(writes, Publish(messages, acked) if messages else None)

    def _recover(self, partition: int) -> list[Outgoing]:
        """After an unexpected error: revert the customer being stepped, flush the rest of
        the partition and reopen it from the table."""
        part = self.partitions.pop(partition, None)
        if part is None:
            return []
        outgoing = part.take_outgoing()
        failed = part.stepping
        reverted = part.revert(failed) if failed is not None else []
        current = part.message
        for offset, key, value in reverted:
            if current is not None and offset == current[1]:
                continue  # the failing message itself is dead-lettered by the caller
            source = (self.names.purchases, partition, offset)
            why = "a later event of the same customer failed before its state was flushed"
            outgoing.append(self._processing_error(key, value, why, source))
        writes: list[tuple[int, bytes, bytes]] = []
        messages: Messages = []
        published = part.flush(writes, messages)
        if writes or messages:
            publish = Publish(messages, part.acker(published)) if messages else None
            outgoing.append(Flush(writes, publish))
        return outgoing

    def _processing_error(
        self,
        key: bytes | None,
        value: bytes | None,
        message: str,
        source: tuple[str, int, int],
    ) -> DeadLetter:
        self.counts["rejected.processing_error"] += 1
        return DeadLetter(key, value, "processing_error", message, source)

    def _message(
        self, partition: int, offset: int, key: bytes | None, value: bytes | None, wall: int
    ) -> list[Outgoing]:
        part = self._partition(partition, wall)
        self.counts["messages"] += 1
        # At or below an offset handled before (found in the table at open, or handled in
        # this run and read again after a seek back): a message seen before.
        redelivered = offset <= part.offset
        part.offset = max(part.offset, offset)
        source = (self.names.purchases, partition, offset)
        try:
            item = decode_event(value or b"", self.currencies)
            if not isinstance(item, ClockMark):
                _check_key(item, key)
        except Rejection as rejection:
            return [*part.take_outgoing(), self._dead_letter(key, value, rejection, source)]
        engine = part.engine
        part.stepping = None
        if isinstance(item, ClockMark):
            self.counts["clock_marks"] += 1
            part.message = None
            if self.event_clock:
                engine.advance(item.at)
            return part.take_outgoing()
        outgoing: list[Outgoing] = []
        if redelivered and part.seen_by_record(item.customer_id, item.occurred_at):
            self.counts["duplicates"] += 1
            return part.take_outgoing()
        part.message = (item.customer_id, offset, key, value)
        try:
            engine.apply(item, wall)
            self.counts["applied"] += 1
        except DuplicateEvent:
            self.counts["duplicates"] += 1
        except Rejection as rejection:
            part.forget(item.customer_id)  # step() leaves it untouched; be sure anyway
            if redelivered and rejection.reason == "too_late":
                # Applied before (a crash, or a seek back), and its id is no longer remembered
                # (ids are kept for max_lateness): a duplicate, not a late event.
                self.counts["duplicates"] += 1
            else:
                outgoing.append(self._dead_letter(key, value, rejection, source))
        part.message = None
        return [*part.take_outgoing(), *outgoing]

    def _dead_letter(
        self,
        key: bytes | None,
        value: bytes | None,
        rejection: Rejection,
        source: tuple[str, int, int],
    ) -> DeadLetter:
        self.counts[f"rejected.{rejection.reason}"] += 1
        return DeadLetter(key, value, rejection.reason, rejection.message, source)

    def _partition(self, partition: int, wall: int) -> PartitionStates:
        part = self.partitions.get(partition)
        if part is None:
            part = self._open(partition, wall)
        return part

    def _open(self, partition: int, wall: int) -> PartitionStates:
        """Rebuild a partition's deadline queue and clock from the table, republish
        outboxes, and switch customers stored under another rule version (SPEC §3)."""
        part = PartitionStates(self, partition)
        engine = part.engine
        unsure_from = self.flushed_before(part)
        version = self.rules.ruleset.version
        pending: list[tuple[str, CustomerRecord]] = []
        stale: list[str] = []
        customers = 0
        for key, value in self.table.partition_items(partition):
            if key.startswith(CLOCK_KEY):
                clock, offset = orjson.loads(value)
                engine.restore_clock(clock)
                part.handled_offset = max(part.handled_offset, offset)
                continue
            record = CustomerRecord.from_bytes(value)
            customer_id = key.decode()
            customers += 1
            engine.schedule(customer_id, record.due)
            if record.format == 1:
                engine.restore_clock(record.clock)
            part.handled_offset = max(part.handled_offset, record.offset)
            if record.outbox and record.offset >= unsure_from:
                pending.append((customer_id, record))
            if stored_rules_version(record.state) != version:
                stale.append(customer_id)
        part.persisted_clock = engine.clock
        part.offset = part.persisted_offset = part.handled_offset
        self.partitions[partition] = part
        log.info(
            "partition_opened partition=%d customers=%d clock=%s republish=%d rollout=%d",
            partition,
            customers,
            engine.clock,
            sum(len(record.outbox) for _, record in pending),
            len(stale),
        )
        for customer_id, record in pending:
            state = state_from_bytes(customer_id, record.state)
            part.republish(customer_id, record.outbox, state)
        if stale:
            # SPEC section 3: every stored customer switches now, at the clock.
            at = engine.clock if self.event_clock and engine.clock is not None else wall
            switched = engine.switch_version(stale, at)
            self.counts["rollout_switched"] += switched
            log.info(
                "rules_rollout partition=%d version=%d customers=%d", partition, version, switched
            )
        return part


def _check_key(event: Purchase | Return, key: bytes | None) -> None:
    # State lives in the partition of the message; a wrongly keyed event would
    # split a customer over two partitions.
    if key != event.customer_id.encode():
        raise Rejection("wrong_key", "the message key is not the event's customer_id")
