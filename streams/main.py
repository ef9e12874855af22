"""CLI entry point: `segments ...`. Each command is thin and lives beside what it drives."""

from __future__ import annotations

import click


@click.group()
@click.version_option(package_name="purchase-segments")
def cli() -> None:
    """purchase-segments: real-time customer segments from purchase events."""


# Commands register themselves here, one line each, so modules stay independent.
from streams.replay_command import replay_command  # noqa: E402

cli.add_command(replay_command)
from segments.rules.validate import validate_command  # noqa: E402

cli.add_command(validate_command)
from streams.produce import produce_command  # noqa: E402

cli.add_command(produce_command)
from streams.worker import worker_command  # noqa: E402

cli.add_command(worker_command)
from streams.resync import resync_command  # noqa: E402

cli.add_command(resync_command)
from streams.lookup import lookup_command  # noqa: E402

cli.add_command(lookup_command)
from streams.triggers import triggers_command  # noqa: E402

cli.add_command(triggers_command)
from streams.serving import serve_command  # noqa: E402

cli.add_command(serve_command)
from segments.generate import generate_command  # noqa: E402

cli.add_command(generate_command, "generate")
