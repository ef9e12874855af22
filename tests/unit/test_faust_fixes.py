"""The work-arounds for faust-streaming#596 (streams.faust_fixes).

Faust's commit bookkeeping is exercised directly on a consumer built without
its Kafka connection, and its flow control on a queue of its own (unit tests of
the shell); the integration tests that prove the effect are
tests/integration/test_worker_recovery.py and, for a bare app built on the
fixed App, test_faust_table_is_restored_from_its_changelog in
tests/integration/test_smoke_kafka.py.
"""

from __future__ import annotations

from collections import defaultdict

import pytest
from faust.transport.drivers.aiokafka import Consumer as FaustConsumer
from faust.types import TP
from intervaltree import IntervalTree
from mode.utils.queues import FlowControlEvent, FlowControlQueue

from streams.faust_fixes import App, DedupingAcksConsumer, KeepingFlowControl

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
    # (Faust's next round then skips a single missing offset at the head, which
    # it takes for a transaction marker; with concurrency 1 acks come in order.)
    consumer = bookkeeping(DedupingAcksConsumer, 10, [10, 10, 11, 13, 13, 14])
    assert consumer._new_offset(PARTITION) == 12
    assert consumer._acked[PARTITION] == [13, 14]


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
    assert app.transport.Consumer is DedupingAcksConsumer
    assert isinstance(app.flow_control, KeepingFlowControl)
