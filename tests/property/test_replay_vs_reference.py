"""Property: the replay engine agrees with the naive reference on random purchase histories."""

from __future__ import annotations

from contextlib import suppress
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from segments.clock import to_micros
from segments.engine import Engine, MemoryStates
from segments.events import Event, Line, Purchase, Return
from segments.rules.evaluator import compile_rules
from segments.rules.ruleset import RuleSet, parse_ruleset
from tests.conformance_cases import RULES
from tests.reference import reference_replay

pytestmark = pytest.mark.unit

RICH_RULES = """
version: 3
base_currency: USD
rates: {EUR: "1.10"}
segments:
  - name: vip
    when: orders(within="182d") >= 3
    exit_when: orders(within="182d") < 2
  - name: lapsed
    when: days_since_last_purchase() > 90
    min_dwell: 10d
  - name: big_spender
    when: avg_order_value(within="365d") > 50
  - name: runner
    when: orders(category="Running Shoes", within="365d") >= 1
  - name: runner_spend
    when: spend(category="Running Shoes", within="90d") >= 30 or units(category="Music") >= 3
  - name: online_only
    when: orders(channel="online") >= 1 and orders(channel="pos") == 0
  - name: sleeper
    when: >
      days_since_last_purchase() > 60
      and orders(within="200d") between 2 and 4
      and discounted_orders(within="200d") >= 1
  - name: new_customer
    when: days_since_first_purchase() <= 30
  - name: winter
    when: orders(season="12-15..01-10", within="365d") >= 1
  - name: broad
    when: distinct_categories(within="60d") >= 2 and not spend() < 40
  - name: pos_quiet
    when: days_since_last_purchase(channel="pos", within="120d") >= 45
  - name: heavy_units
    when: units(within="30d") > 4 or spend(channel="online") > 300
"""

# Language 2: arithmetic (with division by zero and negative spend), in_segment over
# segments with exit_when and min_dwell, chained references. No segment's when and
# exit_when hold at once: such a rule flaps, and when it re-enters after its min_dwell is
# a question of its own (the engine waits for a metric to change, the reference for the
# next midnight), not of language 2.
LANGUAGE_2_RULES = """
version: 4
base_currency: USD
rates: {EUR: "1.10"}
segments:
  - name: vip
    when: orders(within="182d") >= 3
    exit_when: orders(within="182d") < 2
  - name: lapsed
    when: days_since_last_purchase() > 60
    min_dwell: 10d
  - name: online_share
    when: spend(channel="online", within="365d") / spend(within="365d") >= 0.6
  - name: mostly_discounted
    when: discounted_orders(within="200d") * 2 > orders(within="200d")
  - name: lapsed_vip
    when: in_segment("vip") and in_segment("lapsed")
  - name: steady_spender
    when: >
      not in_segment("vip") and not in_segment("lapsed")
      and spend() - 2 * spend(within="90d") > 50 and spend() >= 20
    exit_when: in_segment("lapsed") or spend() < 20
    min_dwell: 3d
  - name: odd_mix
    when: -avg_order_value(within="120d") + units(category="Music") / 3 < -20
  - name: units_per_order
    when: units(within="60d") between orders(within="60d") and orders(within="60d") * 2 + 1
  - name: chain
    when: in_segment("steady_spender") or in_segment("online_share") and orders() > 1
    exit_when: not in_segment("online_share") and not in_segment("steady_spender")
  - name: order_values
    when: >
      max_order_value(within="120d") >= 2 * min_order_value(within="120d")
      or min_order_value() > 40 or max_order_value(category="Music") between 10 and 30
      or min_order_value(channel="online", category="Books", within="30d") < 20
  - name: rhythm
    when: >
      avg_days_between_orders() <= 45.5 and avg_days_between_orders(within="200d") > 10
      or avg_days_between_orders(channel="pos") * 3 == 100
  - name: overdue
    when: days_since_last_purchase() > 2 * avg_days_between_orders()
  - name: rhythm_window
    when: days_since_last_purchase(within="200d") between orders() * 10 and spend() / 2
  - name: dynamic_first
    when: >
      not days_since_first_purchase(channel="pos") < avg_order_value() - 7.5
      or days_since_first_purchase() != orders() * 30 and in_segment("overdue")
      or max_order_value() / 3 >= days_since_last_purchase(category="Music")
  - name: variants
    when: max_skus_per_product() >= 2 or max_skus_per_product(within="60d") >= 2
  - name: assortment
    when: >
      distinct_skus(within="90d") >= 3 and distinct_products(category="Music") >= 1
      or distinct_skus(channel="online", category="Books") - distinct_products() >= 2
"""

# Language 2's product= and sku= filters on every metric that takes filters, alone and
# combined with each other and with within=, channel=, category= and season=; days-since
# under them, against numbers and against values time does not change.
PRODUCT_RULES = """
version: 5
base_currency: USD
rates: {EUR: "1.10"}
segments:
  - name: p1_buyer
    when: orders(product="P1", within="120d") >= 1 and spend(product="P1") >= 20
  - name: sku_a_units
    when: units(sku="A", within="90d") >= 2 or units(sku="B", category="Music") > 3
  - name: p2_value
    when: >
      avg_order_value(product="P2", within="365d") > 30
      or min_order_value(sku="C") < 10 or max_order_value(product="P1", sku="A") >= 50
  - name: p1_lapsed
    when: days_since_last_purchase(product="P1") > 45 and orders(product="P1") >= 2
  - name: p2_rhythm
    when: >
      days_since_last_purchase(product="P2", channel="online")
      > 2 * avg_days_between_orders(product="P2")
  - name: p1_fresh
    when: days_since_first_purchase(sku="A", within="200d") <= 20
  - name: p1_mix
    when: >
      distinct_categories(product="P1") >= 2
      or distinct_categories(sku="B", within="60d") == 1 and discounted_orders(sku="B") >= 1
      or distinct_categories(category="Music") >= 2
  - name: p1_variants
    when: >
      distinct_skus(product="P1", within="90d") >= 2
      or distinct_products(sku="C") >= 2
      or max_skus_per_product(category="Books", product="P2") >= 2
  - name: p_share
    when: >
      spend(product="P1", channel="pos", within="365d") - spend(sku="A", within="200d") >= 10
      and orders(product="P2", season="12-01..02-28", within="365d") == 0
  - name: p_ratio
    when: spend(product="P1", channel="pos", within="365d") / spend(within="365d") >= 0.3
"""

START = to_micros(datetime(1997, 1, 1, tzinfo=UTC))
SPAN_DAYS = 540
CATEGORIES = ("Music", "Running Shoes", "Books")
SKUS = ("A", "B", "C")
PRODUCTS = (None, "P1", "P2")


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[Event], int]:
    customers = [f"c{i}" for i in range(draw(st.integers(1, 3)))]
    events: list[Event] = []
    purchases: list[Purchase] = []
    for n in range(draw(st.integers(1, 14))):
        customer = draw(st.sampled_from(customers))
        day = draw(st.integers(0, SPAN_DAYS))
        # whole days, noon, and exact midnights collide with deadlines on purpose
        seconds = draw(st.sampled_from([0, 0, 43_200, 86_399, 3_600]))
        at = START + day * 86_400_000_000 + seconds * 1_000_000
        kind = draw(st.sampled_from(["purchase"] * 6 + ["return", "duplicate"]))
        channel = draw(st.sampled_from(["pos", "online"]))
        currency = draw(st.sampled_from(["USD", "USD", "EUR"]))
        if kind == "duplicate" and events:
            events.append(draw(st.sampled_from(events)))
            continue
        if kind == "return":
            own = [p for p in purchases if p.customer_id == customer]
            if own and draw(st.booleans()):
                original = draw(st.sampled_from(own))
                at = original.occurred_at + draw(st.integers(0, 20)) * 86_400_000_000
                original_id: str | None = original.event_id
            else:
                original_id = f"unknown-{n}"
            lines = tuple(
                Line(
                    draw(st.sampled_from(SKUS)),
                    draw(st.sampled_from(CATEGORIES)),
                    draw(st.integers(1, 2)),
                    Decimal(draw(st.sampled_from(["5.00", "20.00"]))),
                    Decimal(0),
                    draw(st.sampled_from(PRODUCTS)),
                )
                for _ in range(draw(st.integers(0, 2)))
            )
            events.append(
                Return(
                    f"e{n}",
                    customer,
                    at,
                    channel,
                    currency,
                    Decimal(draw(st.sampled_from(["5.00", "10.00", "60.00"]))),
                    Decimal(0),
                    original_id,
                    lines,
                )
            )
            continue
        lines = tuple(
            Line(
                draw(st.sampled_from(SKUS)),
                draw(st.sampled_from(CATEGORIES)),
                draw(st.integers(1, 3)),
                Decimal(draw(st.sampled_from(["0.00", "9.99", "25.00", "80.00"]))),
                Decimal(draw(st.sampled_from(["0", "0", "1.00"]))),
                draw(st.sampled_from(PRODUCTS)),
            )
            for _ in range(draw(st.integers(0, 3)))
        )
        total = Decimal(
            draw(st.sampled_from(["0.00", "0.01", "10.00", "45.50", "60.00", "250.00"]))
        )
        discount = Decimal(draw(st.sampled_from(["0", "0", "5.00"])))
        purchase = Purchase(f"e{n}", customer, at, channel, currency, total, discount, lines)
        purchases.append(purchase)
        events.append(purchase)
    as_of = START + draw(st.integers(SPAN_DAYS, SPAN_DAYS + 700)) * 86_400_000_000
    return events, as_of


def _engine_run(events: list[Event], ruleset: RuleSet, as_of: int) -> tuple[list[Any], Any]:
    from segments.membership import DuplicateEvent

    rules = compile_rules(ruleset)
    out: list[Any] = []
    states = MemoryStates(out.extend)
    engine = Engine(rules, states)
    for event in sorted(events, key=lambda e: e.occurred_at):
        with suppress(DuplicateEvent):
            engine.apply(event)
    engine.advance(as_of)
    instants = [c.at for c in out]
    assert instants == sorted(instants), "changes must come out in `at` order"
    return out, states.memberships(s.name for s in ruleset.segments)


def _key(change: Any) -> tuple[Any, ...]:
    if isinstance(change, dict):
        return (
            change["customer_id"],
            change["segment"],
            change["change"],
            change["at"],
            change["cause"],
            change["seq"],
            change["event_id"],
        )
    return (
        change.customer_id,
        change.segment,
        change.change,
        change.at,
        change.cause,
        change.seq,
        change.event_id,
    )


def _check(events: list[Event], ruleset: RuleSet, as_of: int) -> None:
    actual, actual_members = _engine_run(events, ruleset, as_of)
    expected, expected_members = reference_replay(events, ruleset, as_of)
    assert sorted(map(_key, actual)) == sorted(map(_key, expected))
    assert actual_members == expected_members


CONFORMANCE = replace(parse_ruleset(RULES.read_text(), str(RULES)), rates={"EUR": Decimal("1.10")})
RICH = parse_ruleset(RICH_RULES, "rich.yaml")
LANGUAGE_2 = parse_ruleset(LANGUAGE_2_RULES, "language2.yaml")
PRODUCTS_AND_SKUS = parse_ruleset(PRODUCT_RULES, "products.yaml")
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(histories())
def test_conformance_rules_agree_with_reference(history: tuple[list[Event], int]) -> None:
    _check(history[0], CONFORMANCE, history[1])


@SETTINGS
@given(histories())
def test_rich_rules_agree_with_reference(history: tuple[list[Event], int]) -> None:
    _check(history[0], RICH, history[1])


@SETTINGS
@given(histories())
def test_language_2_rules_agree_with_reference(history: tuple[list[Event], int]) -> None:
    _check(history[0], LANGUAGE_2, history[1])


@SETTINGS
@given(histories())
def test_product_and_sku_filters_agree_with_reference(history: tuple[list[Event], int]) -> None:
    _check(history[0], PRODUCTS_AND_SKUS, history[1])


@SETTINGS
@given(histories())
def test_the_order_index_and_seen_ids_step_keeps_equal_fresh_ones(
    history: tuple[list[Event], int],
) -> None:
    # step() updates a customer's order index in place for added and pruned orders
    # (the evaluator's index_add / index_prune) instead of building it again.
    for ruleset in (RICH, LANGUAGE_2, PRODUCTS_AND_SKUS):
        _check_index(history[0], ruleset)


def _check_index(events: list[Event], ruleset: RuleSet) -> None:
    from segments.membership import DuplicateEvent

    rules = compile_rules(ruleset)
    states = MemoryStates()
    engine = Engine(rules, states)
    for event in sorted(events, key=lambda e: e.occurred_at):
        with suppress(DuplicateEvent):
            engine.apply(event)
        for state in states.states.values():
            if state.seen_ids is not None:  # kept up to date like the index
                fresh = {o.event_id for o in state.orders} | {r[0] for r in state.returns_seen}
                assert state.seen_ids == sorted(fresh)
            kept = state.index
            if kept is None:
                continue
            state.index = None
            rules.evaluate(state, 0)  # builds a fresh index
            assert state.index is not None
            assert [list(map(str, part)) for part in state.index[1:]] == [
                list(map(str, part)) for part in kept[1:]
            ]
