"""Language 2 in step(): exact arithmetic, undefined operands, in_segment at the same instant."""

from __future__ import annotations

from decimal import Decimal

import pytest

from segments.events import Line
from segments.rules.evaluator import add, divide, multiply, negate, subtract
from tests.unit.test_membership import brief, buy, refund, rules_of, run

pytestmark = pytest.mark.unit


def test_arithmetic_is_exact_and_undefined_propagates() -> None:
    assert add(Decimal("0.1"), Decimal("0.2")) == Decimal("0.3")
    assert multiply(Decimal("123456789012345.123456789012"), 3) == Decimal(
        "370370367037035.370370367036"
    )
    assert subtract(3, Decimal("0.0001")) == Decimal("2.9999")
    assert divide(Decimal("1.00"), 0) is None
    assert divide(None, 2) is None and add(1, None) is None and negate(None) is None
    third = divide(1, 3)
    assert third is not None and multiply(third, 3) != 1  # a quotient is rounded, once
    assert multiply(divide(4, 5), 10) == 8


RATIO = rules_of(
    "  - name: mostly_online\n"
    '    when: spend(channel="online") / spend() >= 0.8\n'
    "  - name: not_mostly_online\n"
    '    when: not spend(channel="online") / spend() >= 0.8\n'
)


def test_a_ratio_compares_exactly_at_its_bound() -> None:
    changes = run(
        RATIO,
        [
            buy("e1", "2024-03-01T10:00:00Z", "80.00", channel="online"),
            buy("e2", "2024-03-02T10:00:00Z", "20.00"),  # exactly 0.8: holds
            buy("e3", "2024-03-03T10:00:00Z", "0.01"),  # just below
        ],
        "2024-03-10T00:00:00Z",
    )
    assert brief(changes) == [
        ("mostly_online", "entered", "2024-03-01T10:00:00Z", "purchase"),
        ("mostly_online", "exited", "2024-03-03T10:00:00Z", "purchase"),
        ("not_mostly_online", "entered", "2024-03-03T10:00:00Z", "purchase"),
    ]


def test_division_by_zero_is_undefined_and_every_comparison_with_it_is_false() -> None:
    # the only order refunded in full: spend() is 0, the ratio undefined, `not` of it true
    changes = run(
        RATIO,
        [
            buy("e1", "2024-03-01T10:00:00Z", "50.00", channel="online"),
            refund("r1", "2024-03-02T10:00:00Z", "50.00", "e1"),
        ],
        "2024-03-10T00:00:00Z",
    )
    assert brief(changes) == [
        ("mostly_online", "entered", "2024-03-01T10:00:00Z", "purchase"),
        ("mostly_online", "exited", "2024-03-02T10:00:00Z", "return"),
        ("not_mostly_online", "entered", "2024-03-02T10:00:00Z", "return"),
    ]


def test_windowed_arithmetic_changes_at_the_midnight_an_order_leaves() -> None:
    rules = rules_of('  - name: growing\n    when: spend(within="7d") * 2 > spend(within="30d")\n')
    changes = run(
        rules,
        [buy("e1", "2024-03-01T10:00:00Z", "10.00"), buy("e2", "2024-03-05T10:00:00Z", "30.00")],
        "2024-04-30T00:00:00Z",
    )
    assert brief(changes) == [
        ("growing", "entered", "2024-03-01T10:00:00Z", "purchase"),
        # 03-08: e1 leaves the 7 days, 2 * 30 > 40 still holds; 03-12: e2 leaves, 0 > 40
        ("growing", "exited", "2024-03-12T00:00:00Z", "time"),
    ]


REFERENCES = rules_of(
    "  - name: lapsed\n"
    "    when: days_since_last_purchase() > 30\n"
    "    min_dwell: 12h\n"
    "  - name: big\n"
    "    when: spend() >= 100\n"
    "  - name: lapsed_big\n"
    '    when: in_segment("lapsed") and in_segment("big")\n'
    "  - name: active_big\n"
    '    when: in_segment("big") and not in_segment("lapsed")\n'
)


def test_in_segment_sees_an_earlier_segment_at_the_same_instant() -> None:
    changes = run(
        REFERENCES,
        [
            buy("e1", "2024-03-01T10:00:00Z", "120.00"),
            buy("e2", "2024-04-01T06:00:00Z", "1.00"),  # back within the 12h dwell
        ],
        "2024-04-10T00:00:00Z",
    )
    assert brief(changes) == [
        ("big", "entered", "2024-03-01T10:00:00Z", "purchase"),
        ("active_big", "entered", "2024-03-01T10:00:00Z", "purchase"),
        ("lapsed", "entered", "2024-04-01T00:00:00Z", "time"),
        ("lapsed_big", "entered", "2024-04-01T00:00:00Z", "time"),
        ("active_big", "exited", "2024-04-01T00:00:00Z", "time"),
        # the purchase ends `lapsed`'s rule, but min_dwell keeps the member until 12:00,
        # and the segments that read it follow the membership, not the rule
        ("lapsed", "exited", "2024-04-01T12:00:00Z", "time"),
        ("lapsed_big", "exited", "2024-04-01T12:00:00Z", "time"),
        ("active_big", "entered", "2024-04-01T12:00:00Z", "time"),
    ]


VALUES = rules_of(
    "  - name: one_big_order\n"
    "    when: max_order_value() >= 100 and min_order_value() < 20\n"
    "  - name: recent_small\n"
    '    when: min_order_value(within="7d") < 20\n'
    "  - name: regular\n"
    "    when: avg_days_between_orders() <= 7.5\n"
    "  - name: no_rhythm\n"
    "    when: not avg_days_between_orders() >= 0\n"
)


def test_order_value_extremes_and_rhythm() -> None:
    changes = run(
        VALUES,
        [
            buy("e1", "2024-03-01T10:00:00Z", "150.00"),
            buy("e2", "2024-03-09T10:00:00Z", "10.00"),  # 8 days later
            buy("e3", "2024-03-16T10:00:00Z", "50.00"),  # (15 days) / 2 = 7.5
            refund("r1", "2024-03-20T10:00:00Z", "150.00", "e1"),  # 7 days / 1
        ],
        "2024-05-01T00:00:00Z",
    )
    assert brief(changes) == [
        ("no_rhythm", "entered", "2024-03-01T10:00:00Z", "purchase"),  # one order: undefined
        ("one_big_order", "entered", "2024-03-09T10:00:00Z", "purchase"),
        ("recent_small", "entered", "2024-03-09T10:00:00Z", "purchase"),
        ("no_rhythm", "exited", "2024-03-09T10:00:00Z", "purchase"),
        # the 10.00 order of 03-09 counts in the 7 days 03-09 .. 03-15
        ("recent_small", "exited", "2024-03-16T00:00:00Z", "time"),
        ("regular", "entered", "2024-03-16T10:00:00Z", "purchase"),
        ("one_big_order", "exited", "2024-03-20T10:00:00Z", "return"),
    ]


def test_order_value_extremes_survive_pruning_and_the_state_codec() -> None:
    from segments.aggregates import state_from_bytes, state_to_bytes
    from segments.engine import Engine, MemoryStates

    rules = rules_of(
        "  - name: big\n    when: max_order_value() >= 100 and min_order_value() <= 5\n"
    )
    states = MemoryStates()
    engine = Engine(rules, states)
    engine.apply(buy("e1", "2023-01-01T10:00:00Z", "150.00"))
    engine.apply(buy("e2", "2023-01-02T10:00:00Z", "5.00"))
    engine.apply(buy("e3", "2024-06-01T10:00:00Z", "50.00"))  # both pruned by now
    state = states.states["c1"]
    assert [o.event_id for o in state.orders] == ["e3"]
    lifetime = next(iter(state.lifetime.values()))
    assert (lifetime.pruned_least, lifetime.pruned_most) == (Decimal("5.00"), Decimal("150.00"))
    assert state.memberships["big"].member
    again = state_from_bytes("c1", state_to_bytes(state))
    assert again.lifetime == state.lifetime


def shirt(sku: str, product: str | None = "OXFORD", category: str = "Shirts") -> Line:
    return Line(sku, category, 1, Decimal("20.00"), Decimal(0), product)


VARIANTS = rules_of(
    "  - name: colours\n"
    "    when: max_skus_per_product() >= 2\n"
    "  - name: recent_colours\n"
    '    when: max_skus_per_product(within="30d") >= 2\n'
    "  - name: wide\n"
    '    when: distinct_products() >= 2 and distinct_skus(category="Shirts") >= 3\n'
)


def test_several_colours_of_one_shirt() -> None:
    changes = run(
        VARIANTS,
        [
            buy("e1", "2024-03-01T10:00:00Z", "20.00", lines=(shirt("OX-RED"),)),
            buy("e2", "2024-03-05T10:00:00Z", "20.00", lines=(shirt("OX-RED"),)),  # same SKU
            buy("e3", "2024-03-10T10:00:00Z", "25.00", lines=(shirt("OX-BLUE"), shirt("S", None))),
            buy("e4", "2024-03-12T10:00:00Z", "9.00", lines=(shirt("TIE", "TIE", "Ties"),)),
        ],
        "2024-05-01T00:00:00Z",
    )
    assert brief(changes) == [
        ("colours", "entered", "2024-03-10T10:00:00Z", "purchase"),
        ("recent_colours", "entered", "2024-03-10T10:00:00Z", "purchase"),
        # three shirt SKUs (S has no product) and two products
        ("wide", "entered", "2024-03-12T10:00:00Z", "purchase"),
        # the last red shirt (03-05) leaves the 30 days on 04-04
        ("recent_colours", "exited", "2024-04-04T00:00:00Z", "time"),
    ]


def test_line_items_survive_pruning_and_the_state_codec() -> None:
    from segments.aggregates import state_from_bytes, state_to_bytes
    from segments.engine import Engine, MemoryStates

    states = MemoryStates()
    engine = Engine(VARIANTS, states)
    engine.apply(buy("e1", "2023-01-01T10:00:00Z", "20.00", lines=(shirt("OX-RED"),)))
    engine.apply(buy("e2", "2024-06-01T10:00:00Z", "20.00", lines=(shirt("OX-BLUE"),)))
    state = states.states["c1"]
    assert [o.event_id for o in state.orders] == ["e2"]  # e1 pruned, its items counted
    assert state.memberships["colours"].member
    assert "recent_colours" not in state.memberships  # never entered
    again = state_from_bytes("c1", state_to_bytes(state))
    assert again.lifetime == state.lifetime
    assert again.orders == state.orders
