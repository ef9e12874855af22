"""explain(): each segment's rule, membership, metric values and comparisons, hand-checked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from segments.engine import Engine, MemoryStates
from segments.explain import explain
from streams.cli.main import cli
from tests.unit.test_membership import buy, rules_of, t

pytestmark = pytest.mark.unit

RULES = (
    "  - name: vip\n"
    "    description: three orders in 90 days\n"
    '    when: orders(within="90d") >= 3\n'
    '    exit_when: orders(within="90d") < 2\n'
    "  - name: online_share\n"
    '    when: spend(channel="online") / spend() >= 0.8\n'
    "  - name: overdue\n"
    "    when: days_since_last_purchase() > 2 * avg_days_between_orders()\n"
    "  - name: lapsed\n"
    "    when: days_since_last_purchase() > 60\n"
    "    min_dwell: 10d\n"
    "  - name: vip_not_lapsed\n"
    '    when: in_segment("vip") and not in_segment("lapsed")\n'
    "  - name: pos_average\n"
    '    when: avg_order_value(channel="pos", within="30d") between 10 and 100\n'
)
EVENTS = [
    buy("e1", "2024-01-10T12:00:00Z", "40.00"),
    buy("e2", "2024-02-09T12:00:00Z", "60.00", channel="online"),
    buy("e3", "2024-03-10T12:00:00Z", "100.00", channel="online"),
]
AS_OF = "2024-06-08T00:00:00Z"


def _document() -> dict[str, Any]:
    rules = rules_of(RULES)
    states = MemoryStates()
    engine = Engine(rules, states)
    for event in EVENTS:
        engine.apply(event)
    engine.advance(t(AS_OF))
    state = states.get("c1")
    assert state is not None
    return explain(state, rules, t(AS_OF))


def _by_name(document: dict[str, Any]) -> dict[str, Any]:
    return {segment["name"]: segment for segment in document["segments"]}


def test_a_segment_left_by_its_exit_rule_shows_both_rules_and_the_window_count() -> None:
    document = _document()
    assert document["customer_id"] == "c1"
    assert document["as_of"] == "2024-06-08T00:00:00Z"
    assert document["rules_version"] == 1
    vip = _by_name(document)["vip"]
    # the window of 90 days on 06-08 starts on 03-11: the last order (03-10) is out
    assert vip["member"] is False and vip["since"] is None
    assert vip["description"] == "three orders in 90 days"
    assert vip["when"]["rule"] == 'orders(within="90d") >= 3'
    assert vip["when"]["holds"] is False
    assert vip["when"]["tree"] == {
        "op": ">=",
        "text": 'orders(within="90d") >= 3',
        "holds": False,
        "left": {
            "text": 'orders(within="90d")',
            "metric": "orders_90d",
            "value": 0,
            "undefined": False,
        },
        "right": {"text": "3", "value": 3, "undefined": False},
    }
    assert vip["exit_when"]["holds"] is True
    assert vip["metrics"] == {"orders_90d": 0}


def test_a_ratio_is_shown_with_its_exact_value() -> None:
    share = _by_name(_document())["online_share"]
    # 160.00 online of 200.00 in all: exactly 0.8, which holds since the third order
    assert share["member"] is True and share["since"] == "2024-03-10T12:00:00Z"
    tree = share["when"]["tree"]
    assert tree["holds"] is True
    assert tree["left"]["text"] == 'spend(channel="online") / spend()'
    assert tree["left"]["value"] == "0.8" and "metric" not in tree["left"]
    assert share["metrics"] == {"spend_online": "160.00", "spend": "200.00"}


def test_a_rhythm_comparison_and_a_min_dwell() -> None:
    segments = _by_name(_document())
    overdue = segments["overdue"]["when"]["tree"]
    # 90 days since 03-10; (03-10 - 01-10) / (3 - 1) = 30 days between orders, twice is 60
    assert overdue["left"]["value"] == 90
    assert overdue["right"]["text"] == "2 * avg_days_between_orders()"
    assert overdue["right"]["value"] == "60"
    assert overdue["holds"] is True
    lapsed = segments["lapsed"]
    assert lapsed["member"] is True and lapsed["since"] == "2024-05-10T00:00:00Z"  # day 61
    assert lapsed["min_dwell"] == "10d" and lapsed["exit_when"] is None


def test_segment_references_and_undefined_values() -> None:
    segments = _by_name(_document())
    tree = segments["vip_not_lapsed"]["when"]["tree"]
    assert tree["op"] == "and" and tree["holds"] is False
    vip, not_lapsed = tree["args"]
    assert vip == {
        "op": "in_segment",
        "text": 'in_segment("vip")',
        "segment": "vip",
        "holds": False,
    }
    assert not_lapsed["op"] == "not" and not_lapsed["holds"] is False
    assert not_lapsed["args"][0]["holds"] is True
    # no pos order in the last 30 days: the average is undefined and `between` false
    average = segments["pos_average"]["when"]["tree"]
    assert average["op"] == "between" and average["holds"] is False
    assert average["operand"]["value"] is None and average["operand"]["undefined"] is True
    assert segments["pos_average"]["metrics"] == {"avg_order_value_30d_pos": None}


def _write_case(tmp_path: Path) -> tuple[Path, Path]:
    rules = tmp_path / "rules.yaml"
    rules.write_text(f"version: 1\nbase_currency: EUR\nrates: {{USD: '0.5'}}\nsegments:\n{RULES}")
    events = tmp_path / "events.jsonl"
    lines = [
        {
            "event_id": e.event_id,
            "customer_id": e.customer_id,
            "occurred_at": at,
            "channel": e.channel,
            "type": "purchase",
            "currency": "EUR",
            "total": str(e.total),
        }
        for e, at in zip(
            EVENTS,
            ("2024-01-10T12:00:00Z", "2024-02-09T12:00:00Z", "2024-03-10T12:00:00Z"),
            strict=True,
        )
    ]
    events.write_bytes(b"".join(orjson.dumps(line) + b"\n" for line in lines))
    return rules, events


def test_the_offline_command_prints_the_same_document_and_a_readable_text(tmp_path: Path) -> None:
    rules, events = _write_case(tmp_path)
    args = ["explain", "c1", "--input", str(events), "--as-of", AS_OF, "--rules", str(rules)]
    result = CliRunner().invoke(cli, [*args, "--json"])
    assert result.exit_code == 0, result.output
    assert orjson.loads(result.output) == orjson.loads(orjson.dumps(_document()))
    text = CliRunner().invoke(cli, args)
    assert text.exit_code == 0, text.output
    assert "online_share: member since 2024-03-10T12:00:00Z" in text.output
    assert "vip: not a member\n  (three orders in 90 days)\n" in text.output
    assert "yes days_since_last_purchase() > 2 * avg_days_between_orders()    [90 > 60]" in (
        text.output
    )
    assert 'no  avg_order_value(within="30d", channel="pos") between 10 and 100' in text.output
    assert "[undefined between 10 and 100]" in text.output
    assert 'no  not in_segment("lapsed")' in text.output


def test_the_offline_command_names_a_customer_it_never_saw(tmp_path: Path) -> None:
    rules, events = _write_case(tmp_path)
    args = ["explain", "c9", "--input", str(events), "--as-of", AS_OF, "--rules", str(rules)]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    assert "'c9' does not appear in" in result.output
    assert CliRunner().invoke(cli, ["explain", "c1", "--input", str(events)]).exit_code == 2
