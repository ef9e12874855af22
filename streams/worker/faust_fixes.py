"""Work-arounds for faust-streaming 0.15.3 bugs that the worker meets; each says why.

streams.worker.app builds its app from `App`, so nothing is patched globally. They
assume what holds for every topic the worker reads with acknowledgements: it is
neither compacted nor written in transactions, so every offset is a message.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import faust
from faust.exceptions import ProducerSendError
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from faust.transport.drivers.aiokafka import Producer as AIOKafkaProducer
from faust.transport.drivers.aiokafka import ensure_aiokafka_TP
from faust.types import TP, Message
from faust.types.transports import TransportT
from mode.utils.objects import cached_property
from mode.utils.queues import FlowControlEvent

log = logging.getLogger(__name__)

#: How long a head gap must persist with nothing below it in flight before the
#: partition is fetched again: many commit intervals (the worker's is 1 s), so a
#: message that is only slow is never taken for a lost one.
HEAD_GAP_GRACE = 5.0
#: A repeated re-seek of the same stall waits twice as long as the one before, up to this.
HEAD_GAP_MAX_BACKOFF = 300.0
#: How often the offsets Faust counts as committed are compared with the broker's.
COMMIT_CHECK_INTERVAL = 10.0
#: The longest the fetcher waits for that comparison (the broker may be unreachable).
COMMIT_CHECK_TIMEOUT = 5.0


def head_gap(committed: int | None, acked: Iterable[int], read: int | None = None) -> int | None:
    """Where the unacknowledged offsets at a partition's head end, if they end a gap.

    The offsets from `committed` up to the returned one are not acknowledged
    while a later one is (the first of `acked`) or, when none is, while the
    fetcher has delivered a later one (`read`, the last offset it delivered).
    None when there is no such gap, or when nothing was committed yet (Faust
    then does not know where the partition starts).
    """
    if committed is None:
        return None
    first = min(acked, default=None)
    if first is not None:
        return first if first > committed else None
    return read + 1 if read is not None and read > committed else None


def lost_commits(believed: Mapping[TP, int], broker: Mapping[TP, int | None]) -> dict[TP, int]:
    """The offsets Faust counts as committed that the broker does not have.

    `believed` is Faust's committed offset per partition, `broker` what the group
    coordinator answered for the same partitions (None: nothing committed)."""
    lost = {}
    for tp, offset in believed.items():
        stored = broker.get(tp)
        if stored is None or stored < offset:
            lost[tp] = offset
    return lost


@dataclass
class _Stall:
    committed: int
    quiet_since: float  # since when nothing below the gap was in flight
    seeks: int = 0
    last_seek: float = 0.0


class HeadGapWatch:
    """Decides when a partition whose acknowledgements have a gap at the head is fetched again.

    Pure bookkeeping (the consumer below feeds it), so the decision is tested
    with plain calls. A partition is re-sought to its committed offset when its
    head gap has lasted `grace` seconds during which nothing below the gap was in
    flight; the same stall (same committed offset) is re-sought again only after
    a backoff that doubles each time, in case its messages are gone for good.
    """

    def __init__(self, grace: float = HEAD_GAP_GRACE, max_backoff: float = HEAD_GAP_MAX_BACKOFF):
        self.grace = grace
        self.max_backoff = max_backoff
        self._stalls: dict[TP, _Stall] = {}

    def observe(
        self, tp: TP, committed: int | None, gap_end: int | None, in_flight: bool, now: float
    ) -> int | None:
        """The offset to seek `tp` to now, or None.

        `gap_end` is `head_gap(...)`'s answer; `in_flight` says whether a
        message of `tp` below it is still queued, being processed or not yet
        delivered by the fetcher.
        """
        if committed is None or gap_end is None:
            self._stalls.pop(tp, None)
            return None
        stall = self._stalls.get(tp)
        if stall is None or stall.committed != committed:
            stall = self._stalls[tp] = _Stall(committed, now)
        if in_flight:
            stall.quiet_since = now
            return None
        if now - stall.quiet_since < self.grace:
            return None
        if stall.seeks and now - stall.last_seek < self._backoff(stall.seeks):
            return None
        stall.seeks += 1
        stall.last_seek = now
        return committed

    def forget(self, tps: Iterable[TP]) -> None:
        for tp in tps:
            self._stalls.pop(tp, None)

    def retain(self, tps: Iterable[TP]) -> None:
        keep = set(tps)
        self.forget([tp for tp in self._stalls if tp not in keep])

    def _backoff(self, seeks: int) -> float:
        return min(self.grace * 2.0**seeks, self.max_backoff)


class FlushingConsumer(AIOKafkaConsumer):
    """Faust's consumer that lets the app flush its state between computing the offsets
    to commit and committing them (decision 0014).

    Every commit, periodic, on a rebalance or at stop, goes through `_commit_tps`.
    The offsets are computed first: a stream acknowledges an event only after the
    agent has handled it, so each acknowledged event is then in the app's state.
    `app.flush_before_commit()` (when set) then writes that state and queues its
    sends; Faust's `_commit_offsets` flushes the producer before the commit, so the
    commit never overtakes them. A flush whose sends failed commits nothing.
    """

    async def _commit_tps(self, tps: Iterable[TP], start_new_transaction: bool) -> bool:
        commit_offsets = self._filter_committable_offsets(tps)
        flush = getattr(self.app, "flush_before_commit", None)
        if flush is not None and not await flush():
            return False
        if not commit_offsets:
            return False
        try:
            await self._handle_attached(commit_offsets)
        except ProducerSendError as exc:
            await self.crash(exc)
            return False
        did_commit: bool = await self._commit_offsets(
            commit_offsets, start_new_transaction=start_new_transaction
        )
        return did_commit


class DedupingAcksConsumer(FlushingConsumer):
    """Faust's consumer with commit offsets computed from distinct acked offsets.

    faust-streaming#596: after a restart, recovery resumes the fetcher before it
    seeks stream partitions to their committed offsets, so the first messages
    after the committed offset can reach the agent twice (the agent dedupes
    them). Both copies are acknowledged, and Faust's `_new_offset` then finds a
    "run of consecutive offsets" of length one or two at every duplicate:
    the committed offset advances by one per commit interval, and a worker
    restarted after a crash takes many minutes to commit what it has processed
    in seconds (seen as a stalled consumer group in the SIGKILL recovery test).

    The acked offsets are deduplicated and those below the committed offset
    (already committed) dropped before Faust's own computation runs, so no
    offset is ever committed that was not acknowledged.

    faust-streaming#606: Faust commits over one missing offset at the head of
    the acknowledged offsets (a transaction marker, to Faust); with concurrency
    above 1 that commits a message still being processed, and with our topics
    (no transactions, no compaction) such an offset is a message that was lost.
    Here a gap at the head is never committed over: the partition waits, and
    `HeadGapHealingConsumer` fetches the missing messages again. A gap that
    Faust's fetcher saw in the offsets it read (`_gap`) is still filled by Faust.
    """

    def _new_offset(self, tp: TP) -> int | None:
        acked: list[int] = self._acked[tp]
        if acked:
            committed = self._committed_offset[tp]
            distinct = {offset for offset in acked if committed is None or offset >= committed}
            if len(distinct) != len(acked):
                acked[:] = sorted(distinct)
                self._acked_index[tp] = set(distinct)
            if head_gap(committed, acked) is not None and not self._gap_covers(tp, committed):
                return None
        return super()._new_offset(tp)

    def _gap_covers(self, tp: TP, offset: int | None) -> bool:
        gaps = self._gap.get(tp)
        return offset is not None and gaps is not None and bool(gaps[offset])


class HeadGapHealingConsumer(DedupingAcksConsumer):
    """Fetches a partition again from its committed offset when messages at its head were lost.

    Faust commits a partition only up to its first unacknowledged offset, so a
    message the fetcher got past without its being processed holds the
    partition's committed offset below everything processed after it until the
    next rebalance. Faust has two ways to lose one: the queue emptied by a
    flow-control resume (the other half of faust-streaming#596, fixed by
    `KeepingFlowControl`), and records dropped by the fetcher as below its read
    offset when a batch fetched before a seek is delivered after it and raises
    that offset again (robinhood/faust#115). The SIGKILL recovery test saw such
    a stall after the first fix, with no proven cause: partition 2 committed at
    752 of 1,726 after the restarted worker had processed the rest of it.

    On each fetch, at most every `head_gap_check_interval` seconds, every owned
    partition whose unacknowledged head ends a gap (`head_gap`: a later offset
    is acknowledged, or delivered when none is) is checked: if no message below
    the gap's end is in a stream queue, being processed, or still to be
    delivered by the fetcher (its read offset has not reached the gap's end
    since the last seek) for `head_gap_grace` seconds, the partition is sought
    back to its committed offset. The messages come again; those already
    processed are deduped by the agent (event ids) and their acknowledgements
    by the consumer above.

    The check runs inside `_getmany`, which the fetcher calls only between two
    fetched batches: no stale batch is then being delivered, so the seek and the
    read offset it sets cannot be overtaken by records fetched before it.
    `head_gap_grace = None` turns healing off.

    A commit Faust counts as done may not be at the broker: `_commit_offsets`
    records its offsets as committed even when the commit returned False (the
    driver returns False without a word for a CommitFailedError that says "already
    rebalanced"). Nothing acknowledged is left to commit, so the group's committed
    offset stays behind what was processed until the next rebalance (seen in CI: a
    worker that processed the one message of a partition, with the group's offset
    for it never committed). Every `commit_check_interval` seconds the offsets
    Faust counts as committed are compared with the coordinator's, and those the
    broker lacks are committed again: they were acknowledged, and their attached
    sends flushed, before the first attempt. `commit_check_interval = None` turns
    it off.
    """

    head_gap_grace: float | None = HEAD_GAP_GRACE
    head_gap_check_interval: float = 0.5
    commit_check_interval: float | None = COMMIT_CHECK_INTERVAL

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_gaps = HeadGapWatch(self.head_gap_grace or HEAD_GAP_GRACE)
        self._head_gap_checked = 0.0
        self._commit_checked = self._now()

    async def _getmany(self, active_partitions: set[TP] | None, timeout: float) -> Any:
        now = self._now()
        grace = self.head_gap_grace
        if grace is not None and now - self._head_gap_checked >= self.head_gap_check_interval:
            self._head_gap_checked = now
            for tp, offset in self._head_gap_seeks(active_partitions or set(), now).items():
                await self._heal(tp, offset)
        interval = self.commit_check_interval
        if interval is not None and now - self._commit_checked >= interval:
            self._commit_checked = now
            await self._recommit_lost_commits()
        return await super()._getmany(active_partitions, timeout)

    async def _recommit_lost_commits(self) -> None:
        if self.app.rebalancing or not self.flow_active or self._commit_fut is not None:
            return
        assignment = self.assignment()
        believed = {
            tp: offset
            for tp, offset in list(self._committed_offset.items())
            if offset is not None
            and tp in assignment
            and self.app.topics.acks_enabled_for(tp.topic)
        }
        if not believed:
            return
        try:
            broker = await self._broker_committed(list(believed))
        except Exception as error:  # the broker unreachable, a rebalance: the next check
            log.debug("commit_check_skipped error=%r", error)
            return
        if self.app.rebalancing or self._commit_fut is not None:
            return  # a commit began meanwhile; the next check compares again
        lost = lost_commits(believed, broker)
        if not lost:
            return
        log.warning(
            "lost_commit_recommitted offsets=%s broker=%s",
            ",".join(f"{tp.topic}:{tp.partition}@{offset}" for tp, offset in sorted(lost.items())),
            ",".join(f"{tp.topic}:{tp.partition}@{broker.get(tp)}" for tp in sorted(lost)),
        )
        await self._commit(lost)

    async def _broker_committed(self, tps: list[TP]) -> dict[TP, int | None]:
        """The group coordinator's committed offsets of `tps`, asked from the consumer's thread."""
        thread: Any = self._thread

        async def fetch() -> dict[TP, int | None]:
            consumer = thread._ensure_consumer()
            answer = await asyncio.wait_for(
                consumer._coordinator.fetch_committed_offsets(
                    [ensure_aiokafka_TP(tp) for tp in tps]
                ),
                COMMIT_CHECK_TIMEOUT,
            )
            stored = {(tp.topic, tp.partition): meta.offset for tp, meta in answer.items()}
            offsets: dict[TP, int | None] = {}
            for tp in tps:
                offset = stored.get((tp.topic, tp.partition))
                offsets[tp] = None if offset is None or offset < 0 else offset
            return offsets

        result: dict[TP, int | None] = await thread.call_thread(fetch)
        return result

    def _now(self) -> float:
        return time.monotonic()

    def _head_gap_seeks(self, active: set[TP], now: float) -> dict[TP, int]:
        """The partitions to fetch again now, with the offset to fetch them from."""
        if self.app.rebalancing or not self.flow_active:
            return {}
        owned = [tp for tp in active if self.app.topics.acks_enabled_for(tp.topic)]
        self._head_gaps.retain(owned)  # a revoked or paused partition's stall ends with it
        seeks: dict[TP, int] = {}
        for tp in owned:
            committed = self._committed_offset.get(tp)
            end = head_gap(committed, self._acked.get(tp) or (), self._read_offset.get(tp))
            in_flight = end is not None and self._in_flight_below(tp, end)
            offset = self._head_gaps.observe(tp, committed, end, in_flight, now)
            if offset is not None:
                seeks[tp] = offset
        return seeks

    def _in_flight_below(self, tp: TP, end: int) -> bool:
        """Whether a message of `tp` below `end` may still be acknowledged without a re-fetch."""
        read = self._read_offset.get(tp)
        committed = self._committed_offset.get(tp)
        # The fetcher has not delivered up to the gap's end since the last seek
        # (a seek sets the read offset to the committed offset).
        if read is None or read < end - 1 or read == committed:
            return True
        if any(not m.acked and m.tp == tp and m.offset < end for m in list(self.unacked)):
            return True  # taken from a queue by a stream, not finished
        return any(m.tp == tp and m.offset < end for m in _queued_messages(self.app, tp.topic))

    async def _heal(self, tp: TP, offset: int) -> None:
        acked = self._acked.get(tp) or []
        log.warning(
            "head_gap_refetch topic=%s partition=%d committed=%d first_acked=%d read=%s",
            tp.topic,
            tp.partition,
            offset,
            min(acked, default=-1),
            self._read_offset.get(tp),
        )
        try:
            await self.seek_wait({tp: offset})
        except Exception as error:  # e.g. the partition was revoked meanwhile
            # The fetch must go on: a failed seek leaves the stall, which is tried again.
            log.warning(
                "head_gap_refetch_failed topic=%s partition=%d error=%r",
                tp.topic,
                tp.partition,
                error,
            )


def _queued_messages(app: Any, topic: str) -> list[Message]:
    """The messages of `topic` waiting in the queues of the streams that read it."""
    channels: Iterable[Any] = app.topics._topic_name_index.get(topic, ())
    messages: list[Message] = []
    for channel in list(channels):
        queue = channel._queue  # None until a stream first reads the channel
        if queue is not None:
            messages.extend(event.message for event in list(queue._queue))
    return messages


class KeepingFlowControl(FlowControlEvent):
    """Flow control whose `resume` empties the stream queues only after a suspension.

    faust-streaming#596, the other half: when recovery ends, Faust resumes the
    stream partitions, seeks them to their committed offsets and only then calls
    `flow_control.resume()`, which empties every agent's queue. Flow has been on
    since recovery began, so records fetched after the seek may already sit in a
    queue; they are dropped unacknowledged, and no later seek fetches them again.
    The partition's committed offset then stops in front of the lost message
    until the next rebalance (seen as a restarted worker that published nothing
    for one partition, with that partition's committed offset one short).

    A suspension (a rebalance) still empties the queues, on suspend as before and
    on the resume that ends it. A resume while flow is already on keeps what is
    queued: those events belong to the current assignment, and if the seek does
    fetch one again the agent dedupes it by event id (and the consumer above
    dedupes its acknowledgement).
    """

    def resume(self) -> None:
        if not self.is_active():
            super().resume()


class IdempotentProducer(AIOKafkaProducer):
    """Faust turns on the idempotent producer only inside transactions (exactly_once,
    `_settings_extra`); the worker runs at_least_once, where a produce request retried
    after a lost response could write its records twice, and a retry after a failed one
    could reorder them. Every producer of the product uses acks=all and idempotence
    (SPEC section 7, issue 12)."""

    def _settings_extra(self) -> dict[str, Any]:
        return {**super()._settings_extra(), "acks": "all", "enable_idempotence": True}


class App(faust.App):
    """faust.App whose Kafka consumer, producer and flow control are the fixed ones."""

    #: Tests swap in a subclass (tests/integration/test_head_gap_heal.py).
    consumer_class: type[HeadGapHealingConsumer] = HeadGapHealingConsumer

    @cached_property
    def flow_control(self) -> FlowControlEvent:
        return KeepingFlowControl(loop=self.loop)

    def _new_transport(self) -> TransportT:
        transport = super()._new_transport()
        transport.Consumer = self.consumer_class  # type: ignore[misc]  # this app's only
        transport.Producer = IdempotentProducer  # type: ignore[misc]
        return transport
