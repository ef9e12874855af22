"""Traits (SPEC section 3, language 2): rule files, exact time, changes, state, replay."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from segments.aggregates import state_from_bytes, state_to_bytes
from segments.changes import TraitChange, format_instant
from segments.clock import parse_instant
from segments.data import EXAMPLE_RULES
from segments.engine import Engine, MemoryStates
from segments.events import Line, Purchase, Return, encode_event
from segments.membership import Tick, step
from segments.replay import replay
from segments.rules.errors import RuleFileError
from segments.rules.evaluator import CompiledRules, compile_rules
from segments.rules.ruleset import load_ruleset, parse_ruleset

pytestmark = pytest.mark.unit

HEAD = "version: 1\nbase_currency: EUR\nsegments:\n  - name: vip\n    when: orders() >= 3\n"


def t(text: str) -> int:
    return parse_instant(text.replace("Z", "+00:00"))


def rules_of(traits_yaml: str, version: int = 1) -> CompiledRules:
    text = HEAD.replace("version: 1", f"version: {version}") + "traits:\n" + traits_yaml
    return compile_rules(parse_ruleset(text, "traits.yaml"))


def buy(event_id: str, at: str, *lines: tuple[str, str], customer: str = "c1") -> Purchase:
    """A purchase whose lines are (category, amount); its total is their sum (10 without)."""
    items = tuple(
        Line("sku", category, 1, Decimal(amount), Decimal(0)) for category, amount in lines
    )
    total = sum((item.amount for item in items), Decimal(0)) or Decimal("10.00")
    return Purchase(event_id, customer, t(at), "pos", "EUR", total, Decimal(0), items)


def run(rules: CompiledRules, events: list[Purchase | Return], as_of: str) -> list[TraitChange]:
    out: list[object] = []
    engine = Engine(rules, MemoryStates(out.extend))
    for event in sorted(events, key=lambda e: e.occurred_at):
        engine.apply(event)
    engine.advance(t(as_of))
    return [c for c in out if isinstance(c, TraitChange)]


def brief(changes: list[TraitChange]) -> list[tuple[str, str | None, str, str, int]]:
    return [(c.trait, c.value, format_instant(c.at), c.cause, c.seq) for c in changes]


def errors_of(text: str) -> list[tuple[int, int, str, str]]:
    with pytest.raises(RuleFileError) as caught:
        parse_ruleset(text, "traits.yaml")
    return [(e.line, e.col, e.code, e.message) for e in caught.value.errors]


# --- rule files -------------------------------------------------------------------------


def test_the_spec_example_loads() -> None:
    rules = parse_ruleset(
        HEAD
        + """traits:
  - name: lifecycle
    cases:                       # first rule that holds gives the value
      - {value: at_risk, when: days_since_last_purchase() > 120 and orders() >= 2}
      - {value: loyal, when: orders(within="365d") >= 6}
      - {value: established, when: orders() >= 2}
      - {value: new, when: orders() >= 1}
    default: prospect
  - name: favourite_category
    top_category: {within: 365d}   # most spend; ties by name; none -> null
""",
        "spec.yaml",
    )
    lifecycle, favourite = rules.traits
    assert [c.value for c in lifecycle.cases] == ["at_risk", "loyal", "established", "new"]
    assert lifecycle.default == "prospect" and lifecycle.top_category_days is None
    assert favourite.top_category_days == 365 and favourite.cases == ()


def test_a_case_naming_an_unknown_segment_is_refused_at_its_position_with_a_suggestion() -> None:
    text = HEAD + 'traits:\n  - name: t\n    cases:\n      - {value: a, when: in_segment("vp")}\n'
    [(line, col, code, message)] = errors_of(text)
    assert (line, col, code) == (9, 26, "bad-segment-reference")
    assert "unknown segment 'vp'" in message and "did you mean 'vip'?" in message


def test_trait_names_are_unique_and_differ_from_segment_names() -> None:
    text = HEAD + (
        "traits:\n  - {name: vip, top_category: {within: 30d}}\n"
        "  - {name: top, top_category: {within: 30d}}\n"
        "  - {name: top, top_category: {within: 9d}}\n"
    )
    found = errors_of(text)
    assert [(line, code) for line, _, code, _ in found] == [
        (7, "duplicate-name"),
        (9, "duplicate-name"),
    ]
    assert "also a segment name" in found[0][3]
    assert "duplicate trait name 'top' (first at 8:" in found[1][3]


def test_an_unknown_trait_key_gets_a_did_you_mean() -> None:
    text = HEAD + "traits:\n  - name: t\n    top_categroy: {within: 30d}\n"
    found = errors_of(text)
    assert found[0][:3] == (8, 5, "unknown-key")
    assert "did you mean 'top_category'?" in found[0][3]


def test_a_broken_case_rule_is_reported_with_its_position() -> None:
    text = HEAD + "traits:\n  - name: t\n    cases:\n      - {value: a, when: ordres() > 1}\n"
    [(line, col, _, message)] = errors_of(text)
    assert (line, col) == (9, 26) and "did you mean 'orders'" in message


# --- evaluation -------------------------------------------------------------------------

LIFECYCLE = """  - name: lifecycle
    cases:
      - {value: at_risk, when: days_since_last_purchase() > 120 and orders() >= 2}
      - {value: loyal, when: in_segment("vip")}
      - {value: new, when: orders() >= 1}
    default: prospect
"""


def test_a_time_driven_case_changes_the_trait_at_midnight_of_the_first_day_it_holds() -> None:
    rules = rules_of(LIFECYCLE)
    events = [buy("e1", "2025-01-01T10:00:00Z"), buy("e2", "2025-01-05T18:00:00Z")]
    changes = run(rules, events, "2026-01-01T00:00:00Z")
    # 2025-01-05 + 121 days = 2025-05-06: the first day days_since_last_purchase() > 120
    assert brief(changes) == [
        ("lifecycle", "new", "2025-01-01T10:00:00Z", "purchase", 1),
        ("lifecycle", "at_risk", "2025-05-06T00:00:00Z", "time", 2),
    ]
    assert [c.event_id for c in changes] == ["e1", None]


def test_a_case_reads_the_membership_this_evaluation_left() -> None:
    rules = rules_of(LIFECYCLE)
    events = [buy(f"e{n}", f"2025-01-0{n}T10:00:00Z") for n in (1, 2, 3)]
    changes = run(rules, events, "2025-01-04T00:00:00Z")
    assert [c.value for c in changes] == ["new", "loyal"]  # vip entered with e3
    assert format_instant(changes[-1].at) == "2025-01-03T10:00:00Z"


def test_the_default_is_the_first_value_and_a_trait_without_one_waits_for_a_case() -> None:
    rules = rules_of(LIFECYCLE + "  - name: big\n    cases: [{value: yes, when: spend() > 100}]\n")
    returned = Return(
        "r1", "c1", t("2025-01-02T00:00:00Z"), "pos", "EUR", Decimal(5), Decimal(0), None, ()
    )
    changes = run(rules, [returned], "2025-02-01T00:00:00Z")
    assert brief(changes) == [("lifecycle", "prospect", "2025-01-02T00:00:00Z", "return", 1)]


def test_top_category_follows_spend_leaves_with_the_window_and_ties_by_name() -> None:
    rules = rules_of("  - name: top\n    top_category: {within: 10d}\n")
    events = [
        buy("e1", "2025-03-01T09:00:00Z", ("Shoes", "30.00"), ("Socks", "5.00")),
        buy("e2", "2025-03-05T09:00:00Z", ("Books", "20.00")),
        buy("e3", "2025-03-06T09:00:00Z", ("Books", "10.00")),  # Books 30 = Shoes 30: Books
    ]
    changes = run(rules, events, "2025-04-01T00:00:00Z")
    assert brief(changes) == [
        ("top", "Shoes", "2025-03-01T09:00:00Z", "purchase", 1),
        ("top", "Books", "2025-03-06T09:00:00Z", "purchase", 2),
        # e2 and e3 leave at the midnights after their tenth day; then nothing is left
        ("top", None, "2025-03-16T00:00:00Z", "time", 3),
    ]
    assert [c.change_id for c in changes] == ["c1:trait:top:1", "c1:trait:top:2", "c1:trait:top:3"]


def test_a_version_without_the_trait_sets_it_to_null_and_the_seq_goes_on_if_it_returns() -> None:
    v1 = rules_of(LIFECYCLE)
    v2 = rules_of("  - {name: other, cases: [{value: x, when: orders() >= 1}]}\n", version=2)
    state, changes = step(None, buy("e1", "2025-01-01T10:00:00Z"), v1, t("2025-01-01T10:00:00Z"))
    state, changes = step(state, Tick(t("2025-01-02T00:00:00Z")), v2, t("2025-01-02T00:00:00Z"))
    assert sorted(brief([c for c in changes if isinstance(c, TraitChange)])) == [
        ("lifecycle", None, "2025-01-02T00:00:00Z", "definition", 2),
        ("other", "x", "2025-01-02T00:00:00Z", "definition", 1),
    ]
    v3 = rules_of(LIFECYCLE, version=3)
    state, changes = step(state, Tick(t("2025-01-03T00:00:00Z")), v3, t("2025-01-03T00:00:00Z"))
    assert sorted(brief([c for c in changes if isinstance(c, TraitChange)])) == [
        ("lifecycle", "new", "2025-01-03T00:00:00Z", "definition", 3),
        ("other", None, "2025-01-03T00:00:00Z", "definition", 2),
    ]


# --- wire format and state ------------------------------------------------------------


def test_a_trait_change_is_the_agreed_json_object() -> None:
    change = TraitChange(
        "c-42", "lifecycle", "loyal", t("2026-11-20T14:03:11.120Z"), "purchase", "pos-1", 1, 3
    )
    assert orjson.loads(change.to_json()) == {
        "change_id": "c-42:trait:lifecycle:3",
        "customer_id": "c-42",
        "trait": "lifecycle",
        "value": "loyal",
        "at": "2026-11-20T14:03:11.120Z",
        "cause": "purchase",
        "event_id": "pos-1",
        "rules_version": 1,
        "seq": 3,
        "metrics": {},
    }
    assert list(change.to_dict()) == [
        "change_id", "customer_id", "trait", "value", "at", "cause", "event_id",
        "rules_version", "seq", "metrics",
    ]  # fmt: skip
    assert TraitChange.from_json(change.to_json()) == change
    cleared = TraitChange("c-42", "lifecycle", None, 0, "definition", None, 2, 4)
    assert TraitChange.from_json(cleared.to_json()) == cleared


def test_states_keep_their_traits_and_states_without_traits_encode_as_before() -> None:
    rules = rules_of(LIFECYCLE)
    state, _ = step(None, buy("e1", "2025-01-01T10:00:00Z"), rules, t("2025-01-01T10:00:00Z"))
    assert state.traits == {"lifecycle": ("new", 1)}
    data = state_to_bytes(state)
    assert state_from_bytes("c1", data).traits == {"lifecycle": ("new", 1)}
    state.traits = None
    old = state_to_bytes(state)
    assert len(orjson.loads(old)) == 8  # the layout of states written before traits
    assert state_from_bytes("c1", old).traits is None


def test_rules_without_traits_generate_the_same_code_as_before() -> None:
    ruleset = load_ruleset(EXAMPLE_RULES)
    assert ruleset.traits == ()
    rules = compile_rules(ruleset)
    assert rules.trait_plan == ()
    with_traits = compile_rules(parse_ruleset(HEAD + "traits:\n" + LIFECYCLE, "x.yaml"))
    assert "f2" in with_traits.source  # the cases are flags after the segment's two


# --- replay -----------------------------------------------------------------------------


def test_replay_writes_traits_jsonl_and_traits_json(tmp_path: Path) -> None:
    rules = rules_of(LIFECYCLE + "  - name: top\n    top_category: {within: 10d}\n")
    events = [
        buy("e1", "2025-03-01T09:00:00Z", ("Shoes", "30.00")),
        buy("e2", "2025-03-01T09:00:00Z", ("Books", "5.00"), customer="c2"),
    ]
    lines = [encode_event(e) for e in events]
    replay(lines, rules, tmp_path, as_of=t("2025-03-05T00:00:00Z"))
    written = [orjson.loads(line) for line in (tmp_path / "traits.jsonl").read_bytes().splitlines()]
    assert [(c["customer_id"], c["trait"], c["value"]) for c in written] == [
        ("c1", "lifecycle", "new"),
        ("c1", "top", "Shoes"),
        ("c2", "lifecycle", "new"),
        ("c2", "top", "Books"),
    ]
    assert orjson.loads((tmp_path / "traits.json").read_bytes()) == {
        "lifecycle": {"c1": "new", "c2": "new"},
        "top": {"c1": "Shoes", "c2": "Books"},
    }


def test_replay_of_rules_without_traits_writes_empty_trait_files(tmp_path: Path) -> None:
    rules = compile_rules(load_ruleset(EXAMPLE_RULES))
    replay([encode_event(buy("e1", "2025-03-01T09:00:00Z"))], rules, tmp_path)
    assert (tmp_path / "traits.jsonl").read_bytes() == b""
    assert (tmp_path / "traits.json").read_bytes() == b"{}"


def test_validate_counts_the_traits(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from streams.cli.main import cli

    path = tmp_path / "rules.yaml"
    path.write_text(HEAD + "traits:\n" + LIFECYCLE)
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 0
    assert result.output == f"OK: {path} (version 1, 1 segment, 0 triggers, 1 trait)\n"
