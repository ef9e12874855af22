"""Dead-letter records: the original whole when it fits, else its head, size, sha256 and why."""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

import pytest
from aiokafka.errors import MessageSizeTooLargeError
from faust.exceptions import ProducerSendError

from streams.worker.dlq import HEAD_BYTES, KEY_BYTES, SIZE_MARGIN, dead_letter, record_size

SOURCE = ("t.purchases", 1, 42)
LIMIT = 1_048_576


class Producer:
    """Records sends; refuses what is over its limit like Faust's producer, or as told."""

    def __init__(self, max_request_size: int = LIMIT, broker_limit: int | None = None) -> None:
        self.max_request_size = max_request_size
        self.broker_limit = broker_limit
        self.sent: list[tuple[bytes | None, bytes | None, dict[str, bytes]]] = []

    async def send(
        self,
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None,
        timestamp: float | None,
        headers: Any,
    ) -> asyncio.Future[Any]:
        size = record_size(key, value, headers)
        if size > self.max_request_size:
            try:
                raise MessageSizeTooLargeError(f"The message is {size} bytes")
            except MessageSizeTooLargeError as error:
                raise ProducerSendError(f"Error while sending: {error!r}") from error
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        if self.broker_limit is not None and size > self.broker_limit:
            future.set_exception(MessageSizeTooLargeError("refused by the broker"))
        else:
            self.sent.append((key, value, dict(headers)))
            future.set_result(None)
        return future


def send(producer: Producer, key: bytes | None, value: bytes | None) -> None:
    async def go() -> None:
        await dead_letter(producer, "t.dlq", key, value, "invalid_json", "bad", SOURCE)

    asyncio.run(go())


def test_a_small_record_keeps_the_original_and_the_usual_headers() -> None:
    producer = Producer()
    send(producer, b"c-1", b"{not json")
    [(key, value, headers)] = producer.sent
    assert (key, value) == (b"c-1", b"{not json")
    assert headers == {
        "reason": b"invalid_json",
        "message": b"bad",
        "source_topic": b"t.purchases",
        "source_partition": b"1",
        "source_offset": b"42",
    }


def test_an_original_just_under_the_limit_is_kept_whole() -> None:
    producer = Producer()
    value = b"x" * (LIMIT - SIZE_MARGIN - 400)
    send(producer, b"c-1", value)
    [(_, sent, headers)] = producer.sent
    assert sent == value and "truncated" not in headers


@pytest.mark.parametrize("size", [LIMIT - 100, 2 * LIMIT])
def test_an_original_over_the_limit_is_sent_truncated(size: int) -> None:
    producer = Producer()
    value = bytes(range(256)) * (size // 256) + b"y" * (size % 256)
    send(producer, b"c-1", value)
    [(key, sent, headers)] = producer.sent
    assert key == b"c-1"
    assert sent == value[:HEAD_BYTES]
    assert headers["truncated"] == b"true"
    assert headers["size"] == str(size).encode()
    assert headers["sha256"] == hashlib.sha256(value).hexdigest().encode()
    assert headers["reason"] == b"invalid_json"
    assert headers["source_offset"] == b"42"
    assert b"over the producer's limit" in headers["truncated_reason"]


def test_a_refusal_by_the_producer_falls_back_to_the_truncated_form() -> None:
    # A producer whose real limit is below what it advertises.
    producer = Producer(max_request_size=100_000)
    producer.max_request_size = LIMIT
    value = b"z" * 200_000

    async def go() -> None:
        real = producer.send

        async def strict(*args: Any) -> asyncio.Future[Any]:
            if record_size(args[1], args[2], args[5]) > 100_000:
                try:
                    raise MessageSizeTooLargeError("too large")
                except MessageSizeTooLargeError as error:
                    raise ProducerSendError("Error while sending") from error
            return await real(*args)

        producer.send = strict  # type: ignore[method-assign]
        await dead_letter(producer, "t.dlq", b"c-1", value, "invalid_json", "bad", SOURCE)

    asyncio.run(go())
    [(_, sent, headers)] = producer.sent
    assert sent == value[:HEAD_BYTES] and headers["truncated"] == b"true"
    assert b"was refused" in headers["truncated_reason"]


def test_a_refusal_by_the_broker_falls_back_to_the_truncated_form() -> None:
    producer = Producer(broker_limit=500_000)  # the topic's max.message.bytes is smaller
    value = b"z" * 800_000
    send(producer, b"c-1", value)
    [(_, sent, headers)] = producer.sent
    assert sent == value[:HEAD_BYTES] and headers["size"] == b"800000"


def test_a_huge_key_is_cut_and_its_size_kept() -> None:
    producer = Producer()
    key = b"k" * (2 * LIMIT)
    send(producer, key, b"{}")
    [(sent_key, sent, headers)] = producer.sent
    assert sent_key == key[:KEY_BYTES]
    assert headers["key_size"] == str(len(key)).encode()
    assert sent == b"{}"
