"""Creating the topics of SPEC section 6 with the right partitions and settings; waiting for one."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka.errors import KafkaError

from streams.kafka.connection import KafkaConnection
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
        names.trait_changes: changes,
        names.trait_values: {"cleanup.policy": "compact"},
        # Ticks only say "look at the clock now"; an hour of them is plenty.
        names.ticks: {"retention.ms": str(3_600_000)},
    }


class TopicsError(RuntimeError):
    """The topics cannot be used as configured; `problems` holds one line each.

    Raised before anything is created or written."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def topics_error_text(error: TopicsError) -> str:
    """The message a command exits with: every problem on its own line."""
    return "the Kafka topics do not fit the settings; nothing was written:\n  " + "\n  ".join(
        error.problems
    )


@dataclass(frozen=True)
class TopicsReady:
    created: list[str]
    replication_factor: int
    min_insync_replicas: int  # set on the topics created; Faust's changelog needs it too


def min_insync_replicas(replication_factor: int, broker_default: int) -> int:
    """min.insync.replicas of a topic the product creates (SPEC section 7, docs/deploy.md).

    With acks=all a write is acknowledged once this many replicas have it. At least 2
    when there are 2 or more replicas (an acknowledged write survives the loss of one
    broker), never below the broker's own default (a stricter cluster stays strict), and
    never above the replication factor (writes would be impossible)."""
    return min(replication_factor, max(2, broker_default))


def keyed_by_customer(names: Topics) -> list[str]:
    """The topics whose partition p must hold the same customers (SPEC section 6)."""
    return [
        names.purchases,
        names.purchases_pos,
        names.purchases_online,
        names.ticks,
        names.segment_changes,
        names.segment_memberships,
        names.trait_changes,
        names.trait_values,
    ]


def topic_problems(
    names: Topics,
    partitions: int,
    found_partitions: dict[str, int],
    cleanup_policies: dict[str, str],
    changelog: str | None = None,
    replicas: Mapping[str, int] | None = None,
    min_insync: Mapping[str, int] | None = None,
) -> list[str]:
    """What is wrong with the existing topics (pure; the arguments are what the broker said).

    Every topic keyed by customer, and the worker's changelog, must have `partitions`
    partitions; segment-memberships and trait-values must be compacted and no other topic may be (a
    compacted event or change log keeps only the last record per customer). A topic
    whose min.insync.replicas exceeds its replicas (`replicas`, `min_insync`: by topic)
    refuses every acks=all write, which is every write of the product."""
    problems = []
    for topic in [*keyed_by_customer(names), *([changelog] if changelog else [])]:
        count = found_partitions.get(topic)
        if count is not None and count != partitions:
            problems.append(
                f"topic {topic} has {count} partitions but SEGMENTS_PARTITIONS is {partitions}:"
                " every topic keyed by customer needs the same count (set SEGMENTS_PARTITIONS"
                f" to {count}, or use new topics)"
            )
    must_compact = (names.segment_memberships, names.trait_values)
    for topic, policy in sorted(cleanup_policies.items()):
        compacted = "compact" in policy.replace(" ", "").split(",")
        if topic in must_compact and not compacted:
            problems.append(
                f"topic {topic} has cleanup.policy={policy} but must be compacted"
                " (cleanup.policy=compact): it holds the current membership per key"
            )
        elif topic not in must_compact and compacted:
            problems.append(
                f"topic {topic} has cleanup.policy={policy} but must not be compacted:"
                " compaction would keep only the last record per customer"
            )
    for topic, required in sorted((min_insync or {}).items()):
        count = (replicas or {}).get(topic)
        if count is not None and required > count:
            problems.append(
                f"topic {topic} has min.insync.replicas={required} but only {count}"
                f" replica{'s' if count > 1 else ''}: every write (acks=all) would fail with"
                f" NotEnoughReplicas; lower the topic's min.insync.replicas to {count} or less"
            )
    return problems


def ensure_topics(
    kafka: KafkaConnection,
    names: Topics,
    partitions: int,
    changes_retention_ms: int | None = None,
    replication_factor: int | None = None,
    changelog: str | None = None,
) -> TopicsReady:
    """Check the existing topics, then create the missing ones (`partitions` partitions,
    `replication_factor` replicas or the broker's default.replication.factor).

    Everything keyed by customer id must have the same partition count so that
    a customer's events, ticks, state and changes share one partition number.
    Raises TopicsError, having created nothing, when an existing topic disagrees
    (`topic_problems`) or a topic cannot be created as configured.
    """
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    admin = KafkaAdminClient(**kafka.kafka_python_args(client_id="segments-admin"))
    try:
        existing = set(admin.list_topics())
        wanted = topic_configs(names, changes_retention_ms)
        candidates = [*wanted, *([changelog] if changelog else [])]
        present = [name for name in candidates if name in existing]
        described = _described_topics(admin, present)
        configs = _topic_config_values(admin, present)
        problems = topic_problems(
            names,
            partitions,
            {topic: len(found) for topic, found in described.items()},
            {
                topic: found["cleanup.policy"]
                for topic, found in configs.items()
                if topic in wanted and "cleanup.policy" in found
            },
            changelog,
            {topic: min(map(len, found.values()), default=0) for topic, found in described.items()},
            {
                topic: int(found["min.insync.replicas"])
                for topic, found in configs.items()
                if "min.insync.replicas" in found
            },
        )
        if problems:
            raise TopicsError(problems)
        defaults = _broker_defaults(admin, replication_factor)
        factor = replication_factor or defaults.replication_factor
        min_insync = min_insync_replicas(factor, defaults.min_insync_replicas)
        created = []
        for name, config in wanted.items():
            if name in existing:
                continue
            config = {**config, "min.insync.replicas": str(min_insync)}
            try:
                admin.create_topics([NewTopic(name, partitions, factor, topic_configs=config)])
                created.append(name)
            except TopicAlreadyExistsError:
                pass
            except KafkaError as error:
                raise TopicsError(
                    [
                        f"cannot create topic {name} with {partitions} partitions and"
                        f" replication factor {factor}: {type(error).__name__}"
                        f" ({getattr(error, 'description', '') or error})"
                    ]
                ) from None
        if created:
            log.info(
                "topics_created names=%s partitions=%d replication_factor=%d"
                " min_insync_replicas=%d",
                ",".join(created),
                partitions,
                factor,
                min_insync,
            )
        return TopicsReady(created, factor, min_insync)
    finally:
        admin.close()


@dataclass(frozen=True)
class BrokerDefaults:
    """What a topic created without these settings gets from the broker."""

    replication_factor: int
    min_insync_replicas: int


def broker_defaults(
    kafka: KafkaConnection, replication_factor: int | None = None
) -> BrokerDefaults:
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(**kafka.kafka_python_args(client_id="segments-admin"))
    try:
        return _broker_defaults(admin, replication_factor)
    finally:
        admin.close()


def _described_topics(admin: Any, topics: list[str]) -> dict[str, dict[int, list[int]]]:
    """Topic -> partition -> the broker ids of its replicas."""
    if not topics:
        return {}
    return {
        described["topic"]: {p["partition"]: list(p["replicas"]) for p in described["partitions"]}
        for described in admin.describe_topics(topics)
        if described["error_code"] == 0
    }


def _topic_config_values(admin: Any, topics: list[str]) -> dict[str, dict[str, str]]:
    """Topic -> its cleanup.policy and min.insync.replicas, as the broker reports them."""
    from kafka.admin import ConfigResource, ConfigResourceType

    if not topics:
        return {}
    wanted = {"cleanup.policy": None, "min.insync.replicas": None}
    resources = [
        ConfigResource(ConfigResourceType.TOPIC, topic, configs=dict(wanted)) for topic in topics
    ]
    values: dict[str, dict[str, str]] = {}
    for response in admin.describe_configs(resources):
        for _error, _message, _type, name, entries in response.resources:
            for entry in entries:
                if entry[0] in wanted and entry[1] is not None:
                    values.setdefault(name, {})[entry[0]] = str(entry[1])
    return values


def _broker_defaults(admin: Any, replication_factor: int | None = None) -> BrokerDefaults:
    """The broker's default.replication.factor and min.insync.replicas.

    With `replication_factor` set, a broker that does not let us read its configuration
    (an ACL) is no error: its min.insync.replicas counts as Kafka's default, 1."""
    from kafka.admin import ConfigResource, ConfigResourceType

    broker = admin.describe_cluster()["brokers"][0]["node_id"]
    wanted = {"default.replication.factor": None, "min.insync.replicas": None}
    [response] = admin.describe_configs(
        [ConfigResource(ConfigResourceType.BROKER, str(broker), configs=wanted)]
    )
    found: dict[str, int] = {}
    for error_code, message, _type, _name, entries in response.resources:
        if error_code:
            if replication_factor:
                log.warning(
                    "broker_config_unreadable error=%s min_insync_replicas_default=1", error_code
                )
                return BrokerDefaults(replication_factor, 1)
            raise TopicsError(
                [
                    f"cannot read the broker's default.replication.factor (error {error_code}:"
                    f" {message}); set SEGMENTS_REPLICATION_FACTOR"
                ]
            )
        for entry in entries:
            if entry[0] in wanted and entry[1] is not None:
                found[entry[0]] = int(entry[1])
    if "default.replication.factor" not in found and not replication_factor:
        raise TopicsError(
            [
                "the broker did not report default.replication.factor;"
                " set SEGMENTS_REPLICATION_FACTOR"
            ]
        )
    return BrokerDefaults(
        replication_factor or found["default.replication.factor"],
        found.get("min.insync.replicas", 1),
    )


async def wait_for_topic(kafka: KafkaConnection, topic: str, stop: asyncio.Event) -> bool:
    """Waits until `topic` exists (the worker creates it); False when stopped first.

    A consumer subscribed to a missing topic waits in start() without end, deaf to stop.
    """
    from aiokafka.admin import AIOKafkaAdminClient

    backoff, logged = Backoff(0.2, 5.0), 0.0
    while not stop.is_set():
        admin = AIOKafkaAdminClient(**kafka.aiokafka_args())
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


async def ensure_topic(
    kafka: KafkaConnection,
    topic: str,
    partitions: int = 1,
    replication_factor: int | None = None,
) -> None:
    """Creates one topic when missing (brokers may not auto-create topics), with
    `replication_factor` replicas or the broker's default.replication.factor, and
    `min_insync_replicas` of them."""
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic
    from aiokafka.errors import TopicAlreadyExistsError

    admin = AIOKafkaAdminClient(**kafka.aiokafka_args())
    await admin.start()
    try:
        if topic in set(await admin.list_topics()):
            return
        defaults = await asyncio.to_thread(broker_defaults, kafka, replication_factor)
        factor = defaults.replication_factor
        config = {
            "min.insync.replicas": str(min_insync_replicas(factor, defaults.min_insync_replicas))
        }
        response = await admin.create_topics(
            [NewTopic(topic, partitions, factor, topic_configs=config)]
        )
        for _name, code, *_rest in getattr(response, "topic_errors", []):
            if code not in (0, TopicAlreadyExistsError.errno):
                raise KafkaError(f"creating {topic} failed with error code {code}")
    finally:
        await admin.close()
