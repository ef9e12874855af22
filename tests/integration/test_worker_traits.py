"""The worker publishes trait changes: through Kafka they equal `segments replay`'s traits.

Generated traffic, a rule set with both kinds of trait (cases that change with time
alone, reading segments, with a default; top_category over a window), one worker in
event-clock mode: `trait-changes` (deduped by change_id, each id with one content,
compared whole) equals replay's traits.jsonl, and the compacted `trait-values` (last
record per `customer_id|trait`) equals replay's traits.json. Then `segments serve`
reads what the worker published and the lookup answers each customer's traits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from segments.data import EXAMPLE_RULES
from segments.generate import generate_events
from tests.helpers import PrivateRedis, wait_until
from tests.integration.test_cache_rebuild import Serve
from tests.integration.worker_harness import (
    assert_equals_replay,
    drain_with_one_worker,
    produce,
    read_topic,
    replay_reference,
)

pytestmark = pytest.mark.slow

AS_OF = "2026-06-01T00:00:00Z"
TRAITS = """
traits:
  - name: lifecycle
    cases:
      - {value: at_risk, when: days_since_last_purchase() > 120 and orders() >= 2}
      - {value: loyal, when: in_segment("vip")}
      - {value: established, when: orders() >= 2}
      - {value: new, when: orders() >= 1}
    default: prospect
  - name: favourite_category
    top_category: {within: 90d}
"""


def test_trait_changes_through_kafka_equal_replay_and_the_lookup_returns_them(
    segments_env: dict[str, str], topics: Any, tmp_path: Path, private_redis: PrivateRedis
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(EXAMPLE_RULES.read_text() + TRAITS)
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"".join(line + b"\n" for line in generate_events(600, 400, seed=11)))
    env = {**segments_env, "SEGMENTS_CLOCK": "event", "SEGMENTS_RULES": str(rules)}
    reference = replay_reference(rules, events, tmp_path / "replay", AS_OF)
    out = tmp_path / "replay"
    expected = {
        change["change_id"]: change
        for change in map(orjson.loads, (out / "traits.jsonl").read_bytes().splitlines())
    }
    causes = {(c["trait"], c["cause"]) for c in expected.values()}
    assert {("lifecycle", "time"), ("favourite_category", "time")} <= causes
    produce(env, events, AS_OF)
    segments = list(reference.memberships)
    published, dead = drain_with_one_worker(env, tmp_path, topics, segments)
    assert dead == []
    assert_equals_replay(published, reference)  # the segments are as without traits

    by_id: dict[str, dict[str, Any]] = {}
    for record in read_topic(env["SEGMENTS_KAFKA_BOOTSTRAP"], topics.trait_changes):
        assert record.value is not None
        change = orjson.loads(record.value)
        assert record.key == change["customer_id"].encode()
        first = by_id.setdefault(change["change_id"], change)
        assert first == change, f"{change['change_id']} published with two contents"
    assert by_id == expected

    latest: dict[bytes, bytes] = {}
    for record in read_topic(env["SEGMENTS_KAFKA_BOOTSTRAP"], topics.trait_values):
        assert record.key is not None and record.value is not None  # never a tombstone
        latest[record.key] = record.value
    values: dict[str, dict[str, str]] = {"favourite_category": {}, "lifecycle": {}}
    for key in sorted(latest):
        customer_id, _, trait = key.decode().rpartition("|")
        value = orjson.loads(latest[key])["value"]
        if value is not None:
            values[trait][customer_id] = value
    assert values == orjson.loads((out / "traits.json").read_bytes())

    # the lookup: `segments serve` builds the cache from what the worker published
    customers = sorted({c for by in values.values() for c in by})
    sample = [*customers[:10], *customers[-10:], "nobody"]
    expected_lookup = {
        customer: {trait: by[customer] for trait, by in sorted(values.items()) if customer in by}
        for customer in sample
    }
    serve = Serve({**env, "SEGMENTS_REDIS_URL": private_redis.url}, tmp_path / "serve.log")
    try:

        def served() -> bool:
            for customer, traits in expected_lookup.items():
                status, _, body = serve.lookup(serve.lookup_port, customer)
                if status != 200 or body["traits"] != traits:
                    return False
            return True

        wait_until(served, 120, what="the worker's trait values served by the lookup")
    finally:
        serve.stop()
