"""Property: explain() reports exactly the truth values the generated evaluator computes."""

from __future__ import annotations

from contextlib import suppress
from typing import Any

import pytest
from hypothesis import given

from segments.engine import Engine, MemoryStates
from segments.events import Event
from segments.explain import explain
from segments.membership import DuplicateEvent, new_state
from segments.rules.evaluator import compile_rules
from segments.rules.parser import format_expression, parse_expression
from segments.rules.ruleset import RuleSet
from tests.property.test_replay_vs_reference import (
    CONFORMANCE,
    LANGUAGE_2,
    RICH,
    SETTINGS,
    histories,
)

pytestmark = pytest.mark.unit


def _check(events: list[Event], ruleset: RuleSet, as_of: int) -> None:
    rules = compile_rules(ruleset)
    states = MemoryStates()
    engine = Engine(rules, states)
    for event in sorted(events, key=lambda e: e.occurred_at):
        with suppress(DuplicateEvent):
            engine.apply(event)
    engine.advance(as_of)
    for state in states.states.values():
        document = explain(state, rules, as_of)
        flags, _ = rules.evaluate(state, rules.calendar.day_of(as_of))
        for index, (segment, entry) in enumerate(
            zip(ruleset.segments, document["segments"], strict=True)
        ):
            assert entry["name"] == segment.name
            assert entry["when"]["holds"] is flags[2 * index]
            if segment.exit_when is not None:
                assert entry["exit_when"]["holds"] is flags[2 * index + 1]
            else:
                # what the engine decided: without hysteresis a member is one whose rule holds
                if segment.min_dwell is None:
                    assert entry["when"]["holds"] is entry["member"], segment.name
            _check_tree(entry["when"]["tree"])


def _check_tree(node: dict[str, Any]) -> None:
    """Every node's truth follows from its parts; undefined operands make comparisons false."""
    op = node["op"]
    if op in ("and", "or", "not"):
        parts = [part["holds"] for part in node["args"]]
        for part in node["args"]:
            _check_tree(part)
        expected = all(parts) if op == "and" else any(parts) if op == "or" else not parts[0]
        assert node["holds"] is expected
    elif op != "in_segment":
        operands = [node[k] for k in ("left", "right", "operand", "low", "high") if k in node]
        for operand in operands:
            assert (operand["value"] is None) is operand["undefined"]
        if any(operand["undefined"] for operand in operands):
            assert node["holds"] is False


@SETTINGS
@given(histories())
def test_explain_agrees_with_the_engine_on_conformance_rules(history: Any) -> None:
    _check(history[0], CONFORMANCE, history[1])


@SETTINGS
@given(histories())
def test_explain_agrees_with_the_engine_on_rich_rules(history: Any) -> None:
    _check(history[0], RICH, history[1])


@SETTINGS
@given(histories())
def test_explain_agrees_with_the_engine_on_language_2_rules(history: Any) -> None:
    _check(history[0], LANGUAGE_2, history[1])


def test_the_rule_text_parses_back_to_the_same_rule() -> None:
    rules = compile_rules(LANGUAGE_2)
    state = MemoryStates().get("nobody") or new_state("c-1", rules)
    document = explain(state, rules, 0)
    for segment, entry in zip(LANGUAGE_2.segments, document["segments"], strict=True):
        for rule, shown in ((segment.when, entry["when"]), (segment.exit_when, entry["exit_when"])):
            if rule is None:
                assert shown is None
                continue
            assert format_expression(parse_expression(shown["rule"])) == format_expression(rule)
