"""Traits end to end: trait-changes on Kafka -> `segments serve` -> lookup on both ports and
the CLI; a Redis restarted empty and `segments resync-cache` restore them from trait-values.

Real processes against real Kafka and a private redis-server; the trait changes are the
ones the worker publishes (one JSON object per change, key = customer id; the compacted
trait-values topic keyed `customer_id|trait`).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from kafka import KafkaProducer

from tests.helpers import PrivateRedis, wait_until
from tests.integration.test_cache_rebuild import Serve, change, get

pytestmark = pytest.mark.integration


def trait_change(customer: str, trait: str, seq: int, value: str | None) -> dict:
    return {
        "change_id": f"{customer}:trait:{trait}:{seq}",
        "customer_id": customer,
        "trait": trait,
        "value": value,
        "at": f"2026-11-20T15:{seq % 60:02d}:00Z",
        "cause": "purchase",
        "event_id": None,
        "rules_version": 1,
        "seq": seq,
        "metrics": {},
    }


class Publisher:
    """Publishes what the worker would: changes and the compacted current values."""

    def __init__(self, bootstrap: str, topics) -> None:
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
        self.topics = topics

    def segment(self, customer: str, segment: str, seq: int) -> None:
        item = change(customer, segment, seq)
        self.producer.send(self.topics.segment_changes, orjson.dumps(item), key=customer.encode())
        value = orjson.dumps({**item, "since": item["at"]}) if seq % 2 else None
        key = f"{customer}|{segment}".encode()
        self.producer.send(self.topics.segment_memberships, value, key=key)

    def trait(self, customer: str, trait: str, seq: int, value: str | None, last=True) -> None:
        """A trait change; `last=False` for one older than what trait-values already holds."""
        item = orjson.dumps(trait_change(customer, trait, seq, value))
        self.producer.send(self.topics.trait_changes, item, key=customer.encode())
        if last:
            key = f"{customer}|{trait}".encode()
            self.producer.send(self.topics.trait_values, item, key=key)

    def flush(self) -> None:
        self.producer.flush()


@pytest.fixture
def publisher(kafka_bootstrap: str, topics) -> Iterator[Publisher]:
    built = Publisher(kafka_bootstrap, topics)
    yield built
    built.producer.close()


@pytest.fixture
def all_topics(create_topics, topics) -> None:
    """The topics as the worker creates them: changes plain, current values compacted."""
    compact = {"cleanup.policy": "compact"}
    create_topics(topics.segment_changes, partitions=2)
    create_topics(topics.segment_memberships, partitions=2, config=compact)
    create_topics(topics.trait_changes, partitions=2)
    create_topics(topics.trait_values, partitions=2, config=compact)


@pytest.fixture
def serve_env(segments_env: dict[str, str], private_redis: PrivateRedis) -> dict[str, str]:
    return {**segments_env, "SEGMENTS_REDIS_URL": private_redis.url}


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "streams", *args],
        env={**{k: v for k, v in os.environ.items() if not k.startswith("SEGMENTS_")}, **env},
        capture_output=True,
        timeout=120,
        check=False,
    )


def history(publish: Publisher) -> dict[str, dict]:
    """Segments and traits of three customers, with a stale and a cleared trait; returns
    what each lookup must answer ({"segments": names, "traits": {...}})."""
    publish.segment("c-1", "vip", 1)
    publish.trait("c-1", "lifecycle", 1, "new", last=False)
    publish.trait("c-1", "lifecycle", 2, "loyal")
    publish.trait("c-1", "lifecycle", 1, "new", last=False)  # a late repeat: ignored
    publish.trait("c-1", "top_category", 1, "shoes", last=False)
    publish.trait("c-1", "top_category", 2, None)  # cleared: no value now
    publish.trait("c-2", "lifecycle", 1, "lapsed")  # a trait, no segment
    publish.segment("c-3", "runner", 1)  # a segment, no trait
    publish.flush()
    return {
        "c-1": {"segments": ["vip"], "traits": {"lifecycle": "loyal"}},
        "c-2": {"segments": [], "traits": {"lifecycle": "lapsed"}},
        "c-3": {"segments": ["runner"], "traits": {}},
        "nobody": {"segments": [], "traits": {}},
    }


def answers(serve: Serve, expected: dict[str, dict]) -> bool:
    for port in serve.ports:
        for customer, want in expected.items():
            status, _, body = serve.lookup(port, customer)
            if status != 200:
                return False
            got = {"segments": [s["name"] for s in body["segments"]], "traits": body["traits"]}
            if got != want or list(body) != ["customer_id", "segments", "traits", "as_of"]:
                return False
    return True


@pytest.mark.slow
def test_traits_are_served_restored_after_a_lost_cache_and_by_resync(
    all_topics, publisher: Publisher, serve_env: dict[str, str], private_redis: PrivateRedis,
    tmp_path: Path,
) -> None:  # fmt: skip
    expected = history(publisher)
    serve = Serve(serve_env, tmp_path / "serve.log")
    try:
        wait_until(lambda: answers(serve, expected), 60, what="segments and traits served")
        # Sizes and member pages count segment members only.
        status, _, body = get(serve.port, "/segments")
        sizes = {s["name"]: s["size"] for s in orjson.loads(body)["segments"]}
        assert status == 200 and sizes["vip"] == 1 and sizes["runner"] == 1
        status, _, body = get(serve.port, "/segments/vip/members")
        assert status == 200 and orjson.loads(body)["members"] == ["c-1"]
        result = cli(serve_env, "lookup", "c-1")
        assert result.returncode == 0, result.stderr
        assert orjson.loads(result.stdout)["traits"] == {"lifecycle": "loyal"}

        publisher.trait("c-1", "lifecycle", 3, "lapsing")  # a change while serving
        publisher.flush()
        expected["c-1"]["traits"] = {"lifecycle": "lapsing"}
        wait_until(lambda: answers(serve, expected), 60, what="the new trait value")

        # Redis restarted empty while idle: the sink rebuilds memberships and traits.
        private_redis.stop(save=False)
        private_redis.start()
        wait_until(lambda: answers(serve, expected), 60, what="traits back after the rebuild")
        log = (tmp_path / "serve.log").read_text()
        # Two rebuilds: the new cache at start, and the empty Redis; both read trait-values.
        assert log.count("cache_sink_resynced") == 2, log[-2000:]
        assert log.count("traits=3") == 2, log[-2000:]
    finally:
        serve.stop()

    # Flushed with nothing running: resync-cache alone restores them from trait-values.
    private_redis.stop(save=False)
    private_redis.start()
    result = cli(serve_env, "resync-cache")
    assert result.returncode == 0, result.stderr
    assert b"3 trait values, wrote 3" in result.stdout, result.stdout
    for customer, want in expected.items():
        result = cli(serve_env, "lookup", customer)
        assert result.returncode == 0, result.stderr
        document = orjson.loads(result.stdout)
        assert [s["name"] for s in document["segments"]] == want["segments"]
        assert document["traits"] == want["traits"]


@pytest.mark.slow
def test_a_deployment_without_trait_topics_serves_segments_and_picks_traits_up_later(
    create_topics, topics, publisher: Publisher, serve_env: dict[str, str], tmp_path: Path
) -> None:
    """An older worker publishes no traits: resync-cache skips trait-values with a line,
    serve answers segments with "traits": {}, and once trait-changes exists (a newer
    worker) its changes reach the lookup without a restart."""
    create_topics(topics.segment_changes, partitions=2)
    create_topics(topics.segment_memberships, partitions=2, config={"cleanup.policy": "compact"})
    publisher.segment("c-1", "vip", 1)
    publisher.flush()
    result = cli(serve_env, "resync-cache")
    assert result.returncode == 0, result.stderr
    assert b"no trait-values topic, no traits" in result.stdout, result.stdout
    assert b"resync_traits_skipped" in result.stderr, result.stderr

    serve = Serve(serve_env, tmp_path / "serve.log")
    try:
        expected = {"c-1": {"segments": ["vip"], "traits": {}}}
        wait_until(lambda: answers(serve, expected), 60, what="segments without traits")
        create_topics(topics.trait_changes, partitions=2)
        create_topics(topics.trait_values, partitions=2, config={"cleanup.policy": "compact"})
        publisher.trait("c-1", "lifecycle", 1, "new")
        publisher.flush()
        expected["c-1"]["traits"] = {"lifecycle": "new"}
        # The subscription is a pattern; new topics are seen at the next metadata refresh.
        wait_until(lambda: answers(serve, expected), 120, what="the new topic's traits")
    finally:
        serve.stop()
