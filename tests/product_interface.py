"""What deployment files may rely on: the product's settings and its command line.

The Helm chart and docker-compose.yml name SEGMENTS_* variables and `segments`
commands; their tests check both against the product through this one module,
which reaches the command line through the installed `segments` entry point and
the settings the way the CLI loads them.
"""

from __future__ import annotations

import shlex
from functools import cache
from importlib.metadata import entry_points

import click


@cache
def known_settings() -> frozenset[str]:
    """Every SEGMENTS_* variable the product reads (its one settings object)."""
    from streams.settings import setting_names

    return setting_names()


@cache
def settings_defaults() -> dict[str, object]:
    """SEGMENTS_<NAME> -> the default of that setting."""
    from streams.settings import Settings, env_name

    return {env_name(name): field.default for name, field in Settings.model_fields.items()}


@cache
def cli() -> click.Group:
    """The `segments` group, loaded from the installed console script."""
    (script,) = (ep for ep in entry_points(group="console_scripts") if ep.name == "segments")
    group = script.load()
    assert isinstance(group, click.Group)
    return group


def command_problem(argv: list[str]) -> str | None:
    """Why `segments ARGV` would be refused by the command line, or None when it parses.

    ARGV is what follows `segments` (a command and its options). Parsing runs click's
    own checks (unknown command, unknown option, missing or mistyped value) without
    running the command.
    """
    group = cli()
    if not argv:
        return "no command"
    name, *rest = argv
    with click.Context(group, info_name="segments") as context:
        command = group.get_command(context, name)
        if command is None:
            return f"`segments {name}`: no such command (known: {group.list_commands(context)})"
        try:
            command.make_context(name, list(rest), parent=context)
        except click.exceptions.Exit:
            return None  # --help or --version: parses, then exits
        except click.ClickException as error:
            return f"`segments {shlex.join(argv)}`: {error.format_message()}"
    return None


def segments_invocations(script: str) -> list[list[str]]:
    """The `segments ...` argument lists of a shell command line (split at | && || ;)."""
    lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    found: list[list[str]] = []
    command: list[str] = []
    for word in [*lexer, ";"]:
        if word in ("|", "&&", "||", ";"):
            if command and command[0] == "segments":
                found.append(command[1:])
            command = []
        else:
            command.append(word)
    return found


def load_settings_from_environment() -> object:
    """The settings as the product validates them at start, from os.environ alone.

    Raises the product's settings error (a ValueError naming each bad variable).
    """
    from streams.settings import load_settings

    return load_settings(env_file=None)
