"""`segments produce`: publish a JSONL file of canonical events to `purchases`, then clock marks."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable, Iterator

import click
import orjson

from segments.changes import format_instant
from segments.clock import parse_instant
from segments.events import ClockMark, Rejection, decode_event
from segments.replay import read_lines
from streams.config import load_config
from streams.topics import ensure_topics

log = logging.getLogger(__name__)


class _AnyCurrency:
    """Accepts every currency code: produce orders events, the worker judges them."""

    def __contains__(self, code: object) -> bool:
        return True


def timeline(lines: Iterable[bytes]) -> list[tuple[bytes | None, bytes]]:
    """(key, value) pairs in the order replay applies them: stably sorted by occurred_at.

    A line that does not decode keeps the instant of the line before it, so it
    travels with its neighbours and the worker dead-letters it; its key is the
    customer_id when one can be read. A clock mark in the input gets the key
    EVERY_PARTITION: replay's clock is global, so it goes to every partition.
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
    return [(key, raw) for _, _, key, raw in entries]


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


def publish(
    bootstrap: str,
    topic: str,
    messages: list[tuple[bytes | None, bytes]],
    as_of: int | None,
    progress: Iterator[None] | None = None,
) -> int:
    """Send messages keyed by customer (murmur2 partitioner), then a clock mark per partition."""
    from kafka import KafkaProducer

    producer = KafkaProducer(
        bootstrap_servers=bootstrap,
        acks="all",
        linger_ms=5,
        batch_size=256 * 1024,
        client_id="segments-produce",
    )
    try:
        partitions = sorted(producer.partitions_for(topic))
        for key, value in messages:
            if key == EVERY_PARTITION:
                for partition in partitions:
                    producer.send(topic, value=value, partition=partition)
            else:
                producer.send(topic, key=key, value=value)
            if progress is not None:
                next(progress)
        # Every event must be on its partition before the mark that closes it.
        producer.flush()
        if as_of is not None:
            mark = clock_mark(as_of)
            for partition in partitions:
                producer.send(topic, value=mark, partition=partition)
            producer.flush()
    finally:
        producer.close()
    return len(messages)


def _ticker(total: int) -> Iterator[None]:
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task("producing", total=total)
        for done in range(1, total + 1):
            if done % 1000 == 0 or done == total:
                bar.update(task, completed=done)
            yield


@click.command("produce")
@click.option("--input", "input_path", required=True, help=".jsonl, .jsonl.gz, or - for stdin")
@click.option("--as-of", "as_of", default=None, help="then send a clock mark at this instant")
def produce_command(input_path: str, as_of: str | None) -> None:
    """Publish canonical events to `purchases`, keyed by customer_id, in occurred_at order."""
    config = load_config()
    as_of_instant = None
    if as_of is not None:
        try:
            as_of_instant = parse_instant(as_of.replace("Z", "+00:00"))
        except ValueError as error:
            raise click.BadParameter(str(error), param_hint="--as-of") from error
    names = config.names
    ensure_topics(config.kafka_bootstrap, names, config.partitions)
    messages = timeline(read_lines(input_path))
    progress = _ticker(len(messages)) if sys.stderr.isatty() and messages else None
    sent = publish(config.kafka_bootstrap, names.purchases, messages, as_of_instant, progress)
    if progress is not None:
        progress.close()
    suffix = f" and clock marks at {as_of}" if as_of is not None else ""
    click.echo(f"produced {sent} messages to {names.purchases}{suffix}", err=True)
