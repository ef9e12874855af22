"""`segments produce`: publish a JSONL file of canonical events to `purchases`, then clock marks."""

from __future__ import annotations

import sys
from collections.abc import Generator

import click

from segments.replay import read_lines
from streams.cli.common import as_of_option, check_kafka_or_exit, settings_or_exit
from streams.kafka.connection import KafkaConnection
from streams.kafka.produce import numbered_timeline, publish, reason
from streams.kafka.topics import TopicsError, ensure_topics, topics_error_text
from streams.logs import configure_from


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

    settings = settings_or_exit()
    configure_from(settings, quiet_clients=True)
    as_of_instant = as_of_option(as_of)
    names = settings.topics
    kafka = KafkaConnection.from_settings(settings)
    try:
        messages = numbered_timeline(read_lines(input_path))
    except OSError as error:
        raise click.ClickException(f"cannot read {input_path}: {error.strerror or error}") from None
    progress = _ticker(len(messages)) if sys.stderr.isatty() and messages else None
    check_kafka_or_exit(settings, must_answer=True)
    try:
        ensure_topics(kafka, names, settings.partitions, None, settings.replication_factor)
        result = publish(kafka, names.purchases, messages, as_of_instant, progress)
    except (NoBrokersAvailable, KafkaConnectionError) as error:
        # Expected when the broker is down or the address is wrong: no traceback.
        raise click.ClickException(
            f"cannot reach Kafka at {kafka.describe()} ({type(error).__name__}): is the broker "
            "running, and is SEGMENTS_KAFKA_BOOTSTRAP its address?"
        ) from None
    except KafkaError as error:
        raise click.ClickException(
            f"cannot produce to Kafka at {kafka.describe()}: {reason(error)}"
        ) from None
    except TopicsError as error:
        raise click.ClickException(topics_error_text(error)) from None
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
