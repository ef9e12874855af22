"""`segments diff`: what a new rule version would do, before it is deployed (SPEC section 6)."""

from __future__ import annotations

import gzip
import time
import zlib
from pathlib import Path

import click
import orjson

from segments.diff import DEFAULT_SAMPLE, diff_rules, format_table, to_document
from segments.replay import read_lines
from segments.rules.errors import RuleFileError
from segments.rules.ruleset import RuleSet, load_ruleset
from streams.cli.common import as_of_option
from streams.cli.validate import EXIT_INVALID_RULES, report_rule_errors


@click.command("diff")
@click.option("--old", "old_path", required=True, help="the rule file deployed now")
@click.option("--new", "new_path", required=True, help="the rule file to preview")
@click.option("--input", "input_path", required=True, help=".jsonl, .jsonl.gz, or - for stdin")
@click.option(
    "--as-of", "as_of", required=True, help="the instant of the switch (ISO-8601 with offset or Z)"
)
@click.option(
    "--sample",
    default=DEFAULT_SAMPLE,
    show_default=True,
    type=click.IntRange(min=0),
    help="customer ids shown per list (sorted, the first N)",
)
@click.option("--json", "as_json", is_flag=True, help="one JSON document on stdout")
def diff_command(
    old_path: str, new_path: str, input_path: str, as_of: str, sample: int, as_json: bool
) -> None:
    """Preview a rule change: replay E under --old up to --as-of, then switch to --new.

    Per segment: members before and after the switch, entries and exits at it,
    and a sample of ids. Exit 2 when a rule file is invalid.
    """
    old, new = _load_both_or_exit(old_path, new_path)
    instant = as_of_option(as_of)
    assert instant is not None  # the option is required
    if input_path != "-" and not Path(input_path).is_file():
        problem = "not a file" if Path(input_path).exists() else "no such file"
        raise click.BadParameter(f"{problem}: {input_path}", param_hint="--input")
    # Events dated more than max_future_skew after this run are refused, as replay does.
    wall = time.time_ns() // 1000
    try:
        diff = diff_rules(read_lines(input_path), old, new, instant, wall=wall)
    except (OSError, EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise click.ClickException(f"cannot read {input_path}: {error}") from None
    for warning in diff.warnings:
        click.echo(f"warning: {warning}", err=True)
    if as_json:
        document = to_document(diff, old_path, new_path, sample)
        click.echo(orjson.dumps(document, option=orjson.OPT_INDENT_2).decode())
    else:
        click.echo(format_table(diff, old_path, new_path, sample), nl=False)


def _load_both_or_exit(old_path: str, new_path: str) -> tuple[RuleSet, RuleSet]:
    """Both rule files, or the errors of each invalid one on stderr and exit 2."""
    loaded: list[RuleSet] = []
    for path in (old_path, new_path):
        try:
            loaded.append(load_ruleset(path))
        except RuleFileError as error:
            report_rule_errors(error)
    if len(loaded) < 2:
        raise click.exceptions.Exit(EXIT_INVALID_RULES)
    return loaded[0], loaded[1]
