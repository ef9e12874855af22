"""Language 2's product= and sku= filters: parsing, errors, what the state keeps, returns."""

from __future__ import annotations

from decimal import Decimal

import pytest

from segments.aggregates import state_from_bytes, state_to_bytes
from segments.engine import Engine, MemoryStates
from segments.events import Line, Purchase, Return
from segments.rules.ast import Compare, Metric
from segments.rules.errors import RuleFileError
from segments.rules.evaluator import compile_rules
from segments.rules.parser import format_expression, parse_expression
from segments.rules.ruleset import parse_ruleset

pytestmark = pytest.mark.unit

DAY = 86_400_000_000


def rules(*whens: str) -> str:
    segments = "".join(f"  - name: s{n}\n    when: {when}\n" for n, when in enumerate(whens))
    return f"version: 2\nbase_currency: USD\nsegments:\n{segments}"


def test_product_and_sku_parse_with_the_other_filters_and_print_back() -> None:
    text = 'spend(within="30d", category="Shirts", sku="S-RED-M", product="Oxford") >= 20'
    expr = parse_expression(text)
    assert isinstance(expr, Compare) and isinstance(expr.left, Metric)
    metric = expr.left
    assert (metric.category, metric.product, metric.sku, metric.within_days) == (
        "Shirts",
        "Oxford",
        "S-RED-M",
        30,
    )
    assert format_expression(expr) == (
        'spend(within="30d", category="Shirts", product="Oxford", sku="S-RED-M") >= 20'
    )


@pytest.mark.parametrize(
    ("text", "col", "message"),
    [
        ('orders(prodcut="P1") >= 1', 8, "unknown filter 'prodcut'; did you mean 'product'?"),
        ('orders(skus="A") >= 1', 8, "unknown filter 'skus'; did you mean 'sku'?"),
        ('orders(sku="") >= 1', 12, "sku must not be empty"),
        ('orders(product="  ") >= 1', 16, "product must not be empty"),
        ('orders(sku="A", sku="B") >= 1', 17, "duplicate filter 'sku' (first given at 1:12)"),
        ("orders(product=3) >= 1", 16, "filter 'product' takes a quoted string, found number 3"),
    ],
)
def test_errors_point_at_the_filter(text: str, col: int, message: str) -> None:
    with pytest.raises(RuleFileError) as caught:
        parse_expression(text, source_name="r.yaml")
    (error,) = caught.value.errors
    assert (error.line, error.col, error.message) == (1, col, message)
    assert "^" in str(error)  # the caret under the source line, as for every error


def test_a_product_or_sku_filter_switches_on_line_items_and_line_totals() -> None:
    plain = compile_rules(parse_ruleset(rules('spend(category="Shirts") > 1'), "r.yaml"))
    assert not plain.keep_items and plain.keep_line_filters == ()
    windowed = compile_rules(parse_ruleset(rules('orders(sku="A", within="30d") >= 1'), "r.yaml"))
    assert windowed.keep_items and not windowed.lifetime_items
    assert windowed.keep_line_filters == ((None, None, "A"),)
    lifetime = compile_rules(
        parse_ruleset(rules('units(product="P", category="Shirts") >= 2'), "r.yaml")
    )
    assert lifetime.keep_items and lifetime.lifetime_items
    assert lifetime.keep_line_filters == (("Shirts", "P", None),)


def line(sku: str, category: str, quantity: int, price: str, product: str | None) -> Line:
    return Line(sku, category, quantity, Decimal(price), Decimal(0), product)


def test_an_order_counts_if_a_line_matches_and_spend_counts_only_those_lines() -> None:
    ruleset = parse_ruleset(
        rules(
            'orders(product="Oxford") >= 1 and spend(product="Oxford") >= 50',
            'units(sku="OX-RED", within="7d") >= 2',
            'spend(product="Oxford", category="Sale") > 0',
        ),
        "r.yaml",
    )
    out: list = []
    states = MemoryStates(out.extend)
    engine = Engine(compile_rules(ruleset), states)
    lines = (
        line("OX-RED", "Shirts", 2, "30.00", "Oxford"),  # 60 of Oxford, 2 units of OX-RED
        line("OX-BLUE", "Sale", 1, "10.00", "Oxford"),
        line("SOCK", "Socks", 1, "5.00", None),
    )
    engine.apply(Purchase("p1", "c", 10 * DAY, "pos", "USD", Decimal("75"), Decimal(0), lines))
    entered = {(c.segment, c.change) for c in out}
    assert entered == {("s0", "entered"), ("s1", "entered"), ("s2", "entered")}
    assert out[0].metrics == {"orders_product_oxford": 1, "spend_product_oxford": "70.00"}
    # returning one red shirt lowers Oxford's spend to 40 and OX-RED's units to 1
    returned = (line("OX-RED", "Shirts", 1, "30.00", "Oxford"),)
    engine.apply(
        Return("r1", "c", 11 * DAY, "pos", "USD", Decimal("30"), Decimal(0), "p1", returned)
    )
    assert [(c.segment, c.change, c.cause) for c in out[3:]] == [
        ("s0", "exited", "return"),
        ("s1", "exited", "return"),
    ]
    state = states.states["c"]
    assert state_from_bytes("c", state_to_bytes(state)) == state


def test_a_version_1_state_without_line_totals_still_decodes() -> None:
    ruleset = parse_ruleset(rules('spend(category="Shirts", within="30d") > 1'), "r.yaml")
    states = MemoryStates()
    engine = Engine(compile_rules(ruleset), states)
    lines = (line("OX-RED", "Shirts", 2, "30.00", "Oxford"),)
    engine.apply(Purchase("p1", "c", 10 * DAY, "pos", "USD", Decimal("60"), Decimal(0), lines))
    data = state_to_bytes(states.states["c"])
    assert b"Oxford" not in data  # nothing kept of products the rules do not read
    assert state_from_bytes("c", data).orders[0].line_totals is None


def test_an_order_index_updated_in_place_keeps_amounts_with_their_days() -> None:
    # A filtered window listed before the unfiltered one: adding a POS order used to
    # insert the unfiltered amount at the filtered list's position, so the whole-year
    # spend read the wrong order's amount once the first order left the window.
    ruleset = parse_ruleset(
        rules('spend(channel="pos", within="365d") / spend(within="365d") >= 0.3'), "r.yaml"
    )
    out: list = []
    engine = Engine(compile_rules(ruleset), MemoryStates(out.extend))
    engine.apply(Purchase("o1", "c", 1000 * DAY, "online", "USD", Decimal("10"), Decimal(0), ()))
    engine.apply(Purchase("p1", "c", 1001 * DAY, "pos", "USD", Decimal("0.01"), Decimal(0), ()))
    engine.advance(1400 * DAY)
    # day 1365: the online order has left the year, 0.01 / 0.01 >= 0.3; day 1366: the POS
    # order has too, 0 / 0 is undefined
    assert [(c.change, c.at // DAY, c.cause) for c in out] == [
        ("entered", 1365, "time"),
        ("exited", 1366, "time"),
    ]
