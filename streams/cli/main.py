"""CLI entry point: `segments ...`. Each command is thin and lives beside what it drives."""

from __future__ import annotations

import importlib

import click

# name -> "module:attribute". Commands are imported only when run, so `segments
# replay` does not pay for importing Faust, aiokafka and redis.
COMMANDS = {
    "demo": "streams.cli.demo:demo_command",
    "replay": "streams.cli.replay:replay_command",
    "validate": "streams.cli.validate:validate_command",
    "generate": "streams.cli.generate:generate_command",
    "produce": "streams.cli.produce:produce_command",
    "worker": "streams.cli.worker:worker_command",
    "serve": "streams.cli.serve:serve_command",
    "lookup": "streams.cli.lookup:lookup_command",
    "resync-cache": "streams.cli.resync:resync_command",
    "triggers": "streams.cli.triggers:triggers_command",
    "diff": "streams.cli.diff:diff_command",
    "explain": "streams.cli.explain:explain_command",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None or cmd_name not in COMMANDS:
            return command
        module_name, attribute = COMMANDS[cmd_name].split(":")
        loaded = getattr(importlib.import_module(module_name), attribute)
        assert isinstance(loaded, click.Command)
        return loaded


@click.group(cls=LazyGroup)
@click.version_option(package_name="purchase-segments")
def cli() -> None:
    """purchase-segments: real-time customer segments from purchase events."""
