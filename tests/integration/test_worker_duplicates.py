"""(e) An event id delivered more than once counts once, like replay's dedupe."""

from __future__ import annotations

from pathlib import Path

import pytest

from segments.data import EXAMPLE_RULES
from tests.helpers import wait_until
from tests.integration.worker_harness import (
    assert_equals_replay,
    produce,
    read_published,
    replay_reference,
    running_workers,
    synthetic_events,
    wait_drained,
    write_jsonl,
)

pytestmark = pytest.mark.slow

AS_OF = "2026-09-01T00:00:00Z"


def test_duplicate_event_ids_count_once(
    segments_env: dict[str, str], topics: object, tmp_path: Path
) -> None:
    originals = synthetic_events(customers=200, events=2_000, seed=17)
    # The same purchase again (a retrying producer), some of them with another
    # channel, as if the same order came through POS and online.
    duplicates = [
        {**event, "channel": "online" if index % 2 else event["channel"]}
        for index, event in enumerate(originals[::10])
        if event["type"] == "purchase"
    ]
    events = write_jsonl(tmp_path / "events.jsonl", originals + duplicates)
    env = {**segments_env, "SEGMENTS_CLOCK": "event", "SEGMENTS_RULES": str(EXAMPLE_RULES)}
    reference = replay_reference(EXAMPLE_RULES, events, tmp_path / "replay", AS_OF)
    assert reference.summary["duplicates"] == len(duplicates)
    produce(env, events, AS_OF)
    with running_workers(env, tmp_path) as (worker,):
        worker.wait_ready()
        wait_drained(env["SEGMENTS_KAFKA_BOOTSTRAP"], env["SEGMENTS_APP_ID"], topics.purchases)
        published = read_published(
            env["SEGMENTS_KAFKA_BOOTSTRAP"], topics, list(reference.memberships)
        )
        # The worker logs its counters every few seconds.
        wait_until(lambda: f" duplicates={len(duplicates)} " in worker.log_text(), 30)
        assert worker.stop() == 0
    assert_equals_replay(published, reference)
