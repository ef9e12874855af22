"""(d) Invalid events land in `purchases.dlq` with their bytes and why; the rest equals replay."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import orjson
import pytest

from segments.data import EXAMPLE_RULES
from tests.integration.worker_harness import (
    assert_equals_replay,
    drain_with_one_worker,
    produce,
    replay_reference,
    synthetic_events,
    write_jsonl,
)

pytestmark = pytest.mark.slow

AS_OF = "2026-09-01T00:00:00Z"

INVALID = [
    b'{"event_id": "bad-1", "customer_id": "c-00001", "occurred_at": "2025-03-01T10:00:00Z"',
    b"\xff\xfe not utf-8",
    b'{"event_id": "bad-2", "customer_id": "c-00002", "occurred_at": "2025-03-01T10:00:00Z",'
    b' "channel": "pos", "currency": "EUR", "total": "-5.00"}',
    b'{"event_id": "bad-3", "customer_id": "c-00003", "occurred_at": "2025-03-01T10:00:00Z",'
    b' "channel": "pos", "currency": "XXX", "total": "5.00"}',
    b'{"event_id": "bad-4", "customer_id": "c-00004", "occurred_at": "2025-03-01T10:00:00",'
    b' "channel": "pos", "currency": "EUR", "total": "5.00"}',
    b'{"event_id": "bad-5", "customer_id": "c-00005", "channel": "pos", "currency": "EUR",'
    b' "total": "5.00", "occurred_at": "2025-03-01T10:00:00Z", "total": NaN}',
    b"[1, 2, 3]",
    b'{"event_id": "bad-6", "customer_id": "c-00006", "occurred_at": "2025-03-01T10:00:00Z",'
    b' "channel": "fax", "currency": "EUR", "total": "5.00"}',
]


def test_invalid_events_are_dead_lettered_and_the_rest_equals_replay(
    segments_env: dict[str, str], topics: object, tmp_path: Path
) -> None:
    events = write_jsonl(
        tmp_path / "events.jsonl",
        synthetic_events(customers=300, events=3_000, seed=11),
        raw_lines=INVALID,
    )
    env = {**segments_env, "SEGMENTS_CLOCK": "event", "SEGMENTS_RULES": str(EXAMPLE_RULES)}
    reference = replay_reference(EXAMPLE_RULES, events, tmp_path / "replay", AS_OF)
    rejected = [orjson.loads(line) for line in (tmp_path / "replay" / "rejected.jsonl").open("rb")]
    assert len(rejected) == len(INVALID)
    produce(env, events, AS_OF)
    published, dead = drain_with_one_worker(env, tmp_path, topics, list(reference.memberships))
    assert_equals_replay(published, reference)
    assert sorted(record.value for record in dead) == sorted(INVALID)
    reasons = Counter(dict(record.headers)["reason"].decode() for record in dead)
    assert reasons == Counter(entry["reason"] for entry in rejected)
    for record in dead:
        headers = dict(record.headers)
        assert headers["source_topic"] == topics.purchases.encode()
        assert int(headers["source_partition"]) in (0, 1)
        assert int(headers["source_offset"]) >= 0
        assert headers["message"]


def test_dirty_generated_traffic_equals_replay(
    segments_env: dict[str, str], topics: object, tmp_path: Path
) -> None:
    """`segments generate --dirty`: duplicates, held-back events and malformed records."""
    from segments.generate import GenerationReport, generate_events

    report = GenerationReport()
    lines = list(generate_events(800, 365, seed=13, dirty=True, report=report))
    assert report.duplicates and report.malformed
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"".join(line + b"\n" for line in lines))
    env = {**segments_env, "SEGMENTS_CLOCK": "event", "SEGMENTS_RULES": str(EXAMPLE_RULES)}
    reference = replay_reference(EXAMPLE_RULES, events, tmp_path / "replay", "2026-03-01T00:00:00Z")
    produce(env, events, "2026-03-01T00:00:00Z")
    published, dead = drain_with_one_worker(env, tmp_path, topics, list(reference.memberships))
    assert_equals_replay(published, reference)
    reasons = Counter(dict(record.headers)["reason"].decode() for record in dead)
    assert reasons == Counter(reference.summary["rejected_by_reason"])
