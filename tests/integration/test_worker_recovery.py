"""(c) SIGKILL mid-stream and (b) a rebalance mid-stream: the end result still equals replay.

Delivery is at-least-once, so a change may be published twice; the copies
must be identical (read_published checks) and, deduped by change_id, equal
replay's changes; the memberships topic must equal replay's memberships.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from segments.data import EXAMPLE_RULES
from tests.helpers import wait_until
from tests.integration.worker_harness import (
    WorkerProcess,
    assert_equals_replay,
    committed_offsets,
    end_offsets,
    produce,
    read_published,
    read_topic,
    replay_reference,
    synthetic_events,
    wait_drained,
    write_jsonl,
)

pytestmark = pytest.mark.slow

AS_OF = "2026-09-01T00:00:00Z"


def _progress(bootstrap: str, group: str, topic: str) -> float:
    ends = end_offsets(bootstrap, topic)
    committed = committed_offsets(bootstrap, group, topic)
    return sum(max(committed.get(p, 0), 0) for p in ends) / max(1, sum(ends.values()))


def _setup(segments_env: dict[str, str], tmp_path: Path, events: int, customers: int) -> tuple:
    path = write_jsonl(
        tmp_path / "events.jsonl", synthetic_events(customers=customers, events=events, seed=23)
    )
    env = {
        **segments_env,
        "SEGMENTS_CLOCK": "event",
        "SEGMENTS_RULES": str(EXAMPLE_RULES),
        "SEGMENTS_PARTITIONS": "4",
    }
    reference = replay_reference(EXAMPLE_RULES, path, tmp_path / "replay", AS_OF)
    return path, env, reference


def test_sigkill_mid_stream_then_restart_equals_replay(
    segments_env: dict[str, str], topics: object, tmp_path: Path
) -> None:
    events, env, reference = _setup(segments_env, tmp_path, events=8_000, customers=800)
    bootstrap, group = env["SEGMENTS_KAFKA_BOOTSTRAP"], env["SEGMENTS_APP_ID"]
    produce(env, events, AS_OF)
    first = WorkerProcess(env, tmp_path / "worker-first.log").start()
    second = WorkerProcess(env, tmp_path / "worker-second.log")  # same data dir
    try:
        first.wait_ready()
        wait_until(lambda: _progress(bootstrap, group, topics.purchases) >= 0.3, 120, interval=0.1)
        first.kill()
        assert _progress(bootstrap, group, topics.purchases) < 1.0, "killed too late"
        second.start()
        second.wait_ready(90)
        wait_drained(bootstrap, group, topics.purchases, timeout=300, workers=(second,))
        published = read_published(bootstrap, topics, list(reference.memberships))
        assert second.stop() == 0
    finally:
        first.kill()
        second.kill()
    assert "unclean_stop_detected" in second.log_text()
    assert read_topic(bootstrap, topics.purchases_dlq) == [], "nothing is rejected by replay"
    assert_equals_replay(published, reference, ordered=False)


def test_second_worker_joins_mid_stream_equals_replay(
    segments_env: dict[str, str], topics: object, tmp_path: Path
) -> None:
    events, env, reference = _setup(segments_env, tmp_path, events=12_000, customers=1_200)
    bootstrap, group = env["SEGMENTS_KAFKA_BOOTSTRAP"], env["SEGMENTS_APP_ID"]
    produce(env, events, AS_OF)
    first = WorkerProcess(env, tmp_path / "worker-first.log").start()
    other = {**env, "SEGMENTS_DATA_DIR": str(tmp_path / "second-data")}
    second = WorkerProcess(other, tmp_path / "worker-second.log")
    try:
        first.wait_ready()
        wait_until(lambda: _progress(bootstrap, group, topics.purchases) >= 0.3, 120, interval=0.1)
        second.start()
        wait_drained(bootstrap, group, topics.purchases, timeout=300, workers=(first, second))
        published = read_published(bootstrap, topics, list(reference.memberships))
        assert "partition_opened" in second.log_text(), "the second worker never got a partition"
        assert first.stop() == 0
        assert second.stop() == 0
    finally:
        first.kill()
        second.kill()
    assert read_topic(bootstrap, topics.purchases_dlq) == [], "nothing is rejected by replay"
    assert_equals_replay(published, reference, ordered=False)
