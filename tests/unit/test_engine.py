"""segments.engine: the one clock and deadline queue of replay and the worker."""

from __future__ import annotations

import pytest

from segments.changes import Change
from segments.engine import Engine, MemoryStates
from segments.events import Rejection
from tests.unit.test_membership import buy, rules_of, t

pytestmark = pytest.mark.unit

LAPSED = rules_of("  - name: lapsed\n    when: days_since_last_purchase() > 2\n")


def test_deadlines_due_at_one_instant_come_out_by_customer_id() -> None:
    out: list[Change] = []
    engine = Engine(LAPSED, MemoryStates(out.extend))
    # Pushed in the reverse order of their ids: the queue orders by (due, customer id).
    for customer in ("c3", "c1", "c2"):
        engine.apply(buy(f"e-{customer}", "2026-01-01T10:00:00Z", customer=customer))
    engine.advance(t("2026-01-04T00:00:00Z"))
    assert [(c.customer_id, c.at) for c in out] == [
        ("c1", t("2026-01-04T00:00:00Z")),
        ("c2", t("2026-01-04T00:00:00Z")),
        ("c3", t("2026-01-04T00:00:00Z")),
    ]


def test_event_time_is_max_of_event_and_clock() -> None:
    engine = Engine(LAPSED, MemoryStates())
    engine.advance(t("2026-01-10T00:00:00Z"))
    late = buy("late", "2026-01-05T08:00:00Z")
    assert engine.now_for(late, None) == t("2026-01-10T00:00:00Z")
    state = engine.apply(late)
    # evaluated at the clock, where the purchase is already 5 days old: lapsed at once
    assert state.memberships["lapsed"].since == t("2026-01-10T00:00:00Z")
    assert engine.clock == t("2026-01-10T00:00:00Z")


def test_a_far_future_event_is_refused_in_event_time_and_leaves_the_clock() -> None:
    wall = t("2026-12-02T12:00:00Z")
    engine = Engine(LAPSED, MemoryStates())
    engine.apply(buy("now", "2026-12-02T11:00:00Z"), wall)
    with pytest.raises(Rejection) as refused:
        engine.apply(buy("future", "9999-01-01T00:00:00Z"), wall)
    assert refused.value.reason == "too_far_ahead"
    assert engine.clock == t("2026-12-02T11:00:00Z")
    # max_future_skew (5 min by default) ahead is still fine
    engine.apply(buy("soon", "2026-12-02T12:04:00Z"), wall)
    assert engine.clock == t("2026-12-02T12:04:00Z")


def test_on_the_wall_clock_an_event_is_applied_at_the_wall_clock() -> None:
    engine = Engine(LAPSED, MemoryStates(), wall_clock=True)
    wall = t("2026-03-01T09:00:00Z")
    assert engine.now_for(buy("e", "2026-03-01T08:59:00Z"), wall) == wall
    with pytest.raises(ValueError):
        engine.now_for(buy("e", "2026-03-01T08:59:00Z"), None)


def test_switch_version_takes_customers_in_id_order_once() -> None:
    out: list[Change] = []
    states = MemoryStates(out.extend)
    engine = Engine(LAPSED, states)
    for customer in ("b", "a"):
        engine.apply(buy(f"e-{customer}", "2026-01-01T10:00:00Z", customer=customer))
    v2 = rules_of("  - name: buyer\n    when: orders() >= 1\n").ruleset
    from dataclasses import replace

    from segments.rules.evaluator import compile_rules

    switched = Engine(compile_rules(replace(v2, version=2)), states)
    out.clear()
    assert switched.switch_version(["b", "a", "b"], t("2026-01-02T00:00:00Z")) == 2
    assert [(c.customer_id, c.segment, c.cause) for c in out] == [
        ("a", "buyer", "definition"),
        ("b", "buyer", "definition"),
    ]
    assert switched.switch_version(["a", "b"], t("2026-01-02T00:00:00Z")) == 0
