"""`segments replay`: the whole pipeline over a file, no Kafka or Redis (SPEC section 6)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from segments.replay import read_lines, replay
from segments.rules.evaluator import compile_rules
from streams.cli.common import as_of_option
from streams.cli.validate import load_ruleset_or_exit


@click.command("replay")
@click.option("--rules", "rules_path", required=True, type=click.Path(dir_okay=False))
@click.option("--input", "input_path", required=True, help=".jsonl, .jsonl.gz, or - for stdin")
@click.option("--as-of", "as_of", default=None, help="advance the clock to this instant at the end")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False))
@click.option(
    "--jobs",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="processes; customers are split among them, the output is the same",
)
def replay_command(
    rules_path: str, input_path: str, as_of: str | None, out_dir: str, jobs: int
) -> None:
    """Replay purchase events through the segment rules and write the changes."""
    ruleset = load_ruleset_or_exit(rules_path)
    as_of_instant = as_of_option(as_of)
    rules = compile_rules(ruleset)
    # Events dated more than max_future_skew after this run are refused, as the worker does.
    wall = time.time_ns() // 1000
    show_progress = sys.stderr.isatty() and jobs == 1
    if show_progress:
        from rich.progress import Progress

        with Progress(transient=True) as bar:
            task = bar.add_task("decoding", total=None)
            result = replay(
                read_lines(input_path),
                rules,
                Path(out_dir),
                as_of=as_of_instant,
                progress=lambda n: bar.update(task, completed=n),
                wall=wall,
            )
    else:
        result = replay(
            read_lines(input_path), rules, Path(out_dir), as_of=as_of_instant, wall=wall, jobs=jobs
        )
    summary = result.summary()
    click.echo(
        f"read {summary['events_read']} applied {summary['applied']} "
        f"duplicates {summary['duplicates']} rejected {summary['rejected']} "
        f"changes {summary['changes']} in {summary['seconds']}s "
        f"({summary['events_per_second']} events/s) -> {out_dir}",
        err=True,
    )
