"""Property: when the new rules read nothing the old state lacks and keep no history of their own
(no exit_when, no min_dwell), the members after the switch are those of a full replay under
the new rules; the members before are those of a replay under the old rules."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from segments.clock import MICROS_PER_DAY, parse_instant
from segments.diff import MEMBER, RuleDiff, diff_rules, history_warnings
from segments.events import Event, encode_event
from segments.replay import read_lines, replay
from segments.rules.evaluator import compile_rules
from segments.rules.ruleset import RuleSet, parse_ruleset
from tests.conformance_cases import RULES, Case, all_cases
from tests.property.test_replay_vs_reference import START, histories

pytestmark = pytest.mark.unit

# The conformance rules (horizon 548 days, no category, one all-history filter: none) and
# a new version that reads within those: windows up to 548 days, no new all-history
# filter, an in_segment reference, a removed segment (sleeper), an added one.
CONFORMANCE_NEW = """
version: 2
base_currency: USD
segments:
  - name: vip
    when: orders(within="182d") >= 2
  - name: lapsed
    when: days_since_last_purchase() > 60
  - name: big_spender
    when: avg_order_value(within="90d") > 40
  - name: heavy
    when: spend(within="548d") >= 150 and orders() >= 2
  - name: quiet_heavy
    when: in_segment("heavy") and days_since_last_purchase() between 30 and 400
"""

# For random histories: the old rules have hysteresis and categories; the new ones read
# only what those keep (same horizon, a kept category, kept all-history filters).
OLD_RULES = """
version: 1
base_currency: USD
rates: {EUR: "1.10"}
segments:
  - name: vip
    when: orders(within="182d") >= 3
    exit_when: orders(within="182d") < 2
  - name: lapsed
    when: days_since_last_purchase() > 90
    min_dwell: 10d
  - name: music
    when: units(category="Music", within="365d") >= 2
  - name: sleeper
    when: days_since_last_purchase() > 182 and orders(within="548d") between 2 and 4
  - name: online
    when: orders(channel="online") >= 1
"""

NEW_RULES = """
version: 2
base_currency: USD
rates: {EUR: "1.10"}
segments:
  - name: vip
    when: orders(within="182d") >= 2
  - name: lapsed
    when: days_since_last_purchase() > 60
  - name: music
    when: spend(category="Music", within="90d") >= 20 or units(category="Music", within="548d") >= 3
  - name: regular
    when: orders(within="548d") >= 2 and avg_order_value(within="365d") > 30
  - name: lapsed_regular
    when: in_segment("regular") and days_since_last_purchase() > 30
  - name: online_share
    when: spend(channel="online", within="365d") / spend(within="365d") >= 0.5
  - name: online_spender
    when: spend(channel="online") > 50 and discounted_orders(within="200d") >= 1
"""


def members(diff: RuleDiff, *, after: bool) -> dict[str, list[str]]:
    names = [s.name for s in diff.segments if s.status != ("removed" if after else "added")]
    values = diff.after if after else diff.before
    return {name: sorted(c for c, v in values[name].items() if v == MEMBER) for name in names}


def replayed(lines: list[bytes], ruleset: RuleSet, as_of: int, out: Path) -> dict[str, list[str]]:
    import json

    replay(lines, compile_rules(ruleset), out, as_of=as_of)
    return dict(json.loads((out / "memberships.json").read_text()))


def check(lines: list[bytes], old: RuleSet, new: RuleSet, as_of: int, out: Path) -> None:
    assert history_warnings(compile_rules(old), compile_rules(new)) == []
    diff = diff_rules(lines, old, new, as_of)
    assert members(diff, after=False) == replayed(lines, old, as_of, out / "old")
    assert members(diff, after=True) == replayed(lines, new, as_of, out / "new")


CONFORMANCE_OLD = parse_ruleset(RULES.read_text(), str(RULES))


@pytest.mark.parametrize("case", all_cases(), ids=lambda case: case.name)
def test_conformance_cases_switch_like_a_full_replay(case: Case, tmp_path: Path) -> None:
    lines = list(read_lines(case.events))
    as_of = parse_instant(case.as_of.replace("Z", "+00:00"))
    check(lines, CONFORMANCE_OLD, parse_ruleset(CONFORMANCE_NEW, "new.yaml"), as_of, tmp_path)


def test_conformance_members_after_change_at_all() -> None:
    # the property above would hold trivially if the new rules changed nothing
    lines = [line for case in all_cases() for line in read_lines(case.events)]
    as_of = parse_instant("1998-07-01T00:00:00+00:00")
    diff = diff_rules(lines, CONFORMANCE_OLD, parse_ruleset(CONFORMANCE_NEW, "new.yaml"), as_of)
    assert sum(s.changed for s in diff.segments) > 0


OLD = parse_ruleset(OLD_RULES, "old.yaml")
NEW = parse_ruleset(NEW_RULES, "new.yaml")


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(histories(), st.integers(0, 1300), st.sampled_from([0, 0, 43_200 * 1_000_000]))
def test_random_histories_switch_like_a_full_replay(
    tmp_path: Path, history: tuple[list[Event], int], day: int, offset: int
) -> None:
    events, _ = history
    as_of = START + day * MICROS_PER_DAY + offset
    # the diff reads everything and applies what happened by as_of; the replays get only that
    lines = [encode_event(event) for event in events]
    past = [encode_event(event) for event in events if event.occurred_at <= as_of]
    diff = diff_rules(lines, OLD, NEW, as_of)
    assert members(diff, after=False) == replayed(past, OLD, as_of, tmp_path / "old")
    assert members(diff, after=True) == replayed(past, NEW, as_of, tmp_path / "new")
    assert history_warnings(compile_rules(OLD), compile_rules(NEW)) == []
    entered_exited = sum(
        len(s.moved(None, MEMBER)) + len(s.moved(MEMBER, None)) for s in diff.segments
    )
    assert entered_exited == len(diff.changes_at_switch)
