"""Per-partition clocks and deadline indexes, and the ticks that drive time-driven changes.

Faust timers cannot write tables, so a timer only sends a tick message to the
ticks topic, one per owned partition with an explicit partition number; the
segment agent reads ticks in the same stream as that partition's events and
does the table work there.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

TICK = b"{}"
# Decoded customer states kept per partition between their events and ticks: each
# is a few KiB, so 8 partitions keep well under 200 MiB.
MAX_KEPT_STATES = 4_096


def wall_now() -> int:
    """The wall clock in epoch microseconds (the shell owns time; the core is given it)."""
    return time.time_ns() // 1000


@dataclass
class PartitionTime:
    """One table partition's clock and its index of (due, customer) deadlines.

    The heap may hold stale entries (a customer's `due` moved after it was
    pushed); whoever pops one compares it with the stored state's `due` and
    skips it, so a tick costs O(due customers * log n), never a table scan.
    """

    partition: int
    clock: int | None = None
    persisted_clock: int | None = None  # the largest clock already written to the table
    offset: int = -1  # the largest `purchases` offset handled
    handled_offset: int = -1  # the largest offset found in the table when the partition opened
    deadlines: list[tuple[int, str]] = field(default_factory=list)
    acked: dict[str, set[str]] = field(default_factory=dict)  # customer -> published change ids
    # customer -> due after a tick that changed nothing and so was not written to the
    # table; the stored `due` is older, and every deadline before this one changed nothing
    unwritten_due: dict[str, int | None] = field(default_factory=dict)

    # customer -> (table value, decoded state) of recently read or written customers,
    # oldest first; bounded by MAX_KEPT_STATES (streams.agents._stored says why it is safe)
    states: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    def keep(self, customer_id: str, record: Any, state: Any) -> None:
        states = self.states
        states.pop(customer_id, None)
        states[customer_id] = (record, state)
        if len(states) > MAX_KEPT_STATES:
            del states[next(iter(states))]

    def due_of(self, customer_id: str, stored_due: int | None) -> int | None:
        """The customer's current deadline: a tick's unwritten one, else the stored one."""
        return self.unwritten_due.get(customer_id, stored_due)

    def schedule(self, due: int | None, customer_id: str) -> None:
        if due is not None:
            heapq.heappush(self.deadlines, (due, customer_id))

    def pop_due(self, upto: int) -> Iterator[tuple[int, str]]:
        """Entries due at or before `upto`, earliest first (ties by customer id)."""
        deadlines = self.deadlines
        while deadlines and deadlines[0][0] <= upto:
            yield heapq.heappop(deadlines)

    def advance_clock(self, to: int) -> int:
        """The clock never goes back; returns the clock after the move."""
        if self.clock is None or to > self.clock:
            self.clock = to
        return self.clock

    @property
    def next_due(self) -> int | None:
        return self.deadlines[0][0] if self.deadlines else None
