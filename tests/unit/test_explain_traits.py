"""explain(): each trait's value, its cases or its spend per category, hand-checked."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from segments.engine import Engine, MemoryStates
from segments.events import Line
from segments.explain import TIE_RULE, explain
from segments.rules.evaluator import compile_rules
from segments.rules.ruleset import parse_ruleset
from streams.cli.explain import render
from streams.cli.main import cli
from tests.unit.test_membership import buy, t

pytestmark = pytest.mark.unit

RULES = """version: 1
base_currency: EUR
segments:
  - name: vip
    when: orders(within="90d") >= 3
traits:
  - name: lifecycle
    description: where the customer stands
    cases:
      - {value: at_risk, when: days_since_last_purchase() > 120 and orders() >= 2}
      - {value: loyal, when: in_segment("vip")}
      - {value: established, when: orders() >= 2}
      - {value: new, when: orders() >= 1}
    default: prospect
  - name: favourite_category
    top_category: {within: 30d}
"""
# (event id, instant, lines as (category, amount))
PURCHASES = [
    ("e1", "2024-01-10T12:00:00Z", [("Books", "40.00")]),
    ("e2", "2024-05-20T12:00:00Z", [("Shoes", "60.00"), ("Books", "30.00")]),
    ("e3", "2024-06-01T12:00:00Z", [("Books", "30.00")]),
]


def _purchases() -> list[Any]:
    return [
        buy(
            event_id,
            at,
            str(sum(Decimal(amount) for _, amount in lines)),
            lines=tuple(
                Line(f"sku-{category}", category, 1, Decimal(amount), Decimal(0))
                for category, amount in lines
            ),
        )
        for event_id, at, lines in PURCHASES
    ]


def _document(as_of: str) -> dict[str, Any]:
    rules = compile_rules(parse_ruleset(RULES, "traits.yaml"))
    states = MemoryStates()
    engine = Engine(rules, states)
    for event in _purchases():
        engine.apply(event)
    engine.advance(t(as_of))
    state = states.get("c1")
    assert state is not None
    return explain(state, rules, t(as_of))


def _traits(as_of: str) -> dict[str, Any]:
    return {trait["name"]: trait for trait in _document(as_of)["traits"]}


def test_a_cases_trait_shows_every_case_and_the_first_that_holds() -> None:
    lifecycle = _traits("2024-06-08T00:00:00Z")["lifecycle"]
    assert lifecycle["kind"] == "cases"
    assert lifecycle["description"] == "where the customer stands"
    # three orders, the last 7 days ago; only two in the 90 days from 03-11: not vip
    assert lifecycle["value"] == "established"
    assert [case["value"] for case in lifecycle["cases"]] == [
        "at_risk",
        "loyal",
        "established",
        "new",
    ]
    assert [case["when"]["holds"] for case in lifecycle["cases"]] == [False, False, True, True]
    assert lifecycle["case"] == 2 and lifecycle["default_applies"] is False
    assert lifecycle["default"] == "prospect"
    at_risk = lifecycle["cases"][0]["when"]
    assert at_risk["rule"] == "days_since_last_purchase() > 120 and orders() >= 2"
    recency, orders = at_risk["tree"]["args"]
    assert recency["left"]["value"] == 7 and recency["holds"] is False
    assert orders["left"] == {
        "text": "orders()",
        "metric": "orders",
        "value": 3,
        "undefined": False,
    }
    assert orders["holds"] is True
    assert lifecycle["cases"][1]["when"]["tree"] == {
        "op": "in_segment",
        "text": 'in_segment("vip")',
        "segment": "vip",
        "holds": False,
    }


def test_a_top_category_trait_shows_the_window_spend_and_the_tie_rule() -> None:
    favourite = _traits("2024-06-08T00:00:00Z")["favourite_category"]
    assert favourite["kind"] == "top_category"
    assert favourite["within"] == "30d"
    assert favourite["window"] == {"from": "2024-05-10", "to": "2024-06-08"}
    # e1's 40.00 of Books is out of the window; Books 30 + 30 ties Shoes 60: the name
    # that sorts first wins
    assert favourite["spend"] == [
        {"category": "Books", "spend": "60.00"},
        {"category": "Shoes", "spend": "60.00"},
    ]
    assert favourite["winner"] == "Books" and favourite["value"] == "Books"
    assert favourite["tie_rule"] == TIE_RULE


def test_later_the_first_case_holds_and_the_window_is_empty() -> None:
    traits = _traits("2024-10-10T00:00:00Z")
    lifecycle = traits["lifecycle"]
    # 131 days since 06-01
    assert lifecycle["case"] == 0 and lifecycle["value"] == "at_risk"
    favourite = traits["favourite_category"]
    assert favourite["spend"] == [] and favourite["winner"] is None
    assert favourite["value"] is None  # the trait went back to null when e3 left


def _write_case(tmp_path: Path) -> tuple[Path, Path]:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    events = tmp_path / "events.jsonl"
    lines = [
        {
            "event_id": event_id,
            "customer_id": "c1",
            "occurred_at": at,
            "channel": "pos",
            "type": "purchase",
            "currency": "EUR",
            "total": str(sum(Decimal(amount) for _, amount in items)),
            "lines": [
                {
                    "sku": f"sku-{category}",
                    "category": category,
                    "quantity": 1,
                    "unit_price": amount,
                    "discount": "0",
                }
                for category, amount in items
            ],
        }
        for event_id, at, items in PURCHASES
    ]
    events.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    return rules, events


def test_the_offline_command_shows_traits_after_the_segments(tmp_path: Path) -> None:
    rules, events = _write_case(tmp_path)
    as_of = "2024-06-08T00:00:00Z"
    args = ["explain", "c1", "--input", str(events), "--as-of", as_of, "--rules", str(rules)]
    result = CliRunner().invoke(cli, [*args, "--json"])
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.output) == orjson.loads(orjson.dumps(_document(as_of)))
    text = CliRunner().invoke(cli, args)
    assert text.exit_code == 0, text.output
    output = text.output
    assert output.index("vip: not a member") < output.index("trait lifecycle = established")
    assert (
        "trait lifecycle = established\n"
        "  (where the customer stands)\n"
        "  case at_risk: days_since_last_purchase() > 120 and orders() >= 2  -> does not hold\n"
        "    no  days_since_last_purchase() > 120    [7 > 120]\n"
        "    yes orders() >= 2    [3 >= 2]\n"
        '  case loyal: in_segment("vip")  -> does not hold\n'
        '    no  in_segment("vip")\n'
        "  case established: orders() >= 2  -> holds  <- the first that holds\n"
        "    yes orders() >= 2    [3 >= 2]\n"
        "  case new: orders() >= 1  -> holds\n"
        "    yes orders() >= 1    [3 >= 1]\n"
        "  default: prospect\n"
    ) in output
    assert (
        "trait favourite_category = Books\n"
        "  top_category within 30d: spend per category from 2024-05-10 to 2024-06-08\n"
        "    Books: 60.00\n"
        "    Shoes: 60.00\n"
        f"  winner: Books ({TIE_RULE})\n"
    ) in output
    assert "the rules give" not in output


def test_the_text_says_when_the_stored_value_has_not_followed_the_rules_yet() -> None:
    # the worker under `clock: wall` can explain a deadline due since its last tick
    document = _document("2024-06-08T00:00:00Z")
    document["traits"][0]["value"] = "new"
    document["traits"][1]["value"] = None
    text = render(document)
    assert "trait lifecycle = new\n" in text
    assert "  the rules give established now; the value follows at the next evaluation" in text
    assert "trait favourite_category = (no value)\n" in text
    assert "  the rules give Books now; the value follows at the next evaluation" in text
