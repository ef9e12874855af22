"""The one driver of time: the clock, the deadline queue, lateness and skew, the version switch.

`segments replay` drives one Engine over a whole file; the streaming worker
drives one per table partition. Both hand it a `States` store (Kafka Streams'
state store, Bytewax's snapshot): replay a dict, the worker its table. The
engine never sees bytes, Kafka or the wall clock: the worker passes the wall
clock in, so every policy here is a plain function of its inputs.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from typing import Protocol

from segments.aggregates import CustomerState
from segments.changes import Change, TraitChange
from segments.events import Purchase, Rejection, Return
from segments.membership import Tick, step
from segments.rules.evaluator import CompiledRules

Event = Purchase | Return


class States(Protocol):
    """Where customer states live between inputs; the engine reads and writes only through it."""

    def get(self, customer_id: str) -> CustomerState | None:
        """The customer's state with its current `due`, or None for a new customer."""

    def put(
        self, state: CustomerState, changes: list[Change | TraitChange], *, due_only: bool
    ) -> None:
        """Store `state` after a step and take its `changes` for publishing.

        `due_only`: a deadline changed nothing but the next deadline; a store
        may skip writing (an older due, evaluated again, changes nothing).
        """


class MemoryStates:
    """States in a dict: replay's store. `emit` receives every step's changes, in order."""

    def __init__(self, emit: Callable[[list[Change | TraitChange]], None] | None = None) -> None:
        self.states: dict[str, CustomerState] = {}
        self._emit = emit

    def get(self, customer_id: str) -> CustomerState | None:
        return self.states.get(customer_id)

    def put(
        self, state: CustomerState, changes: list[Change | TraitChange], *, due_only: bool
    ) -> None:
        self.states[state.customer_id] = state
        if changes and self._emit is not None:
            self._emit(changes)

    def memberships(self, segments: Iterable[str]) -> dict[str, list[str]]:
        """{segment: sorted member ids} for the named segments (SPEC section 6)."""
        result: dict[str, list[str]] = {name: [] for name in segments}
        for customer_id, state in self.states.items():
            for name, membership in state.memberships.items():
                if membership.member and name in result:
                    result[name].append(customer_id)
        for members in result.values():
            members.sort()
        return result

    def trait_values(self, traits: Iterable[str]) -> dict[str, dict[str, str]]:
        """{trait: {customer_id: value}} for the named traits, customers with a value only."""
        result: dict[str, dict[str, str]] = {name: {} for name in traits}
        for customer_id, state in self.states.items():
            if state.traits:
                for name, (value, _) in state.traits.items():
                    if value is not None and name in result:
                        result[name][customer_id] = value
        return result


class Engine:
    """Customer states of one partition (or of a whole replay) and their deadline queue.

    Time-driven changes of every customer come out of one queue in `at` order,
    ties by customer id, before any input at or after them (SPEC sections 2
    and 4). The queue may hold stale entries (a customer's `due` moved after the
    entry was pushed): an entry that is not the customer's current `due` is
    skipped, so a tick costs O(due customers + log instants), never a scan.

    `wall_clock`: the clock is the wall clock given with each input (a worker's
    `clock: wall`); otherwise it is the largest event time seen (event time).
    `on_due`: called with each deadline as it is evaluated (the worker's lateness metric).
    """

    def __init__(
        self,
        rules: CompiledRules,
        states: States,
        *,
        wall_clock: bool = False,
        on_due: Callable[[int], None] | None = None,
    ) -> None:
        self.rules = rules
        self.states = states
        self.wall_clock = wall_clock
        self.on_due = on_due
        self.clock: int | None = None
        # The queue: a heap of the distinct instants and, per instant, the customers due
        # then (in push order, sorted when the instant comes). Deadlines are mostly local
        # midnights shared by many customers: one heap entry per instant instead of one
        # per customer keeps the heap small and its entries plain ints.
        self._instants: list[int] = []
        self._due_at: dict[int, list[str]] = {}

    def schedule(self, customer_id: str, due: int | None) -> None:
        """Queue the customer's deadline (also used to rebuild the queue from a store)."""
        if due is not None:
            customers = self._due_at.get(due)
            if customers is None:
                self._due_at[due] = [customer_id]
                heapq.heappush(self._instants, due)
            else:
                customers.append(customer_id)

    def restore_clock(self, clock: int | None) -> None:
        """Move the clock to a persisted value; it never goes back."""
        if clock is not None and (self.clock is None or clock > self.clock):
            self.clock = clock

    def advance(self, to: int) -> int:
        """Apply every time-driven transition due at or before `to`; the clock moves to `to`.

        Returns the number of deadlines evaluated.
        """
        instants = self._instants
        due_at = self._due_at
        rules = self.rules
        states = self.states
        evaluated = 0
        while instants and instants[0] <= to:
            due = heapq.heappop(instants)
            customers = due_at.pop(due)
            customers.sort()  # ties in customer id order
            for customer_id in customers:
                state = states.get(customer_id)
                if state is None or state.due != due:
                    continue  # superseded (or queued twice): the deadline moved since
                if self.clock is None or due > self.clock:
                    self.clock = due
                if self.on_due is not None:
                    self.on_due(due)
                evaluated += 1
                version = state.rules_version
                state, changes = step(state, Tick(due), rules, due)
                states.put(state, changes, due_only=not changes and state.rules_version == version)
                # always after `due` (step applies every deadline up to it), so never
                # into the list being walked
                self.schedule(customer_id, state.due)
        self.restore_clock(to)
        return evaluated

    def now_for(self, event: Event, wall: int | None) -> int:
        """The instant an event is applied at: max(event time, clock), or the wall clock.

        Raises Rejection(too_far_ahead) for an event more than `max_future_skew`
        ahead of the wall clock, in either clock mode: in event time such an
        event would move the partition clock into the future and make every
        later event of the partition too late (docs/decisions/0007). Without a
        wall clock (`wall` None) nothing is too far ahead.
        """
        occurred_at = event.occurred_at
        if wall is not None and occurred_at > wall + self.rules.ruleset.max_future_skew:
            raise Rejection(
                "too_far_ahead", "occurred_at is more than max_future_skew ahead of the wall clock"
            )
        if self.wall_clock:
            if wall is None:
                raise ValueError("an engine on the wall clock needs the wall clock with each input")
            return wall
        clock = self.clock
        return occurred_at if clock is None or occurred_at > clock else clock

    def apply(self, event: Event, wall: int | None = None) -> CustomerState:
        """Apply one event: due deadlines first, then the event at `now_for(event)`.

        Raises Rejection (too_far_ahead, too_late, a money error) or
        DuplicateEvent; the event's customer is then left untouched.
        """
        now = self.now_for(event, wall)
        self.advance(now)
        states = self.states
        state = states.get(event.customer_id)
        previous_due = state.due if state is not None else None
        state, changes = step(state, event, self.rules, now)
        states.put(state, changes, due_only=False)
        if state.due != previous_due:
            self.schedule(state.customer_id, state.due)
        return state

    def switch_version(self, customer_ids: Iterable[str], at: int) -> int:
        """Re-evaluate every listed customer stored under another rule version, at `at`.

        SPEC section 3, rule rollout: cause `definition`; members of segments the
        new version no longer has exit. Customers are taken in id order, so the
        changes are the same whichever order a store lists them in. Returns the
        number of customers switched.
        """
        version = self.rules.ruleset.version
        switched = 0
        for customer_id in sorted(customer_ids):
            state = self.states.get(customer_id)
            if state is None or state.rules_version == version:
                continue
            switched += 1
            state, changes = step(state, Tick(at), self.rules, at)
            self.states.put(state, changes, due_only=False)
            self.schedule(customer_id, state.due)
        self.restore_clock(at)
        return switched
