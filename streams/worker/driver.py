"""A broker-free driver for the segment worker (Kafka Streams' TopologyTestDriver in spirit).

It runs the real `SegmentProcessor` over in-memory topics and models what
Kafka and Faust do around it, so delivery rules are tested in milliseconds:

- customer states stay in the processor's memory until a flush of the processor
  (`SegmentProcessor.flush()`), which writes the local table and returns the
  changelog records, changes and membership records to send; the worker
  flushes the processor before every offsets commit (decision 0014);
- every send (a table changelog record, a change, a membership record, a dead
  letter) is pending until a flush makes it durable; a Publish is acked once
  all its messages are durable;
- the worker also flushes the processor on a timer, between any two messages:
  `run()` and `tick()` flush once they have handled what they were given;
- `flush()` flushes the processor, then makes pending sends durable (all, or a
  prefix: a flush that got part of its sends out before a crash);
- `commit()` flushes the processor and every pending send, then commits the
  consumed offsets (Faust flushes the producer before it commits);
- `crash()` loses what was not flushed (or, given a random generator, keeps a
  random prefix of each topic partition's pending sends, as a producer that
  got some batches out would), then restarts: the table is restored from its
  changelog (the worker drops its local state after an unclean stop) and
  consumption resumes at the committed offsets;
- `rebalance()` commits and reopens every partition from the table.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from segments.rules.evaluator import CompiledRules
from streams.settings import Topics
from streams.worker.processor import DeadLetter, Flush, Outgoing, SegmentProcessor
from streams.worker.timers import wall_now

CHANGELOG = "customers-changelog"


def partition_of(key: bytes, partitions: int) -> int:
    """A stable partitioner for the driver (Kafka's murmur2 gives other numbers; any will do)."""
    return zlib.crc32(key) % partitions


@dataclass
class _Group:
    """The messages of one Publish; `acked` runs when the last of them is durable."""

    remaining: int
    acked: Any


@dataclass
class _Send:
    topic: str
    partition: int
    key: bytes | None
    value: bytes | None
    group: _Group | None = None
    headers: dict[str, str] = field(default_factory=dict)


class _DriverTable:
    """The processor's CustomerTable: local partitions (a Flush's writes are then sent to
    the changelog)."""

    def __init__(self, driver: Driver) -> None:
        self.driver = driver
        self.partition = 0  # the partition of the message being handled (as Faust does)

    def get(self, key: bytes) -> bytes | None:
        return self.driver.local[self.partition].get(key)

    def write(self, partition: int, key: bytes, value: bytes) -> None:
        self.driver.local[partition][key] = value

    def partition_items(self, partition: int) -> Iterable[tuple[bytes, bytes]]:
        return list(self.driver.local[partition].items())


class Driver:
    """The worker's processor with in-memory topics, offsets, table and changelog."""

    def __init__(
        self,
        rules: CompiledRules,
        *,
        partitions: int = 4,
        event_clock: bool = True,
        wall: int | None = None,
        names: Topics | None = None,
    ) -> None:
        """`wall`: the wall clock the processor is given (default: now); `tick()` moves it."""
        self.rules = rules
        self.partitions = partitions
        self.event_clock = event_clock
        self.wall = wall_now() if wall is None else wall
        self.names = names or Topics("")
        self.inputs: list[list[tuple[bytes | None, bytes | None]]] = [[] for _ in range(partitions)]
        self.position = [0] * partitions  # the next offset to handle
        self.committed: list[int | None] = [None] * partitions
        self.changelog: list[dict[bytes, bytes]] = [{} for _ in range(partitions)]
        self.local: list[dict[bytes, bytes]] = [{} for _ in range(partitions)]
        self.topics: dict[str, list[tuple[bytes | None, bytes | None]]] = {}
        self.dead_letters: list[DeadLetter] = []
        self.pending: list[_Send] = []
        self.restarts = 0
        self._start()

    def _start(self) -> None:
        self.local = [dict(partition) for partition in self.changelog]
        self.position = [offset or 0 for offset in self.committed]
        self.table = _DriverTable(self)
        self.processor = SegmentProcessor(
            self.rules,
            self.names,
            self.table,
            lambda partition: self.committed[partition],
            event_clock=self.event_clock,
        )

    # input

    def send(self, value: bytes, key: bytes | None = None, partition: int | None = None) -> None:
        """Append a message to `purchases`: by default keyed and partitioned by customer_id."""
        if key is None:
            key = str(orjson.loads(value).get("customer_id", "")).encode()
        if partition is None:
            partition = partition_of(key, self.partitions)
        self.inputs[partition].append((key, value))

    def send_clock_marks(self, at: str) -> None:
        """A clock mark to every partition, as `segments produce --as-of` sends."""
        mark = orjson.dumps({"type": "clock", "at": at})
        for partition in range(self.partitions):
            self.inputs[partition].append((None, mark))

    def backlog(self) -> int:
        return sum(len(log) - pos for log, pos in zip(self.inputs, self.position, strict=True))

    # processing

    def run(self, limit: int | None = None, rng: random.Random | None = None) -> int:
        """Handle up to `limit` waiting messages (all by default); partitions take turns,
        or are picked at random with `rng`. Returns the number handled."""
        handled = 0
        while limit is None or handled < limit:
            ready = [p for p in range(self.partitions) if self.position[p] < len(self.inputs[p])]
            if not ready:
                break
            partition = rng.choice(ready) if rng is not None else ready[handled % len(ready)]
            offset = self.position[partition]
            key, value = self.inputs[partition][offset]
            self.table.partition = partition
            self._queue(partition, self.processor.message(partition, offset, key, value, self.wall))
            self.position[partition] = offset + 1
            handled += 1
        if handled:
            self._queue(0, [self.processor.flush()])  # as the worker's flush timer does
        return handled

    def seek(self, partition: int, offset: int) -> None:
        """Move a partition's next offset within the run, as a consumer seek does (the
        head-gap healing of streams/faust_fixes.py re-reads from the committed offset):
        a seek back hands the processor offsets it has already handled in this run."""
        self.position[partition] = offset

    def tick(self, wall: int | None = None) -> None:
        """Advance the wall clock (optional) and tick every partition, as the timer does."""
        if wall is not None:
            self.wall = wall
        for partition in range(self.partitions):
            self.table.partition = partition
            self._queue(partition, self.processor.tick(partition, self.wall))
        self._queue(0, [self.processor.flush()])

    def _queue(self, partition: int, outgoing: Sequence[Outgoing | None]) -> None:
        for item in outgoing:
            if item is None:
                continue
            if isinstance(item, Flush):
                for table_partition, table_key, table_value in item.writes:
                    self.pending.append(_Send(CHANGELOG, table_partition, table_key, table_value))
                if item.publish is not None:
                    self._queue(partition, [item.publish])
                continue
            if isinstance(item, DeadLetter):
                self.pending.append(
                    _Send(
                        self.names.purchases_dlq,
                        partition,
                        item.key,
                        item.value,
                        headers={"reason": item.reason},
                    )
                )
                continue
            group = _Group(len(item.messages), item.acked)
            for topic, key, value in item.messages:
                target = partition_of(key, self.partitions) if key is not None else partition
                self.pending.append(_Send(topic, target, key, value, group))

    # delivery

    def flush(self, count: int | None = None) -> None:
        """Flush the processor's dirty states, then make the first `count` pending sends
        durable (all by default), firing acks."""
        self._queue(0, [self.processor.flush()])
        count = len(self.pending) if count is None else count
        durable, self.pending = self.pending[:count], self.pending[count:]
        for sent in durable:
            self._land(sent)

    def _land(self, sent: _Send) -> None:
        if sent.topic == CHANGELOG:
            assert sent.key is not None and sent.value is not None
            self.changelog[sent.partition][sent.key] = sent.value
        elif sent.topic == self.names.purchases_dlq:
            reason = sent.headers["reason"]
            self.dead_letters.append(DeadLetter(sent.key, sent.value, reason, "", ("", 0, 0)))
        else:
            self.topics.setdefault(sent.topic, []).append((sent.key, sent.value))
        group = sent.group
        if group is not None:
            group.remaining -= 1
            if group.remaining == 0:
                group.acked()

    def commit(self) -> None:
        """Flush the processor and every pending send, then commit the handled offsets (the
        worker computes the offsets first; here nothing is handled in between)."""
        self.flush()
        self.committed = list(self.position)

    def crash(self, rng: random.Random | None = None) -> None:
        """Kill the worker: states not flushed and unflushed sends are lost (with `rng`, a
        random prefix of each topic partition's sends survives), then restart from the
        changelog and committed offsets."""
        if rng is not None:
            streams: dict[tuple[str, int], list[_Send]] = {}
            for sent in self.pending:
                streams.setdefault((sent.topic, sent.partition), []).append(sent)
            for sends in streams.values():
                for sent in sends[: rng.randint(0, len(sends))]:
                    self._land(sent)
        self.pending = []
        self.restarts += 1
        self._start()

    def rebalance(self) -> None:
        """Partitions are revoked (Faust commits first) and assigned again."""
        self.commit()
        self.processor.forget_partitions()

    def restart(self, rules: CompiledRules | None = None) -> None:
        """A clean stop (commit) and a start, optionally with another rule version."""
        self.commit()
        if rules is not None:
            self.rules = rules
        self.restarts += 1
        self._start()

    # results

    def published_changes(self) -> list[dict[str, Any]]:
        return [
            orjson.loads(value)
            for _, value in self.topics.get(self.names.segment_changes, [])
            if value is not None
        ]

    def memberships(self, segments: Iterable[str]) -> dict[str, list[str]]:
        """The compacted `segment-memberships` topic as {segment: sorted customer ids}."""
        latest: dict[bytes, bytes | None] = {}
        for key, value in self.topics.get(self.names.segment_memberships, []):
            assert key is not None
            latest[key] = value
        result: dict[str, list[str]] = {name: [] for name in segments}
        for key, value in latest.items():
            if value is None:
                continue
            customer_id, _, segment = key.decode().rpartition("|")
            if segment in result:
                result[segment].append(customer_id)
        for members in result.values():
            members.sort()
        return result

    def published_trait_changes(self) -> list[dict[str, Any]]:
        """Every record of `trait-changes` (SPEC section 3, traits), in publish order."""
        return [
            orjson.loads(value)
            for _, value in self.topics.get(self.names.trait_changes, [])
            if value is not None
        ]

    def trait_values(self, traits: Iterable[str]) -> dict[str, dict[str, str]]:
        """The compacted `trait-values` topic as replay's traits.json: {trait: {customer_id:
        value}}, customers whose last value is null left out."""
        latest: dict[bytes, bytes] = {}
        for key, value in self.topics.get(self.names.trait_values, []):
            assert key is not None and value is not None  # never a tombstone
            latest[key] = value
        result: dict[str, dict[str, str]] = {name: {} for name in traits}
        for key in sorted(latest):
            customer_id, _, trait = key.decode().rpartition("|")
            value = orjson.loads(latest[key])["value"]
            if trait in result and value is not None:
                result[trait][customer_id] = value
        return result
