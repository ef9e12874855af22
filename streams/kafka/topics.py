"""Topic names of SPEC section 6 and creating them with the right partitions and settings."""

from __future__ import annotations

import logging

from streams.settings import Topics

log = logging.getLogger(__name__)


def topic_configs(
    names: Topics, changes_retention_ms: int | None = None
) -> dict[str, dict[str, str]]:
    """Per-topic configuration: memberships compacted, ticks short-lived, changes retention."""
    changes: dict[str, str] = {}
    if changes_retention_ms is not None:
        changes["retention.ms"] = str(changes_retention_ms)
    return {
        names.purchases: {},
        names.purchases_pos: {},
        names.purchases_online: {},
        names.purchases_dlq: {},
        names.segment_changes: changes,
        names.segment_memberships: {"cleanup.policy": "compact"},
        # Ticks only say "look at the clock now"; an hour of them is plenty.
        names.ticks: {"retention.ms": str(3_600_000)},
    }


def ensure_topics(
    bootstrap: str,
    names: Topics,
    partitions: int,
    changes_retention_ms: int | None = None,
) -> list[str]:
    """Create the missing topics (all with `partitions` partitions); returns the created names.

    Everything keyed by customer id must have the same partition count so that
    a customer's events, ticks, state and changes share one partition number.
    """
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="segments-admin")
    try:
        existing = set(admin.list_topics())
        wanted = topic_configs(names, changes_retention_ms)
        new = [
            NewTopic(name, partitions, 1, topic_configs=config)
            for name, config in wanted.items()
            if name not in existing
        ]
        created = []
        for topic in new:
            try:
                admin.create_topics([topic])
                created.append(topic.name)
            except TopicAlreadyExistsError:
                pass
        if created:
            log.info("topics_created names=%s partitions=%d", ",".join(created), partitions)
        return created
    finally:
        admin.close()
