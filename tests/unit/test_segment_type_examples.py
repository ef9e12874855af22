"""docs/examples/segment-types.yaml: every example validates, the rule-language page quotes
each as written, and a replay over a small hand-made input gives each one a member."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import orjson
import pytest

from segments.replay import replay
from segments.rules.evaluator import compile_rules
from segments.rules.ruleset import load_ruleset

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "docs" / "examples" / "segment-types.yaml"
DOC = ROOT / "docs" / "rule-language.md"


def segment_blocks() -> dict[str, str]:
    """Each segment's lines of the example file, from its `- name:` to the next segment
    or comment line, as the documentation quotes them."""
    blocks: dict[str, str] = {}
    name = None
    for line in EXAMPLES.read_text().splitlines():
        match = re.match(r"  - name: (\w+)$", line)
        if match:
            name = match.group(1)
            blocks[name] = line
        elif name is not None and line.startswith("    "):
            blocks[name] += "\n" + line
        else:
            name = None
    return blocks


def event(
    event_id: str,
    customer: str,
    day: str,
    channel: str,
    total: str,
    discount: str = "0",
    lines: tuple[tuple[str, str, int, str, str | None], ...] = (),
) -> dict[str, Any]:
    """A canonical purchase at noon UTC; lines are (sku, category, quantity, price, product)."""
    body: dict[str, Any] = {
        "event_id": event_id,
        "customer_id": customer,
        "occurred_at": f"{day}T12:00:00Z",
        "channel": channel,
        "currency": "EUR",
        "total": total,
        "discount_total": discount,
        "lines": [
            {"sku": sku, "category": category, "quantity": quantity, "unit_price": price}
            | ({} if product is None else {"product": product})
            for sku, category, quantity, price, product in lines
        ],
    }
    return body


# Who is meant to enter what (the test checks only that every segment gets a member):
EVENTS = [
    # three small online orders in January, two discounted: frequent_buyer, recent_buyer,
    # active, discount_hunter, winter_sale_shopper, mostly_online, small_baskets; their
    # average gap is 5 days, so overdue from 00:00 on 26 January (15 + 2 * 5 + 1)
    event("f1", "c-frequent", "2026-01-05", "online", "10.00", "1.00"),
    event("f2", "c-frequent", "2026-01-10", "online", "10.00", "1.00"),
    event("f3", "c-frequent", "2026-01-15", "online", "10.00"),
    # one store order of 600: big_spender, store_only
    event("b1", "c-big", "2026-02-01", "pos", "600.00"),
    # running shoes twice, 20 then 150: runner, running_fan, one_big_order (150 >= 5 * 20)
    event(
        "r1",
        "c-runner",
        "2026-02-10",
        "pos",
        "20.00",
        lines=(("RS-1", "Running Shoes", 1, "20.00", None),),
    ),
    event(
        "r2",
        "c-runner",
        "2026-03-01",
        "pos",
        "150.00",
        lines=(("RS-2", "Running Shoes", 1, "150.00", None),),
    ),
    # four orders in spring 2025, one discounted: loyal; at_risk once no order is left in
    # 90 days (14 July 2025); lapsed_markdown_buyer after 182 quiet days
    event("l1", "c-loyal", "2025-03-01", "pos", "30.00"),
    event("l2", "c-loyal", "2025-03-15", "pos", "30.00"),
    event("l3", "c-loyal", "2025-04-01", "pos", "30.00", "5.00"),
    event("l4", "c-loyal", "2025-04-15", "pos", "30.00"),
    # two colours of the Oxford shirt in one order: colour_collector, oxford_fan
    event(
        "s1",
        "c-shirts",
        "2026-02-20",
        "online",
        "80.00",
        lines=(
            ("OX-WHITE-M", "Shirts", 1, "40.00", "OXFORD"),
            ("OX-BLUE-M", "Shirts", 1, "40.00", "OXFORD"),
        ),
    ),
    # the refill twice in 49 days: refill_regular
    event(
        "h1",
        "c-refill",
        "2026-01-20",
        "pos",
        "12.00",
        lines=(("REFILL-500", "Home", 1, "12.00", None),),
    ),
    event(
        "h2",
        "c-refill",
        "2026-03-10",
        "pos",
        "12.00",
        lines=(("REFILL-500", "Home", 1, "12.00", None),),
    ),
]


def test_every_example_validates_and_the_doc_quotes_it_as_written() -> None:
    ruleset = load_ruleset(EXAMPLES)
    blocks = segment_blocks()
    assert list(blocks) == [segment.name for segment in ruleset.segments]
    doc = DOC.read_text()
    for name, block in blocks.items():
        assert block in doc, f"docs/rule-language.md does not quote segment {name!r} as written"


def test_every_example_gets_a_member_in_a_replay(tmp_path: Path) -> None:
    rules = compile_rules(load_ruleset(EXAMPLES))
    lines = [orjson.dumps(e) for e in sorted(EVENTS, key=lambda e: e["occurred_at"])]
    result = replay(lines, rules, tmp_path, as_of=_micros("2026-04-30T00:00:00Z"))
    assert result.summary()["rejected"] == 0
    changes = [json.loads(line) for line in (tmp_path / "changes.jsonl").read_text().splitlines()]
    entered = {c["segment"] for c in changes if c["change"] == "entered"}
    assert sorted(s.name for s in rules.ruleset.segments if s.name not in entered) == []
    # two of the time-driven entries, worked out by hand
    first = {(c["customer_id"], c["segment"]): c["at"] for c in changes if c["change"] == "entered"}
    assert first[("c-frequent", "overdue")] == "2026-01-26T00:00:00Z"
    assert first[("c-loyal", "at_risk")] == "2025-07-14T00:00:00Z"


def _micros(text: str) -> int:
    from segments.clock import parse_instant

    return parse_instant(text.replace("Z", "+00:00"))
