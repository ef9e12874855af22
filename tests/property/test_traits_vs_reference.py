"""Property: traits (SPEC section 3, language 2) from the engine, from `segments replay`
(one job and several) and from the naive reference agree on random purchase histories."""

from __future__ import annotations

import random
from contextlib import suppress
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from segments.changes import Change, TraitChange
from segments.engine import Engine, MemoryStates
from segments.events import Event
from segments.membership import DuplicateEvent
from segments.replay import replay
from segments.rules.evaluator import compile_rules
from segments.rules.ruleset import RuleSet, parse_ruleset
from streams.worker.driver import Driver
from tests.property.test_replay_vs_reference import SETTINGS, histories
from tests.reference import reference_replay
from tests.unit.test_worker_driver import AS_OF, example_lines, feed, instant

pytestmark = pytest.mark.unit

# Both kinds of trait: cases whose conditions change with time alone (a days-since
# against a number and against the customer's own rhythm, windowed counts falling as
# orders leave), read segments (one with exit_when and min_dwell), an absent default;
# top_category over a short and a long window.
TRAIT_RULES = """
version: 5
base_currency: USD
rates: {EUR: "1.10"}
segments:
  - name: vip
    when: orders(within="182d") >= 3
    exit_when: orders(within="182d") < 2
  - name: lapsed
    when: days_since_last_purchase() > 60
    min_dwell: 10d
traits:
  - name: lifecycle
    cases:
      - {value: at_risk, when: days_since_last_purchase() > 120 and orders() >= 2}
      - {value: loyal, when: in_segment("vip") and not in_segment("lapsed")}
      - {value: overdue, when: days_since_last_purchase() > 2 * avg_days_between_orders()}
      - {value: established, when: orders() >= 2}
      - {value: new, when: orders() >= 1}
    default: prospect
  - name: recent
    cases:
      - {value: busy, when: orders(within="30d") >= 2}
      - {value: big, when: spend(within="60d") > 100}
  - name: favourite_category
    top_category: {within: 365d}
  - name: this_month
    top_category: {within: 30d}
"""
TRAITS = parse_ruleset(TRAIT_RULES, "traits.yaml")


def _trait_key(change: Any) -> tuple[Any, ...]:
    fields = ("customer_id", "trait", "value", "at", "cause", "seq", "event_id")
    if not isinstance(change, dict):
        change = {k: getattr(change, k) for k in fields}
    return tuple(repr(change[k]) for k in fields)  # repr: None sorts beside text


def engine_run(
    events: list[Event], ruleset: RuleSet, as_of: int
) -> tuple[list[Change], list[TraitChange], MemoryStates]:
    rules = compile_rules(ruleset)
    out: list[Change | TraitChange] = []
    states = MemoryStates(out.extend)
    engine = Engine(rules, states)
    for event in sorted(events, key=lambda e: e.occurred_at):
        with suppress(DuplicateEvent):
            engine.apply(event)
    engine.advance(as_of)
    instants = [c.at for c in out]
    assert instants == sorted(instants), "changes must come out in `at` order"
    changes = [c for c in out if isinstance(c, Change)]
    traits = [c for c in out if isinstance(c, TraitChange)]
    return changes, traits, states


def final_values(changes: list[dict[str, Any]]) -> dict[str, dict[str, str]]:
    values: dict[str, dict[str, str]] = {}
    for change in changes:
        values.setdefault(change["trait"], {})[change["customer_id"]] = change["value"]
    final = {
        trait: {c: v for c, v in sorted(by.items()) if v is not None}
        for trait, by in values.items()
    }
    return {trait: by for trait, by in final.items() if by}


def check_traits(events: list[Event], ruleset: RuleSet, as_of: int) -> list[TraitChange]:
    changes, traits, states = engine_run(events, ruleset, as_of)
    expected: list[dict[str, Any]] = []
    expected_changes, expected_members = reference_replay(events, ruleset, as_of, expected)
    assert sorted(map(_trait_key, traits)) == sorted(map(_trait_key, expected))
    # segments are unchanged by the traits beside them
    assert len(changes) == len(expected_changes)
    assert states.memberships(s.name for s in ruleset.segments) == expected_members
    values = states.trait_values(t.name for t in ruleset.traits)
    assert {t: v for t, v in values.items() if v} == final_values(expected)
    for change in traits:  # seq counts each customer's changes of each trait
        assert change.change_id == f"{change.customer_id}:trait:{change.trait}:{change.seq}"
    return traits


@SETTINGS
@given(histories())
def test_traits_agree_with_reference(history: tuple[list[Event], int]) -> None:
    check_traits(history[0], TRAITS, history[1])


TRAIT_WORKER_RULES = compile_rules(TRAITS)


def _replayed_traits(
    lines: list[bytes], tmp: Path, as_of: str
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, str]]]:
    replay(lines, TRAIT_WORKER_RULES, tmp, as_of=instant(as_of))
    changes = [orjson.loads(line) for line in (tmp / "traits.jsonl").read_bytes().splitlines()]
    return {c["change_id"]: c for c in changes}, orjson.loads((tmp / "traits.json").read_bytes())


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    seed=st.integers(0, 10_000),
    plan=st.lists(
        st.tuples(st.sampled_from(["run", "commit", "crash", "rebalance"]), st.integers(1, 80)),
        max_size=12,
    ),
)
def test_the_broker_free_worker_publishes_replays_trait_changes(
    seed: int, plan: list[tuple[str, int]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The worker's trait-changes (deduped by change_id, each id with one content) and its
    compacted trait-values equal replay's traits.jsonl and traits.json, crashes included."""
    lines = example_lines(customers=30, events=250, seed=seed)
    rng = random.Random(seed)
    driver = Driver(TRAIT_WORKER_RULES, partitions=3)
    feed(driver, lines)
    for action, amount in plan:
        if action == "run":
            driver.run(limit=amount, rng=rng)
        elif action == "commit":
            driver.commit()
        elif action == "crash":
            driver.crash(rng)
        else:
            driver.rebalance()
    driver.run(rng=rng)
    driver.commit()
    expected, expected_values = _replayed_traits(lines, tmp_path_factory.mktemp("replay"), AS_OF)
    assert expected, "the rules must give the synthetic customers traits"
    published: dict[str, dict[str, Any]] = {}
    for change in driver.published_trait_changes():
        first = published.setdefault(change["change_id"], change)
        assert first == change, f"{change['change_id']} published with two contents"
    assert published == expected
    assert driver.trait_values(t.name for t in TRAITS.traits) == expected_values


def test_a_crash_before_the_publish_republishes_the_same_trait_changes(tmp_path: Path) -> None:
    lines = example_lines()
    driver = Driver(TRAIT_WORKER_RULES, partitions=2)
    feed(driver, lines)
    driver.run(limit=300)
    driver.commit()
    driver.run(limit=150)
    # The table writes of those 150 reached the changelog, their trait changes did not.
    lost = [sent for sent in driver.pending if sent.topic == driver.names.trait_changes]
    assert lost, "the 150 events must have changed some trait"
    driver.pending = [sent for sent in driver.pending if sent.topic == "customers-changelog"]
    driver.crash(random.Random(0))
    driver.run()
    driver.commit()
    expected, expected_values = _replayed_traits(lines, tmp_path, AS_OF)
    published: dict[str, dict[str, Any]] = {}
    for change in driver.published_trait_changes():
        assert published.setdefault(change["change_id"], change) == change
    assert published == expected
    assert driver.trait_values(t.name for t in TRAITS.traits) == expected_values
