"""`segments validate R.yaml`, and the load-or-exit-2 helper other commands share."""

from __future__ import annotations

import os

import click

from segments.rules.errors import RuleFileError
from segments.rules.ruleset import RuleSet, load_ruleset

EXIT_INVALID_RULES = 2  # SPEC §6: exit 2 on an invalid rule file


def load_ruleset_or_exit(path: str | os.PathLike[str]) -> RuleSet:
    """Load a rule file for a CLI command; on errors print them all to stderr and exit 2."""
    try:
        return load_ruleset(path)
    except RuleFileError as error:
        report_rule_errors(error)
        raise click.exceptions.Exit(EXIT_INVALID_RULES) from None


def report_rule_errors(error: RuleFileError) -> None:
    """Print every error compiler-style to stderr, then how many there were."""
    for rule_error in error.errors:
        click.echo(str(rule_error), err=True)
    count = len(error.errors)
    click.echo(f"{error.errors[0].file}: {count} error{'s' if count != 1 else ''}", err=True)


@click.command("validate")
@click.argument("rules", metavar="R.yaml", type=click.Path(dir_okay=False))
def validate_command(rules: str) -> None:
    """Check a rule file: print OK and exit 0, or print every error and exit 2."""
    ruleset = load_ruleset_or_exit(rules)
    segments = len(ruleset.segments)
    triggers = len(ruleset.triggers)
    traits = len(ruleset.traits)
    click.echo(
        f"OK: {rules} (version {ruleset.version}, "
        f"{segments} segment{'s' if segments != 1 else ''}, "
        f"{triggers} trigger{'s' if triggers != 1 else ''}"
        + (f", {traits} trait{'s' if traits != 1 else ''})" if traits else ")")
    )
