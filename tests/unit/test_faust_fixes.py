"""The work-arounds for faust-streaming#596 and #606 (streams.worker.faust_fixes).

Faust's commit bookkeeping is exercised directly on a consumer built without
its Kafka connection, and its flow control on a queue of its own (unit tests of
the shell); the integration tests that prove the effect are
tests/integration/test_worker_recovery.py, tests/integration/test_head_gap_heal.py
(a forced lost message) and, for a bare app built on the fixed App,
test_faust_table_is_restored_from_its_changelog in tests/integration/test_smoke_kafka.py.
"""

from __future__ import annotations

import asyncio
import inspect
from collections import defaultdict
from typing import Any
from unittest.mock import patch
from weakref import WeakSet

import pytest
from faust.events import Event
from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread
from faust.transport.drivers.aiokafka import Consumer as FaustConsumer
from faust.transport.drivers.aiokafka import Producer as FaustProducer
from faust.types import TP, Message
from intervaltree import IntervalTree
from mode.utils.queues import FlowControlEvent, FlowControlQueue

from streams.worker.faust_fixes import (
    App,
    DedupingAcksConsumer,
    HeadGapHealingConsumer,
    HeadGapWatch,
    IdempotentProducer,
    KeepingFlowControl,
    head_gap,
    lost_commits,
)

PARTITION = TP("purchases", 0)


def bookkeeping(cls: type, committed: int | None, acked: list[int]) -> FaustConsumer:
    consumer = object.__new__(cls)
    consumer._acked = defaultdict(list, {PARTITION: list(acked)})
    consumer._acked_index = defaultdict(set, {PARTITION: set(acked)})
    consumer._committed_offset = defaultdict(lambda: None, {PARTITION: committed})
    consumer._gap = defaultdict(IntervalTree)
    return consumer


def drain(consumer: FaustConsumer) -> list[int]:
    """The offsets successive commit rounds would commit, with no new acks between them."""
    commits = []
    while (offset := consumer._new_offset(PARTITION)) is not None:
        if consumer._committed_offset[PARTITION] == offset:
            break
        consumer._committed_offset[PARTITION] = offset
        commits.append(offset)
    return commits


# After a restart the first messages past the committed offset 10 were handled twice.
TWICE_HANDLED = [10, 10, 11, 11, 12, 12, 13, 14, 15]


def test_faust_alone_commits_one_offset_per_round_over_duplicates() -> None:
    # Why the work-around exists; if this fails, Faust fixed #596 and it can go.
    assert len(drain(bookkeeping(FaustConsumer, 10, TWICE_HANDLED))) > 2


def test_duplicated_acks_commit_in_one_round() -> None:
    consumer = bookkeeping(DedupingAcksConsumer, 10, TWICE_HANDLED)
    assert drain(consumer) == [16]
    assert consumer._acked[PARTITION] == []
    assert consumer._acked_index[PARTITION] == set()


def test_a_round_commits_no_further_than_the_first_unacknowledged_offset() -> None:
    consumer = bookkeeping(DedupingAcksConsumer, 10, [10, 10, 11, 13, 13, 14])
    assert consumer._new_offset(PARTITION) == 12
    assert consumer._acked[PARTITION] == [13, 14]


def test_faust_alone_commits_over_one_missing_offset_at_the_head() -> None:
    # Why the work-around exists (#606); if this fails, Faust stopped doing it.
    assert bookkeeping(FaustConsumer, 12, [13, 14])._new_offset(PARTITION) == 15


def test_faust_alone_holds_the_committed_offset_before_two_missing_offsets() -> None:
    # The stall the healing consumer ends; if this fails, Faust changed its gap rule.
    assert drain(bookkeeping(FaustConsumer, 12, [14, 15])) == []


def test_one_missing_offset_at_the_head_is_not_committed_over() -> None:
    consumer = bookkeeping(DedupingAcksConsumer, 12, [13, 14])
    assert drain(consumer) == []
    consumer._acked[PARTITION].append(12)  # the missing message, fetched again
    consumer._acked_index[PARTITION].add(12)
    assert drain(consumer) == [15]


def test_a_gap_the_fetcher_saw_is_still_filled() -> None:
    # Faust records offsets it saw skipped (markers, compaction) in `_gap` and
    # counts them as acknowledged; a head gap they cover is not a lost message.
    consumer = bookkeeping(DedupingAcksConsumer, 12, [15, 16])
    consumer._gap[PARTITION].addi(12, 15)
    assert drain(consumer) == [17]


def test_acks_below_the_committed_offset_are_dropped() -> None:
    consumer = bookkeeping(DedupingAcksConsumer, 20, [18, 19, 19, 20, 21])
    assert drain(consumer) == [22]


@pytest.mark.parametrize("committed", [None, 0])
def test_first_commit_of_a_partition(committed: int | None) -> None:
    assert drain(bookkeeping(DedupingAcksConsumer, committed, [0, 0, 1, 2, 2])) == [3]


def stream_queue(flow: FlowControlEvent) -> FlowControlQueue[str]:
    """An agent's input queue as Faust builds it: emptied when flow resumes."""
    return FlowControlQueue(flow_control=flow, clear_on_resume=True)


def recovery_with_an_event_fetched_after_the_seek(flow: FlowControlEvent) -> int:
    """What recovery does to flow control; returns how many events the agent still has."""
    queue = stream_queue(flow)
    flow.resume()  # recovery starts reading the changelogs: flow is on from here
    queue.put_nowait("event fetched after the seek to the committed offset")
    flow.resume()  # recovery is complete
    assert flow.is_active()
    return queue.qsize()


def test_faust_alone_drops_an_event_queued_while_flow_was_on() -> None:
    # Why the work-around exists; if this fails, Faust fixed it and it can go.
    assert recovery_with_an_event_fetched_after_the_seek(FlowControlEvent()) == 0


def test_a_resume_while_flow_is_on_keeps_the_queued_events() -> None:
    assert recovery_with_an_event_fetched_after_the_seek(KeepingFlowControl()) == 1


def test_a_resume_after_a_suspension_still_empties_the_queues() -> None:
    flow = KeepingFlowControl()
    queue = stream_queue(flow)
    flow.resume()
    queue.put_nowait("event of a partition that the rebalance may take away")
    flow.suspend()
    flow.resume()
    assert flow.is_active()
    assert queue.qsize() == 0


def test_the_worker_app_is_built_from_the_fixed_classes() -> None:
    app = App("faust-fixes-test", broker="kafka://127.0.0.1:1")
    assert app.transport.Consumer is HeadGapHealingConsumer
    assert issubclass(HeadGapHealingConsumer, DedupingAcksConsumer)
    assert isinstance(app.flow_control, KeepingFlowControl)


def test_the_worker_producer_is_idempotent_with_acks_all() -> None:
    """Faust alone asks for idempotence only in transactions; pins that and the fix."""
    app = App("faust-fixes-test", broker="kafka://127.0.0.1:1", producer_acks=-1)
    assert FaustProducer(app.transport)._settings_extra() == {}  # at_least_once in Faust
    producer = app.producer
    assert isinstance(producer, IdempotentProducer)
    extra = producer._settings_extra()
    assert extra["enable_idempotence"] is True
    assert extra["acks"] == "all"


# The head-gap decision (HeadGapWatch), in plain calls; times are seconds.

GRACE = 5.0


@pytest.mark.parametrize(
    ("committed", "acked", "read", "end"),
    [
        (10, [12, 13], 13, 12),
        (10, [11], 11, 11),  # one missing offset is a gap too
        (10, [10, 12], 12, None),  # the head is acknowledged: Faust commits up to 11
        (10, [], 11, 12),  # 10 and 11 delivered, neither acknowledged: the lost tail
        (10, [], 10, None),  # a seek to 10 sets the read offset to 10: nothing delivered
        (10, [], None, None),
        (None, [12, 13], 13, None),  # nothing committed yet: where the partition starts is unknown
    ],
)
def test_head_gap(
    committed: int | None, acked: list[int], read: int | None, end: int | None
) -> None:
    assert head_gap(committed, acked, read) == end


def observe(watch: HeadGapWatch, now: float, committed: int = 10, in_flight: bool = False) -> Any:
    return watch.observe(PARTITION, committed, 12, in_flight, now)


def test_a_gap_with_nothing_in_flight_for_the_grace_period_is_sought_once() -> None:
    watch = HeadGapWatch(grace=GRACE)
    assert observe(watch, 100.0) is None
    assert observe(watch, 104.9) is None
    assert observe(watch, 105.0) == 10
    assert [observe(watch, 105.0 + step) for step in (0.5, 1.0, 5.0, 9.9)] == [None] * 4


def test_a_message_in_flight_restarts_the_grace_period() -> None:
    watch = HeadGapWatch(grace=GRACE)
    observe(watch, 100.0)
    assert observe(watch, 104.0, in_flight=True) is None
    assert observe(watch, 108.0) is None
    assert observe(watch, 109.0) == 10


def test_a_stall_that_outlives_its_seek_is_sought_again_after_a_doubling_backoff() -> None:
    watch = HeadGapWatch(grace=GRACE, max_backoff=30.0)
    observe(watch, 0.0)
    seeks = [now for now in range(0, 200) if observe(watch, float(now)) is not None]
    assert seeks == [5, 15, 35, 65, 95, 125, 155, 185]  # 10, 20, then 30 s (the cap) apart


def test_each_stall_gets_its_own_seek() -> None:
    watch = HeadGapWatch(grace=GRACE)
    observe(watch, 0.0)
    assert observe(watch, 5.0) == 10
    assert observe(watch, 6.0, committed=40) is None  # progress: a new stall, a new grace period
    assert observe(watch, 11.0, committed=40) == 40


def test_a_closed_gap_ends_the_stall() -> None:
    watch = HeadGapWatch(grace=GRACE)
    observe(watch, 0.0)
    assert watch.observe(PARTITION, 10, None, False, 3.0) is None
    assert observe(watch, 6.0) is None  # the grace period starts again
    assert observe(watch, 11.0) == 10


# The healing consumer's view of what is in flight, on Faust's own structures.


def healing(committed: int, acked: list[int], read: int | None) -> HeadGapHealingConsumer:
    consumer = bookkeeping(HeadGapHealingConsumer, committed, acked)
    consumer._read_offset = defaultdict(lambda: None, {PARTITION: read})
    consumer._unacked_messages = WeakSet()
    consumer._head_gaps = HeadGapWatch(grace=GRACE)
    consumer._head_gap_checked = 0.0
    consumer.commit_check_interval = None  # the commit check has its own tests
    consumer._commit_checked = 0.0
    consumer._commit_fut = None
    consumer.flow_active = True
    consumer.app = App("faust-fixes-test", broker="kafka://127.0.0.1:1")
    return consumer


def message(offset: int, tp: TP = PARTITION) -> Message:
    return Message(tp.topic, tp.partition, offset, 0.0, 0, None, None, b"{}", None, tp=tp)


def stream_channel(consumer: HeadGapHealingConsumer) -> Any:
    """The purchases topic as an agent reads it, registered with the app's conductor."""
    channel = consumer.app.topic(PARTITION.topic)
    consumer.app.topics.add(channel)
    asyncio.run(consumer.app.topics._update_indices())
    assert consumer.app.topics.acks_enabled_for(PARTITION.topic)
    return channel


def test_nothing_in_flight_below_a_gap_the_fetcher_has_passed() -> None:
    consumer = healing(10, [12, 13], read=13)
    stream_channel(consumer).queue.put_nowait(
        Event(consumer.app, None, b"{}", None, message(14))  # above the gap
    )
    consumer._unacked_messages.add(held := message(9))  # below the committed offset,
    held.acked = True  # and acknowledged
    assert not consumer._in_flight_below(PARTITION, 12)


def test_a_queued_message_below_the_gap_is_in_flight() -> None:
    consumer = healing(10, [12, 13], read=13)
    queued = message(11)
    stream_channel(consumer).queue.put_nowait(Event(consumer.app, None, b"{}", None, queued))
    assert consumer._in_flight_below(PARTITION, 12)
    other = TP(PARTITION.topic, 1)
    consumer._read_offset[other] = 13
    assert not consumer._in_flight_below(other, 12)  # another partition's message


def test_a_message_being_processed_below_the_gap_is_in_flight() -> None:
    consumer = healing(10, [12, 13], read=13)
    consumer._unacked_messages.add(processing := message(10))
    assert consumer._in_flight_below(PARTITION, 12)
    processing.acked = True
    assert not consumer._in_flight_below(PARTITION, 12)


@pytest.mark.parametrize("read", [None, 10])
def test_a_gap_the_fetcher_has_not_delivered_through_is_in_flight(read: int | None) -> None:
    # After a seek the read offset is the committed one until the fetcher delivers again.
    assert healing(10, [12, 13], read=read)._in_flight_below(PARTITION, 12)
    assert not healing(10, [12, 13], read=11)._in_flight_below(PARTITION, 12)


def test_a_lost_tail_is_sought_too() -> None:
    # The last messages of a partition, delivered and lost: nothing later is acknowledged.
    consumer = healing(10, [], read=11)
    stream_channel(consumer)
    calls = fetches(consumer, [100.0, 105.0])
    assert calls == [("fetch",), ("seek", {PARTITION: 10}), ("fetch",)]


class FetcherThread:
    """The consumer thread's side of a fetch and a seek, recorded in order."""

    def __init__(self, consumer: HeadGapHealingConsumer) -> None:
        self.consumer, self.calls = consumer, []

    async def getmany(self, active: set[TP], timeout: float) -> dict[TP, list[Any]]:
        self.calls.append(("fetch",))
        return {}

    async def seek_wait(self, offsets: dict[TP, int]) -> None:
        self.calls.append(("seek", offsets))
        self.consumer._read_offset.update(offsets)


def fetches(consumer: HeadGapHealingConsumer, times: list[float]) -> list[tuple[Any, ...]]:
    thread = FetcherThread(consumer)
    consumer._thread = thread
    clock = iter(times)
    with patch.object(consumer, "_now", lambda: next(clock)):
        for _ in times:
            asyncio.run(consumer._getmany({PARTITION}, timeout=1.0))
    return thread.calls


def test_a_stalled_partition_is_sought_to_its_committed_offset_before_a_fetch() -> None:
    consumer = healing(10, [12, 13], read=13)
    stream_channel(consumer)
    calls = fetches(consumer, [100.0, 103.0, 105.0, 106.0, 200.0])
    # The seek resets the read offset: the re-fetched messages are in flight from then on.
    assert calls == [("fetch",)] * 2 + [("seek", {PARTITION: 10})] + [("fetch",)] * 3


def test_a_failed_seek_does_not_stop_the_fetcher() -> None:
    consumer = healing(10, [12, 13], read=13)
    stream_channel(consumer)

    class RevokedMeanwhile(FetcherThread):
        async def seek_wait(self, offsets: dict[TP, int]) -> None:
            self.calls.append(("seek", offsets))
            raise RuntimeError("partition no longer assigned")

    consumer._thread = thread = RevokedMeanwhile(consumer)
    clock = iter([100.0, 105.0])
    with patch.object(consumer, "_now", lambda: next(clock)):
        for _ in range(2):
            asyncio.run(consumer._getmany({PARTITION}, timeout=1.0))
    assert thread.calls == [("fetch",), ("seek", {PARTITION: 10}), ("fetch",)]


@pytest.mark.parametrize("state", ["rebalancing", "flow stopped", "partition paused", "disabled"])
def test_no_seek_while_the_partition_is_not_flowing(state: str) -> None:
    consumer = healing(10, [12, 13], read=13)
    stream_channel(consumer)
    active = {PARTITION}
    if state == "rebalancing":
        consumer.app.rebalancing = True
    elif state == "flow stopped":
        consumer.flow_active = False
    elif state == "partition paused":
        active = set()
    else:
        consumer.head_gap_grace = None
    thread = FetcherThread(consumer)
    consumer._thread = thread
    clock = iter([100.0, 106.0, 112.0])
    with patch.object(consumer, "_now", lambda: next(clock)):
        for _ in range(3):
            asyncio.run(consumer._getmany(active, timeout=1.0))
    assert ("seek", {PARTITION: 10}) not in thread.calls


# Lost commits: offsets Faust counts as committed that the broker does not have.


def test_lost_commits_are_those_the_broker_lacks_or_holds_lower() -> None:
    other = TP("purchases", 1)
    third = TP("ticks", 0)
    believed = {PARTITION: 10, other: 5, third: 7}
    assert lost_commits(believed, {PARTITION: 10, other: None, third: 3}) == {other: 5, third: 7}
    assert lost_commits(believed, {PARTITION: 12, other: 5, third: 7}) == {}
    assert lost_commits({PARTITION: 1}, {}) == {PARTITION: 1}


class CommitThread(FetcherThread):
    """The consumer thread with a broker that stored `stored` offsets; commits recorded."""

    def __init__(self, consumer: HeadGapHealingConsumer, stored: dict[TP, int | None]) -> None:
        super().__init__(consumer)
        self.stored = stored

    def assignment(self) -> set[TP]:
        return {PARTITION}

    async def call_thread(self, fun: Any) -> Any:
        self.calls.append(("ask committed",))
        return dict(self.stored)

    async def commit(self, offsets: dict[TP, int]) -> bool:
        self.calls.append(("commit", offsets))
        self.stored.update(offsets)
        return True


def checking(stored: dict[TP, int | None], times: list[float]) -> list[tuple[Any, ...]]:
    consumer = healing(11, [], read=10)  # Faust counts 11 as committed; nothing acked since
    consumer.head_gap_grace = None
    consumer.commit_check_interval = 10.0
    consumer._commit_checked = 0.0
    stream_channel(consumer)
    consumer._thread = thread = CommitThread(consumer, stored)
    clock = iter(times)
    with patch.object(consumer, "_now", lambda: next(clock)):
        for _ in times:
            asyncio.run(consumer._getmany({PARTITION}, timeout=1.0))
    return thread.calls


def test_a_commit_the_broker_lacks_is_made_again_once() -> None:
    calls = checking({PARTITION: None}, [5.0, 10.0, 15.0, 20.0])
    assert calls == [
        ("fetch",),
        ("ask committed",),
        ("commit", {PARTITION: 11}),
        ("fetch",),
        ("fetch",),
        ("ask committed",),  # the broker has it now: nothing to do
        ("fetch",),
    ]


def test_nothing_is_committed_when_the_broker_has_the_offset() -> None:
    calls = checking({PARTITION: 11}, [10.0, 20.0])
    assert ("commit", {PARTITION: 11}) not in [c for c in calls if c[0] == "commit"]
    assert calls.count(("ask committed",)) == 2


def test_faust_counts_a_failed_commit_as_committed() -> None:
    """What the commit check exists for: `_commit_offsets` records the offsets even when
    the commit returned False (faust/transport/consumer.py)."""
    app = App("faust-fixes-test", broker="kafka://127.0.0.1:1")
    consumer = app.consumer  # built, not started

    class Refusing:
        def assignment(self) -> set[TP]:
            return {PARTITION}

        async def commit(self, offsets: dict[TP, int]) -> bool:
            return False  # as the driver answers a CommitFailedError "already rebalanced"

    async def flushed() -> None:
        return None

    consumer._thread = Refusing()

    async def commit() -> bool:
        with patch.object(app.producer, "flush", flushed):
            return bool(await consumer._commit_offsets({PARTITION: 1}))

    assert asyncio.run(commit()) is False
    assert consumer._committed_offset[PARTITION] == 1


# Faust internals the healing consumer relies on; a failure here means Faust changed them.


def test_faust_fetches_a_batch_only_after_the_last_one_was_delivered() -> None:
    # The seek runs in `_getmany`; it is race-free only because the fetcher loop
    # asks for the next batch after delivering every record of the previous one.
    wait_next = inspect.getsource(FaustConsumer._wait_next_records)
    getmany = inspect.getsource(FaustConsumer.getmany)
    assert "self._getmany(" in wait_next
    assert getmany.index("await self._wait_next_records(") < getmany.index("yield tp, to_message(")
    drain_loop = inspect.getsource(FaustConsumer._drain_messages)
    assert drain_loop.index("getmany(timeout=") < drain_loop.index("async for tp, message in ait")


def test_faust_seek_wait_sets_the_read_offset() -> None:
    source = inspect.getsource(AIOKafkaConsumerThread._seek_wait)
    assert "self.consumer._read_offset[tp] = offset" in source


def test_faust_drops_fetched_records_below_the_read_offset() -> None:
    # Why the seek must not be overtaken by a stale batch (robinhood/faust#115).
    source = inspect.getsource(FaustConsumer._drain_messages)
    assert "if r_offset is None or offset >= r_offset:" in source
    assert "set_read_offset(tp, offset)" in source
