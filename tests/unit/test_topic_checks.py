"""Which existing topics the worker and `segments produce` refuse, and the min.insync.replicas
of the topics they create (issue 12 item 2)."""

from __future__ import annotations

import pytest

from streams.kafka.topics import (
    TopicsError,
    min_insync_replicas,
    topic_problems,
    topics_error_text,
)
from streams.settings import Topics

pytestmark = pytest.mark.unit

NAMES = Topics("p.")
RIGHT_POLICIES = {
    "p.purchases": "delete",
    "p.segment-changes": "delete",
    "p.segment-memberships": "compact",
}


def test_topics_that_fit_have_no_problems() -> None:
    counts = {"p.purchases": 8, "p.segment-memberships": 8, "app-customers-changelog": 8}
    assert topic_problems(NAMES, 8, counts, RIGHT_POLICIES, "app-customers-changelog") == []


def test_missing_topics_are_no_problem() -> None:
    assert topic_problems(NAMES, 8, {}, {}, "app-customers-changelog") == []


def test_another_partition_count_names_the_topic_and_the_setting() -> None:
    counts = {"p.purchases": 8, "p.ticks": 4, "app-customers-changelog": 6}
    problems = topic_problems(NAMES, 8, counts, {}, "app-customers-changelog")
    assert len(problems) == 2
    assert problems[0].startswith("topic p.ticks has 4 partitions but SEGMENTS_PARTITIONS is 8")
    assert "app-customers-changelog has 6 partitions" in problems[1]


def test_the_dead_letter_topic_may_have_any_partition_count() -> None:
    assert topic_problems(NAMES, 8, {"p.purchases.dlq": 1}, {}) == []


def test_memberships_must_be_compacted() -> None:
    policies = {**RIGHT_POLICIES, "p.segment-memberships": "delete"}
    (problem,) = topic_problems(NAMES, 8, {}, policies)
    assert "p.segment-memberships has cleanup.policy=delete but must be compacted" in problem


@pytest.mark.parametrize("policy", ["compact", "compact,delete", "delete, compact"])
def test_events_and_changes_must_not_be_compacted(policy: str) -> None:
    policies = {**RIGHT_POLICIES, "p.segment-changes": policy}
    (problem,) = topic_problems(NAMES, 8, {}, policies)
    assert f"p.segment-changes has cleanup.policy={policy} but must not be compacted" in problem


def test_memberships_compacted_and_deleted_are_accepted() -> None:
    policies = {**RIGHT_POLICIES, "p.segment-memberships": "compact,delete"}
    assert topic_problems(NAMES, 8, {}, policies) == []


def test_min_insync_replicas_above_the_replicas_refuses_every_write() -> None:
    replicas = {"p.purchases": 3, "app-customers-changelog": 1, "p.segment-changes": 3}
    min_insync = {"p.purchases": 2, "app-customers-changelog": 2, "p.segment-changes": 3}
    (problem,) = topic_problems(NAMES, 8, {}, {}, "app-customers-changelog", replicas, min_insync)
    assert problem.startswith(
        "topic app-customers-changelog has min.insync.replicas=2 but only 1 replica:"
    )
    assert "NotEnoughReplicas" in problem and "to 1 or less" in problem


@pytest.mark.parametrize(
    ("replication_factor", "broker_default", "expected"),
    [
        (1, 1, 1),  # one broker: the only value that lets writes through
        (1, 2, 1),  # one replica asked for on a stricter cluster: still writable
        (2, 1, 2),
        (3, 1, 2),  # Kafka's default of 1 raised: an acknowledged write is on two brokers
        (3, 2, 2),
        (3, 3, 3),  # a stricter cluster stays strict
        (5, 4, 4),
        (2, 3, 2),  # never above the replicas
    ],
)
def test_created_topics_need_two_replicas_in_sync_when_they_have_two(
    replication_factor: int, broker_default: int, expected: int
) -> None:
    assert min_insync_replicas(replication_factor, broker_default) == expected


def test_the_error_text_lists_every_problem() -> None:
    text = topics_error_text(TopicsError(["first", "second"]))
    assert text.splitlines() == [
        "the Kafka topics do not fit the settings; nothing was written:",
        "  first",
        "  second",
    ]
