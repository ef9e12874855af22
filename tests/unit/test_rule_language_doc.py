"""The rule files in docs/rule-language.md validate, and the language-2 examples do what
the page says when replayed."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path

import pytest

from segments.rules.evaluator import compile_rules
from segments.rules.ruleset import RuleSet, parse_ruleset
from tests.unit.test_membership import brief, buy, refund, run

pytestmark = pytest.mark.unit

DOC = Path(__file__).resolve().parents[2] / "docs" / "rule-language.md"
_BLOCK = re.compile(r"```yaml\n(.*?)```", re.DOTALL)


def rule_files() -> list[str]:
    """Every yaml block of the expressions part of the page that is a whole rule file
    (the file layout block above it shows keys, not a file)."""
    text = DOC.read_text()
    text = text[text.index("## Expressions") :]
    return [b for b in _BLOCK.findall(text) if b.startswith("version:")]


def example(segment: str) -> RuleSet:
    for text in rule_files():
        if f"- name: {segment}\n" in text:
            return parse_ruleset(text, "rule-language.md")
    raise AssertionError(f"no rule file in the page defines {segment!r}")


@pytest.mark.parametrize("text", rule_files())
def test_every_rule_file_of_the_page_validates(text: str) -> None:
    compile_rules(parse_ruleset(text, "rule-language.md"))


def test_the_page_has_the_language_2_examples() -> None:
    for name in (
        "mostly_online",
        "discount_hunter",
        "at_risk",
        "win_back_target",
        "one_big_order",
        "monthly_buyer",
        "colour_collector",
        "explorer",
        "overdue",
    ):
        example(name)


def test_mostly_online_as_the_page_says() -> None:
    rules = compile_rules(example("mostly_online"))
    changes = run(
        rules,
        [
            buy("e1", "2024-03-01T10:00:00Z", "80.00", channel="online"),
            buy("e2", "2024-03-02T10:00:00Z", "20.00"),
            buy("e3", "2024-03-03T10:00:00Z", "0.01"),
            refund("r1", "2024-03-04T10:00:00Z", "0.01", "e3"),
        ],
        "2025-03-10T00:00:00Z",
    )
    assert [c for c in brief(changes) if c[0] == "mostly_online"] == [
        ("mostly_online", "entered", "2024-03-01T10:00:00Z", "purchase"),
        ("mostly_online", "exited", "2024-03-03T10:00:00Z", "purchase"),
        ("mostly_online", "entered", "2024-03-04T10:00:00Z", "return"),
        # 2025-03-01: the online order leaves the 365 days, 0 / 20 is not >= 0.8
        ("mostly_online", "exited", "2025-03-01T00:00:00Z", "time"),
    ]


def test_discount_hunter_as_the_page_says() -> None:
    rules = compile_rules(example("discount_hunter"))
    changes = run(
        rules,
        [
            buy("e1", "2024-03-01T10:00:00Z", "50.00", discount="5.00"),
            buy("e2", "2024-03-02T10:00:00Z", "50.00"),
        ],
        "2024-03-05T00:00:00Z",
    )
    assert [c for c in brief(changes) if c[0] == "discount_hunter"] == [
        ("discount_hunter", "entered", "2024-03-01T10:00:00Z", "purchase"),
        ("discount_hunter", "exited", "2024-03-02T10:00:00Z", "purchase"),  # 1 of 2: not more
    ]


def test_lifecycle_references_as_the_page_says() -> None:
    rules = compile_rules(example("at_risk"))
    orders = [buy(f"e{n}", f"2024-0{n}-01T10:00:00Z", "60.00") for n in range(1, 5)]
    later = buy("e5", "2024-12-20T10:00:00Z", "5.00")
    changes = brief(run(rules, [*orders, later], "2025-01-10T00:00:00Z"))
    at_risk = [c for c in changes if c[0] == "at_risk"]
    # the April order counts in the 90 days 04-01 .. 06-29: active ends at 06-30 00:00
    assert at_risk[0] == ("at_risk", "entered", "2024-06-30T00:00:00Z", "time")
    assert ("active", "exited", "2024-06-30T00:00:00Z", "time") in changes
    assert at_risk[1] == ("at_risk", "exited", "2024-12-20T10:00:00Z", "purchase")
    lapsed = [c for c in changes if c[0] in ("lapsed", "win_back_target")]
    # 180 days after 04-01 is 09-28: lapsed from 09-29; the December order ends the rule
    # long after the 30 days of min_dwell, so both leave at once
    assert lapsed == [
        ("lapsed", "entered", "2024-09-29T00:00:00Z", "time"),
        ("win_back_target", "entered", "2024-09-29T00:00:00Z", "time"),
        ("lapsed", "exited", "2024-12-20T10:00:00Z", "purchase"),
        ("win_back_target", "exited", "2024-12-20T10:00:00Z", "purchase"),
    ]


def test_win_back_target_follows_the_membership_during_min_dwell() -> None:
    rules = compile_rules(example("win_back_target"))
    changes = brief(
        run(
            rules,
            [
                buy("e1", "2024-01-01T10:00:00Z", "250.00"),
                buy("e2", "2024-07-10T10:00:00Z", "5.00"),  # 10 days into lapsed
            ],
            "2024-09-01T00:00:00Z",
        )
    )
    lapsed = [c for c in changes if c[0] in ("lapsed", "win_back_target")]
    assert lapsed == [
        ("lapsed", "entered", "2024-06-30T00:00:00Z", "time"),
        ("win_back_target", "entered", "2024-06-30T00:00:00Z", "time"),
        ("lapsed", "exited", "2024-07-30T00:00:00Z", "time"),
        ("win_back_target", "exited", "2024-07-30T00:00:00Z", "time"),
    ]


def test_order_values_and_rhythm_as_the_page_says() -> None:
    rules = compile_rules(example("monthly_buyer"))
    days = ["01-05", "02-03", "03-04", "04-10", "06-20"]
    orders = [buy(f"e{n}", f"2024-{d}T10:00:00Z", "20.00") for n, d in enumerate(days)]
    orders[2] = buy("e2", "2024-03-04T10:00:00Z", "100.00")
    changes = brief(run(rules, orders, "2024-07-01T00:00:00Z"))
    assert changes == [
        ("one_big_order", "entered", "2024-03-04T10:00:00Z", "purchase"),
        # 4 orders 01-05 .. 04-10: 96 days / 3 = 32
        ("monthly_buyer", "entered", "2024-04-10T10:00:00Z", "purchase"),
        # 5 orders 01-05 .. 06-20: 167 days / 4 = 41.75
        ("monthly_buyer", "exited", "2024-06-20T10:00:00Z", "purchase"),
    ]


def test_colour_collector_as_the_page_says() -> None:
    from segments.events import Line

    def line(sku: str, product: str, category: str = "Shirts") -> Line:
        return Line(sku, category, 1, Decimal("30.00"), Decimal(0), product)

    rules = compile_rules(example("colour_collector"))
    changes = brief(
        run(
            rules,
            [
                buy("e1", "2024-03-01T10:00:00Z", "30.00", lines=(line("OX-RED", "OX"),)),
                buy("e2", "2024-03-02T10:00:00Z", "30.00", lines=(line("CH-RED", "CH"),)),
                buy("e3", "2024-03-03T10:00:00Z", "30.00", lines=(line("SO-1", "SO", "Socks"),)),
                buy("e4", "2024-03-04T10:00:00Z", "30.00", lines=(line("OX-BLUE", "OX"),)),
                refund("r1", "2024-03-05T10:00:00Z", "30.00", "e4"),
            ],
            "2024-03-10T00:00:00Z",
        )
    )
    assert [c for c in changes if c[0] == "colour_collector"] == [
        ("colour_collector", "entered", "2024-03-04T10:00:00Z", "purchase"),
        ("colour_collector", "exited", "2024-03-05T10:00:00Z", "return"),
    ]


def test_overdue_by_their_own_rhythm_as_the_page_says() -> None:
    rules = compile_rules(example("overdue"))
    days = ["02-10", "02-20", "03-01"]
    orders = [buy(f"e{n}", f"2024-{d}T10:00:00Z") for n, d in enumerate(days)]
    changes = brief(run(rules, orders, "2024-04-01T00:00:00Z"))
    # (03-01 - 02-10) / 2 = 10 days: more than 20 days after 03-01 is 03-22
    assert changes == [("overdue", "entered", "2024-03-22T00:00:00Z", "time")]
    later = buy("e9", "2024-03-25T10:00:00Z")  # 44 / 3 = 14.67 days: overdue after 29.33
    changes = brief(run(rules, [*orders, later], "2024-05-01T00:00:00Z"))
    assert changes == [
        ("overdue", "entered", "2024-03-22T00:00:00Z", "time"),
        ("overdue", "exited", "2024-03-25T10:00:00Z", "purchase"),
        ("overdue", "entered", "2024-04-24T00:00:00Z", "time"),
    ]
