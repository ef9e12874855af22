"""`segments produce`: publish a JSONL file of canonical events to `purchases`, then clock marks."""

from __future__ import annotations

import logging
import sys
import threading
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field

import click
import orjson

from segments.changes import format_instant
from segments.clock import parse_instant
from segments.events import ClockMark, Rejection, decode_event
from segments.replay import read_lines
from streams.config import load_config
from streams.kafka.topics import ensure_topics

log = logging.getLogger(__name__)


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
    bootstrap: str,
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
                result.failures.append(Failure(line, _reason(error)))

        return record

    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=5,
        batch_size=256 * 1024,
        client_id="segments-produce",
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


def _reason(error: BaseException) -> str:
    """The error's own words, with its class name once (kafka-python repeats it in the text)."""
    text = str(error).strip()
    name = type(error).__name__
    if not text:
        return name
    return text if name in text else f"{name}: {text}"


def _ticker(total: int) -> Generator[None, None, None]:
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task("producing", total=total)
        for done in range(1, total + 1):
            if done % 1000 == 0 or done == total:
                bar.update(task, completed=done)
            yield


# Enough failures to see the pattern; the count says how many more there were.
SHOWN_FAILURES = 20


@click.command("produce")
@click.option("--input", "input_path", required=True, help=".jsonl, .jsonl.gz, or - for stdin")
@click.option("--as-of", "as_of", default=None, help="then send a clock mark at this instant")
def produce_command(input_path: str, as_of: str | None) -> None:
    """Publish canonical events to `purchases`, keyed by customer_id, in occurred_at order.

    Exits 1 when any line could not be produced (each is named with its line
    number) or when Kafka cannot be reached.
    """
    from kafka.errors import KafkaConnectionError, KafkaError, NoBrokersAvailable

    config = load_config()
    as_of_instant = None
    if as_of is not None:
        try:
            as_of_instant = parse_instant(as_of.replace("Z", "+00:00"))
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="--as-of") from error
    names = config.names
    bootstrap = config.kafka_bootstrap
    try:
        messages = numbered_timeline(read_lines(input_path))
    except OSError as error:
        raise click.ClickException(f"cannot read {input_path}: {error.strerror or error}") from None
    progress = _ticker(len(messages)) if sys.stderr.isatty() and messages else None
    try:
        ensure_topics(bootstrap, names, config.partitions)
        result = publish(bootstrap, names.purchases, messages, as_of_instant, progress)
    except (NoBrokersAvailable, KafkaConnectionError) as error:
        # Expected when the broker is down or the address is wrong: no traceback.
        raise click.ClickException(
            f"cannot reach Kafka at {bootstrap} ({type(error).__name__}): is the broker "
            "running, and is SEGMENTS_KAFKA_BOOTSTRAP its address?"
        ) from None
    except KafkaError as error:
        raise click.ClickException(
            f"cannot produce to Kafka at {bootstrap}: {_reason(error)}"
        ) from None
    finally:
        if progress is not None:
            progress.close()
    for failure in result.failures[:SHOWN_FAILURES]:
        click.echo(failure.describe(), err=True)
    hidden = len(result.failures) - SHOWN_FAILURES
    if hidden > 0:
        click.echo(f"... and {hidden} more messages not produced", err=True)
    marks = " and clock marks at " + as_of if as_of is not None and not result.failures else ""
    click.echo(f"produced {result.produced} messages to {names.purchases}{marks}", err=True)
    if result.failures:
        lines = {failure.line for failure in result.failures}
        skipped = " (clock marks not sent)" if as_of is not None else ""
        raise click.ClickException(
            f"{len(lines)} of {len(messages)} input lines could not be produced{skipped}"
        )
