"""(a) Generated traffic through Kafka ends exactly where `segments replay` ends.

>= 20,000 events of >= 2,000 customers, produced with `segments produce --as-of`,
one worker in event-clock mode: the changes (deduped by change_id, compared
whole) and the memberships of the compacted topic equal replay's, time-driven
transitions included.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from segments.data import EXAMPLE_RULES
from segments.generate import generate_events
from tests.integration.worker_harness import (
    assert_equals_replay,
    drain_with_one_worker,
    memberships_from_changes,
    produce,
    replay_reference,
)

pytestmark = pytest.mark.slow

AS_OF = "2026-12-01T00:00:00Z"  # months after the last event: win-back and sleepers happen


def test_generated_events_equal_replay(
    segments_env: dict[str, str], topics: object, tmp_path: Path
) -> None:
    # `segments generate`: 6,000 customers over 600 days, about 22,600 events.
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"".join(line + b"\n" for line in generate_events(6_000, 600, seed=5)))
    env = {**segments_env, "SEGMENTS_CLOCK": "event", "SEGMENTS_RULES": str(EXAMPLE_RULES)}
    reference = replay_reference(EXAMPLE_RULES, events, tmp_path / "replay", AS_OF)
    assert reference.summary["applied"] >= 20_000
    assert sum(1 for members in reference.memberships.values() for _ in members) >= 2_000
    assert any(change["cause"] == "time" for change in reference.changes)
    produce(env, events, AS_OF)
    segments = list(reference.memberships)
    published, dead = drain_with_one_worker(env, tmp_path, topics, segments)
    assert dead == [], "replay rejects nothing"
    assert_equals_replay(published, reference)
    assert memberships_from_changes(published.changes, segments) == reference.memberships
