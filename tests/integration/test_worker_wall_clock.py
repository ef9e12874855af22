"""Wall-clock mode: a time-driven change is published within 1 s of its due instant."""

from __future__ import annotations

import urllib.request
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest
from kafka import KafkaProducer

from segments.clock import parse_instant
from tests.helpers import wait_until
from tests.integration.worker_harness import read_published, read_topic, running_workers

pytestmark = pytest.mark.slow

# Entering is event-driven; leaving is held back by min_dwell, so the exit is
# due exactly 5 s after the entry: a deadline a few seconds from now.
RULES = """\
version: 1
base_currency: EUR
segments:
  - name: small_buyer
    when: orders() >= 1
    min_dwell: 5s
"""


def test_time_driven_change_is_published_within_a_second_of_its_due_instant(
    segments_env: dict[str, str], topics: object, tmp_path: Path
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    env = {**segments_env, "SEGMENTS_CLOCK": "wall", "SEGMENTS_RULES": str(rules)}
    bootstrap = env["SEGMENTS_KAFKA_BOOTSTRAP"]
    now = datetime.now(UTC)

    def event(event_id: str, kind: str, at: datetime, **extra: str) -> bytes:
        return orjson.dumps(
            {
                "event_id": event_id,
                "customer_id": "c-wall",
                "occurred_at": at.isoformat().replace("+00:00", "Z"),
                "channel": "pos",
                "type": kind,
                "currency": "EUR",
                "total": "40.00",
                **extra,
            }
        )

    with running_workers(env, tmp_path) as (worker,):
        worker.wait_ready()
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
        producer.send(topics.purchases, key=b"c-wall", value=event("p-1", "purchase", now))
        producer.send(
            topics.purchases,
            key=b"c-wall",
            value=event("r-1", "return", now, original_event_id="p-1"),
        )
        # Ahead of the wall clock by more than max_future_skew (5 min): rejected.
        future = event("p-2", "purchase", now + timedelta(minutes=30))
        producer.send(topics.purchases, key=b"c-wall", value=future)
        producer.flush()
        producer.close()

        def two_changes() -> bool:
            return len(read_topic(bootstrap, topics.segment_changes)) >= 2

        wait_until(two_changes, 30, interval=0.2, what="entry and time-driven exit")
        records = read_topic(bootstrap, topics.segment_changes)
        published = read_published(bootstrap, topics, ["small_buyer"])
        dead = read_topic(bootstrap, topics.purchases_dlq)
        with urllib.request.urlopen(f"http://127.0.0.1:{worker.port}/metrics", timeout=5) as r:
            metrics = r.read().decode()
        assert worker.stop() == 0
    # the worker's own Prometheus metrics: what it applied, dead-lettered, and how late
    # it handled the deadline
    assert 'segments_worker_messages_total{agent="segments",outcome="applied"} 2.0' in metrics
    assert (
        'segments_worker_dead_letters_total{agent="segments",reason="too_far_ahead"} 1.0' in metrics
    )
    assert "segments_deadline_lateness_seconds_count 1.0" in metrics
    entered, exited = (orjson.loads(record.value or b"") for record in records[:2])
    assert (entered["change"], entered["cause"]) == ("entered", "purchase")
    assert (exited["change"], exited["cause"], exited["event_id"]) == ("exited", "time", None)
    due = parse_instant(exited["at"].replace("Z", "+00:00"))
    assert due == parse_instant(entered["at"].replace("Z", "+00:00")) + 5_000_000
    late_ms = records[1].timestamp - due // 1000
    assert 0 <= late_ms <= 1000, f"the time-driven exit was published {late_ms} ms after it was due"
    assert published.memberships == {"small_buyer": []}
    assert [dict(record.headers)["reason"] for record in dead] == [b"too_far_ahead"]
