"""Dead letters: an undecodable or rejected message goes to `purchases.dlq`, bytes untouched.

SPEC section 1: the original bytes, or, when they cannot fit in one Kafka
record, their size, a hash, the first bytes and the reason, always reach the
dead-letter topic (the record format is in docs/event-formats.md, the
decision in docs/decisions/0005-worker-edges.md).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable
from typing import Any, Protocol

from aiokafka.errors import MessageSizeTooLargeError
from aiokafka.record.default_records import DefaultRecordBatchBuilder

log = logging.getLogger(__name__)

# Faust's default producer_max_request_size, for a producer that does not say.
DEFAULT_MAX_REQUEST_SIZE = 1_000_000
# Room left under the producer's limit: the broker's own limit on a batch
# (message.max.bytes, 1,048,588 by default) is only a little above it.
SIZE_MARGIN = 4 * 1024
# How much of an original that does not fit is kept: enough to see what it was.
HEAD_BYTES = 64 * 1024
# A key longer than this is cut in a truncated record (SPEC ids are <= 128 chars).
KEY_BYTES = 1024
# Only records above this size wait for the broker's answer: a smaller one cannot
# be refused for its size, and waiting on every dead letter would slow a flood.
CONFIRM_ABOVE = 64 * 1024

Headers = list[tuple[str, bytes]]


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
) -> Headers:
    """The headers SPEC section 1 asks for: why, and where the original came from."""
    return [
        ("reason", reason.encode()),
        ("message", message.encode("utf-8", "replace")),
        ("source_topic", topic.encode()),
        ("source_partition", str(partition).encode()),
        ("source_offset", str(offset).encode()),
    ]


def record_size(key: bytes | None, value: bytes | None, headers: Headers) -> int:
    """Bytes of a one-record batch, as the Kafka client counts them against its limit."""
    return int(DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers))


def record_limit(producer: Any) -> int:
    """The largest dead-letter record sent whole: the producer's request limit minus a margin."""
    limit = getattr(producer, "max_request_size", None) or DEFAULT_MAX_REQUEST_SIZE
    return int(limit) - SIZE_MARGIN


def truncated_record(
    key: bytes | None, value: bytes | None, headers: Headers, why: str
) -> tuple[bytes | None, bytes, Headers]:
    """The stand-in for an original too large to dead-letter: its head, size and sha256.

    The value is the original's first HEAD_BYTES bytes; the headers keep the
    reason and source and add `truncated`, `size`, `sha256` (of the whole
    original value) and why it was truncated. A key over KEY_BYTES is cut too,
    and `key_size` then gives its length.
    """
    original = value or b""
    extra: Headers = [
        ("truncated", b"true"),
        ("size", str(len(original)).encode()),
        ("sha256", hashlib.sha256(original).hexdigest().encode()),
        ("truncated_reason", why.encode("utf-8", "replace")),
    ]
    if key is not None and len(key) > KEY_BYTES:
        extra.append(("key_size", str(len(key)).encode()))
        key = key[:KEY_BYTES]
    # The human message is the only header of unbounded length.
    kept = [(name, data[:KEY_BYTES] if name == "message" else data) for name, data in headers]
    return key, original[:HEAD_BYTES], kept + extra


def _too_large(error: BaseException) -> bool:
    """A size refusal, from the client (raised by send) or the broker (on the future).

    Faust wraps the client's errors in ProducerSendError; the cause is kept.
    """
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, MessageSizeTooLargeError):
            return True
        cause = cause.__cause__
    return False


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
    dead letter is never lost even though the agent does not wait for it. A
    record too large for the producer or the topic is replaced by its
    truncated form (truncated_record) instead of failing: a crash here would
    let the offset move past the message with no dead letter at all.
    """
    topic, partition, offset = source
    headers = dead_letter_headers(reason, message, *source)
    size = record_size(key, value, headers)
    limit = record_limit(producer)
    if size > limit:
        why = f"a dead-letter record of {size} bytes is over the producer's limit of {limit}"
        return await _send_truncated(producer, dlq_topic, key, value, headers, source, why)
    log.info(
        "dead_letter reason=%s topic=%s partition=%d offset=%d", reason, topic, partition, offset
    )
    try:
        sent = await producer.send(dlq_topic, key, value, None, None, headers)
        if size > CONFIRM_ABOVE:
            await sent  # the topic's max.message.bytes may be below the producer's limit
    except Exception as error:
        if not _too_large(error):
            raise
        why = f"a dead-letter record of {size} bytes was refused: {error}"
        return await _send_truncated(producer, dlq_topic, key, value, headers, source, why)
    return sent


async def _send_truncated(
    producer: Producer,
    dlq_topic: str,
    key: bytes | None,
    value: bytes | None,
    headers: Headers,
    source: tuple[str, int, int],
    why: str,
) -> Awaitable[Any]:
    topic, partition, offset = source
    short_key, head, short_headers = truncated_record(key, value, headers, why)
    log.warning(
        "dead_letter_truncated reason=%s topic=%s partition=%d offset=%d size=%d kept=%d",
        dict(headers)["reason"].decode(),
        topic,
        partition,
        offset,
        len(value or b""),
        len(head),
    )
    return await producer.send(dlq_topic, short_key, head, None, None, short_headers)
