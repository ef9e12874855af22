"""Topics at start (issue 12 item 2): existing topics that disagree with the settings
stop the worker and `segments produce` with a clear error before anything is created or
written; new topics get SEGMENTS_REPLICATION_FACTOR replicas, or the broker's default, and a
min.insync.replicas that lets writes through (tests/unit/test_topic_checks.py)."""

from __future__ import annotations

import pytest
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType

from streams.settings import Topics
from tests.integration.conftest import CreateTopics
from tests.integration.worker_harness import REPO_ROOT, end_offsets, segments_result

pytestmark = pytest.mark.integration

EVENTS = REPO_ROOT / "tests" / "conformance" / "a-vip-by-3-orders-in-182d-exit-when-the"


def _topics_under(admin: KafkaAdminClient, prefix: str) -> set[str]:
    return {name for name in admin.list_topics() if name.startswith(prefix)}


def _min_insync(admin: KafkaAdminClient, names: list[str]) -> dict[str, str]:
    resources = [
        ConfigResource(ConfigResourceType.TOPIC, name, configs={"min.insync.replicas": None})
        for name in names
    ]
    return {
        name: str(entries[0][1])
        for response in admin.describe_configs(resources)
        for _error, _message, _type, name, entries in response.resources
    }


def test_a_topic_with_other_partitions_stops_the_worker_before_anything_is_created(
    segments_env: dict[str, str],
    create_topics: CreateTopics,
    topics: Topics,
    kafka_admin: KafkaAdminClient,
    topic_prefix: str,
) -> None:
    assert segments_env["SEGMENTS_PARTITIONS"] == "2"
    create_topics(topics.ticks, partitions=3)

    result = segments_result(segments_env, "worker")

    assert result.returncode == 1, result.stdout + result.stderr
    assert f"topic {topics.ticks} has 3 partitions but SEGMENTS_PARTITIONS is 2" in result.stderr
    assert "nothing was written" in result.stderr
    assert "Traceback" not in result.stderr
    assert _topics_under(kafka_admin, topic_prefix) == {topics.ticks}


def test_memberships_that_are_not_compacted_stop_produce_before_anything_is_written(
    segments_env: dict[str, str],
    create_topics: CreateTopics,
    topics: Topics,
    kafka_admin: KafkaAdminClient,
    topic_prefix: str,
    kafka_bootstrap: str,
) -> None:
    create_topics(topics.purchases, partitions=2)
    create_topics(topics.segment_memberships, partitions=2, config={"cleanup.policy": "delete"})

    result = segments_result(segments_env, "produce", "--input", str(EVENTS / "events.jsonl"))

    assert result.returncode == 1, result.stdout + result.stderr
    assert (
        f"topic {topics.segment_memberships} has cleanup.policy=delete but must be compacted"
        in result.stderr
    )
    assert _topics_under(kafka_admin, topic_prefix) == {
        topics.purchases,
        topics.segment_memberships,
    }
    assert sum(end_offsets(kafka_bootstrap, topics.purchases).values()) == 0


def test_new_topics_get_the_brokers_default_replication_factor_or_the_setting(
    segments_env: dict[str, str],
    topics: Topics,
    kafka_admin: KafkaAdminClient,
    topic_prefix: str,
) -> None:
    # One broker here: a factor of 2 cannot be met, and the command says so.
    refused = segments_result(
        {**segments_env, "SEGMENTS_REPLICATION_FACTOR": "2"},
        "produce",
        "--input",
        str(EVENTS / "events.jsonl"),
    )
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "replication factor 2: InvalidReplicationFactorError" in refused.stderr
    assert _topics_under(kafka_admin, topic_prefix) == set()

    produced = segments_result(segments_env, "produce", "--input", str(EVENTS / "events.jsonl"))
    assert produced.returncode == 0, produced.stdout + produced.stderr
    described = kafka_admin.describe_topics(sorted(_topics_under(kafka_admin, topic_prefix)))
    assert {d["topic"] for d in described} >= {topics.purchases, topics.segment_memberships}
    # The local broker's default.replication.factor is 1 (deploy/local/kafka.sh), and one
    # replica can only ask for itself in sync.
    assert {len(p["replicas"]) for d in described for p in d["partitions"]} == {1}
    assert set(_min_insync(kafka_admin, [d["topic"] for d in described]).values()) == {"1"}
    assert {len(d["partitions"]) for d in described} == {2}


def test_a_topic_that_refuses_every_write_stops_produce_before_anything_is_written(
    segments_env: dict[str, str],
    create_topics: CreateTopics,
    topics: Topics,
    kafka_admin: KafkaAdminClient,
    topic_prefix: str,
    kafka_bootstrap: str,
) -> None:
    # One replica that must be joined by a second in-sync one: no acks=all write can pass.
    create_topics(topics.purchases, partitions=2, config={"min.insync.replicas": "2"})

    result = segments_result(segments_env, "produce", "--input", str(EVENTS / "events.jsonl"))

    assert result.returncode == 1, result.stdout + result.stderr
    assert f"topic {topics.purchases} has min.insync.replicas=2 but only 1 replica" in result.stderr
    assert "nothing was written" in result.stderr
    assert _topics_under(kafka_admin, topic_prefix) == {topics.purchases}
    assert sum(end_offsets(kafka_bootstrap, topics.purchases).values()) == 0
