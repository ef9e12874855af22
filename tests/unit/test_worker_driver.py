"""The worker's processor through the broker-free driver: delivery rules without Kafka.

Every test here ends by comparing with `segments replay` of the same input
(or with a conformance case's hand-checked expectations).
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from segments.clock import parse_instant
from segments.data import EXAMPLE_RULES
from segments.replay import replay
from segments.rules.evaluator import CompiledRules, compile_rules
from segments.rules.ruleset import load_ruleset, parse_ruleset
from streams.worker.driver import Driver
from tests.conformance_cases import Case, assert_conforms, every_case
from tests.integration.worker_harness import synthetic_events

pytestmark = pytest.mark.unit

CASES = every_case()
EXAMPLE = compile_rules(load_ruleset(EXAMPLE_RULES))
AS_OF = "2026-09-01T00:00:00Z"


def instant(text: str) -> int:
    return parse_instant(text.replace("Z", "+00:00"))


def time_ordered(lines: list[bytes]) -> list[bytes]:
    """As `segments produce` sends them: by occurred_at, ties in input order."""
    return sorted(lines, key=lambda line: instant(orjson.loads(line)["occurred_at"]))


def replayed(
    rules: CompiledRules, lines: list[bytes], tmp: Path, as_of: str | None
) -> tuple[dict[str, dict[str, Any]], dict[str, list[str]]]:
    replay(lines, rules, tmp, as_of=instant(as_of) if as_of else None)
    changes = [orjson.loads(line) for line in (tmp / "changes.jsonl").read_bytes().splitlines()]
    return {c["change_id"]: c for c in changes}, json.loads((tmp / "memberships.json").read_text())


def published_by_id(driver: Driver) -> dict[str, dict[str, Any]]:
    """Changes deduped by change_id; two copies of one id must be identical (SPEC section 7)."""
    by_id: dict[str, dict[str, Any]] = {}
    for change in driver.published_changes():
        first = by_id.setdefault(change["change_id"], change)
        assert first == change, f"{change['change_id']} published with two contents"
    return by_id


def assert_equals_replay(
    driver: Driver, rules: CompiledRules, lines: list[bytes], tmp: Path, as_of: str | None
) -> None:
    expected_changes, expected_members = replayed(rules, lines, tmp, as_of)
    actual = published_by_id(driver)
    missing = sorted(set(expected_changes) - set(actual))
    extra = sorted(set(actual) - set(expected_changes))
    assert not missing and not extra, f"missing {missing[:5]}, extra {extra[:5]}"
    assert actual == expected_changes
    segments = [s.name for s in rules.ruleset.segments]
    assert driver.memberships(segments) == expected_members


def example_lines(customers: int = 60, events: int = 600, seed: int = 7) -> list[bytes]:
    return time_ordered(
        [orjson.dumps(e) for e in synthetic_events(customers=customers, events=events, seed=seed)]
    )


def feed(driver: Driver, lines: list[bytes], as_of: str | None = AS_OF) -> None:
    for line in lines:
        driver.send(line)
    if as_of is not None:
        driver.send_clock_marks(as_of)


@pytest.mark.parametrize("case", CASES, ids=[f"{c.path.parent.name}/{c.name}" for c in CASES])
def test_conformance_case_through_the_driver(case: Case) -> None:
    rules = compile_rules(load_ruleset(case.rules))
    driver = Driver(rules, partitions=1)
    # `segments produce` sends events in occurred_at order (case l gives them unordered)
    feed(driver, time_ordered(case.events.read_bytes().splitlines()), case.as_of)
    driver.run()
    driver.commit()
    changes = driver.published_changes()
    segments = [s.name for s in rules.ruleset.segments]
    assert_conforms(case, changes, driver.memberships(segments))


def test_a_crash_before_the_publish_republishes_the_same_changes(tmp_path: Path) -> None:
    lines = example_lines()
    driver = Driver(EXAMPLE, partitions=2)
    feed(driver, lines)
    driver.run(limit=300)
    driver.commit()
    driver.run(limit=150)
    # The table writes of those 150 reached the changelog, their changes did not.
    driver.pending = [sent for sent in driver.pending if sent.topic == "customers-changelog"]
    driver.crash(random.Random(0))  # keeps a random prefix of the changelog only
    assert driver.backlog() == len(lines) + 2 - 300
    driver.run()
    driver.commit()
    assert_equals_replay(driver, EXAMPLE, lines, tmp_path, AS_OF)


def test_redelivered_messages_are_duplicates_not_new_changes(tmp_path: Path) -> None:
    lines = example_lines()
    driver = Driver(EXAMPLE, partitions=2)
    feed(driver, lines)
    driver.run(limit=400)
    driver.flush()  # everything is in Kafka, but the offsets were not committed
    before = set(published_by_id(driver))
    driver.crash()
    assert driver.backlog() == len(lines) + 2  # nothing committed: all of it again
    driver.run(limit=400)
    assert driver.processor.counts["duplicates"] > 0
    assert driver.processor.counts["applied"] == 0  # every event of the 400 was seen
    driver.flush()
    # The outboxes of records written after the last commit are sent again (the
    # worker cannot know Kafka had them): the same ids with the same contents.
    assert len(driver.published_changes()) > len(before)
    assert set(published_by_id(driver)) == before
    driver.run()
    driver.commit()
    assert_equals_replay(driver, EXAMPLE, lines, tmp_path, AS_OF)


def test_messages_read_again_within_a_run_are_duplicates_not_late_events(tmp_path: Path) -> None:
    """A seek back within the run (head-gap healing re-reads from the committed offset)
    hands over messages already handled. A return whose id the state no longer remembers
    (return ids are kept for max_lateness) is then far behind the clock: it was applied,
    so it is a duplicate, never a `too_late` dead letter. Found by the SIGKILL fault
    scenario: six such dead letters after a re-read of 770 messages."""

    def event(event_id: str, at: str, **fields: str) -> bytes:
        base = {"customer_id": "c-1", "channel": "pos", "currency": "EUR", "total": "30.00"}
        return orjson.dumps({"event_id": event_id, "occurred_at": at, **base, **fields})

    lines = [
        event("p-1", "2026-01-01T10:00:00Z"),
        event("p-2", "2026-01-05T10:00:00Z"),
        event("r-1", "2026-01-06T10:00:00Z", type="return", original_event_id="p-1"),
        event("p-3", "2026-06-01T10:00:00Z"),  # the clock moves 146 days past the return
    ]
    driver = Driver(EXAMPLE, partitions=1)
    feed(driver, lines)
    driver.run()
    driver.seek(0, 0)  # nothing was committed: the consumer starts over from offset 0
    driver.run()
    driver.commit()
    assert driver.dead_letters == []
    assert driver.processor.counts["duplicates"] == len(lines)
    assert_equals_replay(driver, EXAMPLE, lines, tmp_path, AS_OF)


def test_the_event_clock_is_restored_after_a_restart() -> None:
    driver = Driver(EXAMPLE, partitions=1)
    driver.send_clock_marks("2026-01-01T00:00:00Z")
    driver.run()
    driver.commit()
    driver.crash()
    late = {
        "event_id": "late-1",
        "customer_id": "c-1",
        "occurred_at": "2025-10-01T12:00:00Z",  # 92 days behind the restored clock
        "channel": "pos",
        "currency": "EUR",
        "total": "10.00",
    }
    driver.send(orjson.dumps(late))
    driver.run()
    driver.commit()
    assert [d.reason for d in driver.dead_letters] == ["too_late"]


def test_wall_clock_ticks_apply_deadlines_at_their_due_instant() -> None:
    start = instant("2026-01-01T10:00:00Z")
    driver = Driver(EXAMPLE, partitions=1, event_clock=False, wall=start)
    purchase = {
        "event_id": "p-1",
        "customer_id": "c-1",
        "occurred_at": "2026-01-01T09:59:00Z",
        "channel": "pos",
        "currency": "EUR",
        "total": "20.00",
    }
    driver.send(orjson.dumps(purchase))
    driver.run()
    driver.tick(start + 90 * 86_400_000_000)  # day 90 after: not yet lapsed
    driver.flush()
    assert not [c for c in driver.published_changes() if c["segment"] == "win_back"]
    driver.tick(start + 91 * 86_400_000_000)
    driver.commit()
    win_back = [c for c in driver.published_changes() if c["segment"] == "win_back"]
    assert [(c["change"], c["at"], c["cause"]) for c in win_back] == [
        ("entered", "2026-04-02T00:00:00Z", "time")
    ]


def test_invalid_and_far_future_input_is_dead_lettered_and_the_partition_goes_on(
    tmp_path: Path,
) -> None:
    lines = example_lines(customers=20, events=120)
    wall = instant("2026-12-01T00:00:00Z")
    driver = Driver(EXAMPLE, partitions=1, wall=wall)
    future = {
        "event_id": "future-1",
        "customer_id": "c-00001",
        "occurred_at": "9999-01-01T00:00:00Z",
        "channel": "pos",
        "currency": "EUR",
        "total": "10.00",
    }
    driver.send(orjson.dumps(future))
    driver.send(b"{not json", key=b"c-00001")
    feed(driver, lines)
    driver.run()
    driver.commit()
    assert sorted(d.reason for d in driver.dead_letters) == ["invalid_json", "too_far_ahead"]
    assert_equals_replay(driver, EXAMPLE, lines, tmp_path, AS_OF)


def rules_v2() -> CompiledRules:
    """Version 2 of the example: `runner` removed, `frequent` added."""
    text = EXAMPLE_RULES.read_text().replace("version: 1 ", "version: 2 ")
    text = text.replace(
        '  - name: runner\n    when: orders(category="Running Shoes", within="365d") >= 1\n',
        '  - name: frequent\n    when: orders(within="365d") >= 4\n',
    )
    ruleset = parse_ruleset(text, "v2.yaml")
    assert ruleset.version == 2
    assert [s.name for s in ruleset.segments].count("runner") == 0
    return compile_rules(ruleset)


def test_a_new_rule_version_switches_every_stored_customer_at_start(tmp_path: Path) -> None:
    lines = example_lines()
    driver = Driver(EXAMPLE, partitions=2)
    feed(driver, lines)
    driver.run()
    driver.commit()
    v1_members = driver.memberships(["runner"])["runner"]
    assert v1_members, "the test needs members of the segment that v2 removes"
    v2 = rules_v2()
    driver.restart(v2)
    driver.tick()  # the timer's first tick opens every partition; no event arrives
    driver.commit()
    segments = [s.name for s in v2.ruleset.segments]
    _, expected_members = replayed(v2, lines, tmp_path, AS_OF)
    assert driver.memberships([*segments, "runner"]) == {**expected_members, "runner": []}
    definition = [c for c in driver.published_changes() if c["cause"] == "definition"]
    exits = sorted(c["customer_id"] for c in definition if c["segment"] == "runner")
    assert exits == v1_members
    assert {c["rules_version"] for c in definition} == {2}
    entered = {c["customer_id"] for c in definition if c["segment"] == "frequent"}
    assert entered == set(expected_members["frequent"])
    # The switch happened once: a second start under v2 publishes no new change
    # (outboxes written just before the commit may be sent again, the same ids).
    ids = set(published_by_id(driver))
    driver.restart()
    driver.tick()
    driver.commit()
    assert set(published_by_id(driver)) == ids
    assert driver.processor.counts["rollout_switched"] == 0


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(
    seed=st.integers(0, 10_000),
    plan=st.lists(
        st.tuples(
            st.sampled_from(["run", "commit", "crash", "rebalance", "flush"]), st.integers(1, 80)
        ),
        min_size=1,
        max_size=25,
    ),
)
def test_crashes_and_rebalances_anywhere_end_equal_to_replay(
    seed: int, plan: list[tuple[str, int]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    lines = example_lines(customers=40, events=300, seed=seed)
    rng = random.Random(seed)
    driver = Driver(EXAMPLE, partitions=3)
    feed(driver, lines)
    for action, amount in plan:
        if action == "run":
            driver.run(limit=amount, rng=rng)
        elif action == "commit":
            driver.commit()
        elif action == "crash":
            driver.crash(rng)
        elif action == "rebalance":
            driver.rebalance()
        else:
            driver.flush(rng.randint(0, len(driver.pending)))
    driver.run(rng=rng)
    driver.commit()
    assert_equals_replay(driver, EXAMPLE, lines, tmp_path_factory.mktemp("replay"), AS_OF)
