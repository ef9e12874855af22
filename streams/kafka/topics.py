"""Creating the topics of SPEC section 6 with the right partitions and settings; waiting for one."""

from __future__ import annotations

import asyncio
import logging
import time

from aiokafka.errors import KafkaError

from streams.kafka.retry import Backoff, wait_or_stop
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


async def wait_for_topic(bootstrap: str, topic: str, stop: asyncio.Event) -> bool:
    """Waits until `topic` exists (the worker creates it); False when stopped first.

    A consumer subscribed to a missing topic waits in start() without end, deaf to stop.
    """
    from aiokafka.admin import AIOKafkaAdminClient

    backoff, logged = Backoff(0.2, 5.0), 0.0
    while not stop.is_set():
        admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
        try:
            await admin.start()
            if topic in set(await admin.list_topics()):
                return True
        except (KafkaError, OSError) as error:
            log.warning("kafka_unavailable waiting_for=%s error=%s", topic, error)
        finally:
            await admin.close()
        if time.monotonic() - logged > 30:
            log.info("waiting_for_topic topic=%s (the worker creates it)", topic)
            logged = time.monotonic()
        if await wait_or_stop(stop, backoff.next_delay()):
            break
    return False


async def ensure_topic(bootstrap: str, topic: str, partitions: int = 1) -> None:
    """Creates one topic when missing (brokers may not auto-create topics)."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        if topic in set(await admin.list_topics()):
            return
        response = await admin.create_topics([NewTopic(topic, partitions, 1)])
        for _name, code, *_rest in getattr(response, "topic_errors", []):
            if code not in (0, TopicAlreadyExistsError.errno):
                raise KafkaError(f"creating {topic} failed with error code {code}")
    finally:
        await admin.close()
