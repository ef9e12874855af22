"""Dead letters: an undecodable or rejected message goes to `purchases.dlq`, bytes untouched."""

from __future__ import annotations

import logging
from collections.abc import Awaitable
from typing import Any, Protocol

log = logging.getLogger(__name__)


class Producer(Protocol):
    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: Any,
    ) -> Awaitable[Any]: ...


def dead_letter_headers(
    reason: str, message: str, topic: str, partition: int, offset: int
) -> list[tuple[str, bytes]]:
    """The headers SPEC section 1 asks for: why, and where the original came from."""
    return [
        ("reason", reason.encode()),
        ("message", message.encode("utf-8", "replace")),
        ("source_topic", topic.encode()),
        ("source_partition", str(partition).encode()),
        ("source_offset", str(offset).encode()),
    ]


async def dead_letter(
    producer: Producer,
    dlq_topic: str,
    key: bytes | None,
    value: bytes | None,
    reason: str,
    message: str,
    source: tuple[str, int, int],
) -> Awaitable[Any]:
    """Queue the original bytes to the DLQ; the returned future resolves when Kafka has them.

    Faust flushes the producer before it commits the source offset, so a
    dead letter is never lost even though the agent does not wait for it.
    """
    topic, partition, offset = source
    log.info(
        "dead_letter reason=%s topic=%s partition=%d offset=%d", reason, topic, partition, offset
    )
    return await producer.send(
        dlq_topic, key, value, None, None, dead_letter_headers(reason, message, *source)
    )
