"""Rule rollout with a real worker (SPEC section 3): a worker started on a new rule version
switches every stored customer at once, with no new event, and ends equal to replay of it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from segments.data import EXAMPLE_RULES
from tests.helpers import wait_until
from tests.integration.worker_harness import (
    WorkerProcess,
    drain_with_one_worker,
    produce,
    read_published,
    replay_reference,
    synthetic_events,
    write_jsonl,
)

pytestmark = pytest.mark.slow

AS_OF = "2026-09-01T00:00:00Z"


def write_v2(path: Path) -> Path:
    """Version 2 of the example rules: `runner` removed, `frequent` added."""
    text = EXAMPLE_RULES.read_text().replace("version: 1 ", "version: 2 ")
    removed = '  - name: runner\n    when: orders(category="Running Shoes", within="365d") >= 1\n'
    assert removed in text
    path.write_text(
        text.replace(removed, '  - name: frequent\n    when: orders(within="365d") >= 4\n')
    )
    return path


def test_a_worker_on_a_new_version_switches_every_customer_without_events(
    segments_env: dict[str, str], topics: object, tmp_path: Path
) -> None:
    events = write_jsonl(
        tmp_path / "events.jsonl", synthetic_events(customers=400, events=3_000, seed=31)
    )
    env = {
        **segments_env,
        "SEGMENTS_CLOCK": "event",
        "SEGMENTS_RULES": str(EXAMPLE_RULES),
        "SEGMENTS_PARTITIONS": "4",
    }
    v1 = replay_reference(EXAMPLE_RULES, events, tmp_path / "replay-v1", AS_OF)
    v2_rules = write_v2(tmp_path / "rules-v2.yaml")
    v2 = replay_reference(v2_rules, events, tmp_path / "replay-v2", AS_OF)
    assert v1.memberships["runner"], "the test needs members of the segment v2 removes"
    assert v2.memberships["frequent"], "and members of the segment it adds"
    produce(env, events, AS_OF)
    segments = sorted({*v1.memberships, *v2.memberships})
    published, _ = drain_with_one_worker(env, tmp_path, topics, segments)
    assert published.memberships == {**v1.memberships, "frequent": []}

    bootstrap = env["SEGMENTS_KAFKA_BOOTSTRAP"]
    expected = {**v2.memberships, "runner": []}
    runner = v1.memberships["runner"]

    def switched() -> Any:
        published = read_published(bootstrap, topics, segments)
        exits = [
            c["customer_id"]
            for c in published.changes
            if c["cause"] == "definition" and c["segment"] == "runner"
        ]
        return published.memberships == expected and sorted(exits) == runner and published

    worker = WorkerProcess({**env, "SEGMENTS_RULES": str(v2_rules)}, tmp_path / "v2.log").start()
    try:
        worker.wait_ready()
        published = wait_until(
            switched, 180, interval=0.5, what="memberships and exits of replay of version 2"
        )
        assert worker.stop() == 0
    finally:
        worker.kill()
    definition = [c for c in published.changes if c["cause"] == "definition"]
    assert all(c["rules_version"] == 2 and c["at"] == AS_OF for c in definition)
    entered = {c["customer_id"] for c in definition if c["segment"] == "frequent"}
    assert entered == set(v2.memberships["frequent"])
    assert "rules_rollout" in worker.log_text()
