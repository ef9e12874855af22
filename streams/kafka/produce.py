"""Publishing canonical events to `purchases` in replay's order, then clock marks."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import orjson

from segments.changes import format_instant
from segments.events import ClockMark, Rejection, decode_event
from streams.kafka.connection import KafkaConnection


class _AnyCurrency:
    """Accepts every currency code: produce orders events, the worker judges them."""

    def __contains__(self, code: object) -> bool:
        return True


def timeline(lines: Iterable[bytes]) -> list[tuple[bytes | None, bytes]]:
    """(key, value) pairs in the order replay applies them (numbered_timeline without numbers)."""
    return [(key, raw) for _, key, raw in numbered_timeline(lines)]


def numbered_timeline(lines: Iterable[bytes]) -> list[tuple[int, bytes | None, bytes]]:
    """(line number, key, value) in the order replay applies them: stably sorted by occurred_at.

    A line that does not decode keeps the instant of the line before it, so it
    travels with its neighbours and the worker dead-letters it; its key is the
    customer_id when one can be read. A clock mark in the input gets the key
    EVERY_PARTITION: replay's clock is global, so it goes to every partition.
    Line numbers count from 1, blank lines included, as an editor shows them.
    """
    entries: list[tuple[int, int, bytes | None, bytes]] = []
    instant = -(1 << 62)
    currencies = _AnyCurrency()
    for position, line in enumerate(lines):
        raw = line.rstrip(b"\r\n")
        if not raw.strip():
            continue
        key: bytes | None = None
        try:
            item = decode_event(raw, currencies)
        except Rejection:
            key = _customer_key(raw)
        else:
            if isinstance(item, ClockMark):
                instant = item.at
                key = EVERY_PARTITION
            else:
                instant = item.occurred_at
                key = item.customer_id.encode()
        entries.append((instant, position, key, raw))
    entries.sort(key=lambda entry: (entry[0], entry[1]))
    return [(position + 1, key, raw) for _, position, key, raw in entries]


EVERY_PARTITION = b"\x00every-partition"  # a marker, never sent as a key


def _customer_key(raw: bytes) -> bytes | None:
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if isinstance(document, dict) and isinstance(document.get("customer_id"), str):
        return str(document["customer_id"]).encode()
    return None


def clock_mark(at: int) -> bytes:
    return orjson.dumps({"type": "clock", "at": format_instant(at)})


@dataclass(frozen=True)
class Failure:
    """One message Kafka did not acknowledge: which input line (None: an --as-of mark), why."""

    line: int | None
    reason: str

    def describe(self) -> str:
        where = f"line {self.line}" if self.line is not None else "the --as-of clock mark"
        return f"{where}: not produced: {self.reason}"


@dataclass
class PublishResult:
    produced: int = 0  # messages Kafka acknowledged
    failures: list[Failure] = field(default_factory=list)


def publish(
    kafka: KafkaConnection,
    topic: str,
    messages: list[tuple[int, bytes | None, bytes]],
    as_of: int | None,
    progress: Iterator[None] | None = None,
) -> PublishResult:
    """Send messages keyed by customer (murmur2 partitioner), then a clock mark per partition.

    Counts only what Kafka acknowledged; each message it refused (too large,
    a failed request) is a Failure naming its input line. The clock marks are
    sent only when every message was produced: a mark closes the input, and an
    input with holes must not look complete to the worker.
    """
    from kafka import KafkaProducer

    result = PublishResult()
    lock = threading.Lock()  # callbacks run on the producer's I/O thread

    def acknowledged(_: object) -> None:
        with lock:
            result.produced += 1

    def refused(line: int | None) -> Callable[[BaseException], None]:
        def record(error: BaseException) -> None:
            with lock:
                result.failures.append(Failure(line, reason(error)))

        return record

    producer = KafkaProducer(
        **kafka.kafka_python_args(
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            batch_size=256 * 1024,
            client_id="segments-produce",
        )
    )
    try:
        partitions = sorted(producer.partitions_for(topic))
        for line, key, value in messages:
            if key == EVERY_PARTITION:
                futures = [producer.send(topic, value=value, partition=p) for p in partitions]
            else:
                futures = [producer.send(topic, key=key, value=value)]
            for future in futures:
                future.add_callback(acknowledged)
                future.add_errback(refused(line))
            if progress is not None:
                next(progress)
        # Every event must be on its partition before the mark that closes it.
        producer.flush()
        if as_of is not None and not result.failures:
            mark = clock_mark(as_of)
            for partition in partitions:
                future = producer.send(topic, value=mark, partition=partition)
                future.add_callback(acknowledged)
                future.add_errback(refused(None))
            producer.flush()
    finally:
        producer.close()
    result.failures.sort(key=lambda failure: failure.line or 0)
    return result


def reason(error: BaseException) -> str:
    """The error's own words, with its class name once (kafka-python repeats it in the text)."""
    text = str(error).strip()
    name = type(error).__name__
    if not text:
        return name
    return text if name in text else f"{name}: {text}"
