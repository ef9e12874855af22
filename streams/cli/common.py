"""What every command shares: the settings or a clean exit, and running until a signal."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Coroutine
from typing import Any

import click

from segments.clock import parse_instant
from streams.settings import Settings, SettingsError, load_settings


def settings_or_exit(**overrides: Any) -> Settings:
    """The SEGMENTS_* settings; an invalid one ends the command with its message (exit 1)."""
    try:
        return load_settings(**overrides)
    except SettingsError as error:
        raise click.ClickException(str(error)) from None


def check_kafka_or_exit(settings: Settings, *, must_answer: bool) -> None:
    """Connects and logs in to Kafka as the command's clients will (streams/kafka/connection.py).

    A refused login or an untrusted certificate ends the command with the reason (exit 1):
    the client libraries would only retry, logging it, or say something unrelated. A broker
    that does not answer ends it only when `must_answer`; otherwise the clients wait for it.
    """
    from streams.kafka.connection import (
        KafkaConnection,
        KafkaConnectionFailed,
        check_connection_now,
    )

    try:
        check_connection_now(KafkaConnection.from_settings(settings))
    except KafkaConnectionFailed as error:
        if error.fatal or must_answer:
            raise click.ClickException(str(error)) from None
        click.echo(f"warning: {error}; waiting for it", err=True)


def as_of_option(as_of: str | None) -> int | None:
    """The --as-of option (ISO-8601 with an offset or Z) in epoch microseconds, or None."""
    if as_of is None:
        return None
    try:
        return parse_instant(as_of.replace("Z", "+00:00"))
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--as-of") from error


def run_until_signal(main: Callable[[asyncio.Event], Coroutine[Any, Any, None]]) -> None:
    """Runs main(stop) on uvloop when installed; SIGINT/SIGTERM set stop.

    The handlers are installed before the loop runs: installed from inside a running
    uvloop (uvloop.run, asyncio.Runner) SIGTERM still killed the process here.
    """
    loop: asyncio.AbstractEventLoop
    try:
        import uvloop

        from streams.kafka.aiokafka_fixes import closed_transports_raise_connection_errors

        closed_transports_raise_connection_errors()  # aiokafka on uvloop: see there
        loop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        loop.run_until_complete(main(stop))
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        asyncio.set_event_loop(None)
        loop.close()
