"""Work-arounds for faust-streaming 0.15.3 bugs that the worker meets; each says why.

streams.app builds its app from `App`, so nothing is patched globally.
"""

from __future__ import annotations

import faust
from faust.transport.drivers.aiokafka import Consumer as AIOKafkaConsumer
from faust.types import TP
from faust.types.transports import TransportT
from mode.utils.objects import cached_property
from mode.utils.queues import FlowControlEvent


class DedupingAcksConsumer(AIOKafkaConsumer):
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
    """

    def _new_offset(self, tp: TP) -> int | None:
        acked: list[int] = self._acked[tp]
        if acked:
            committed = self._committed_offset[tp]
            distinct = {offset for offset in acked if committed is None or offset >= committed}
            if len(distinct) != len(acked):
                acked[:] = sorted(distinct)
                self._acked_index[tp] = set(distinct)
        return super()._new_offset(tp)


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


class App(faust.App):
    """faust.App whose Kafka consumer and flow control are the fixed ones."""

    @cached_property
    def flow_control(self) -> FlowControlEvent:
        return KeepingFlowControl(loop=self.loop)

    def _new_transport(self) -> TransportT:
        transport = super()._new_transport()
        transport.Consumer = DedupingAcksConsumer  # type: ignore[misc]  # this app's only
        return transport
