"""`segments generate`: seeded synthetic traffic (segments.generate) written as JSONL."""

from __future__ import annotations

import gzip
import sys
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import IO

import click

from segments.generate import DEFAULT_START, MAX_CUSTOMERS, GenerationReport, generate_events


@click.command("generate")
@click.option("--customers", type=click.IntRange(1, MAX_CUSTOMERS), default=1000, show_default=True)
@click.option("--days", type=click.IntRange(1, 36_500), default=365, show_default=True)
@click.option("--seed", type=int, default=1, show_default=True)
@click.option(
    "--out",
    "out",
    type=click.Path(dir_okay=False, allow_dash=True),
    default="-",
    show_default=True,
    help="FILE.jsonl, FILE.jsonl.gz, or - for stdout",
)
@click.option("--dirty", is_flag=True, help="add duplicates, late and malformed records")
@click.option(
    "--start",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    default=DEFAULT_START.isoformat(),
    show_default=True,
    help="first day (UTC)",
)
def generate_command(
    customers: int, days: int, seed: int, out: str, dirty: bool, start: datetime
) -> None:
    """Synthetic POS and online purchases in canonical JSONL, sorted by occurred_at.

    Seeded and deterministic: repeat buyers and lapsing customers, January
    sales and a December peak, discounts, returns, EUR with some USD and GBP.
    """
    report = GenerationReport()
    events = generate_events(customers, days, seed, start.date(), dirty, report)
    if out == "-":
        _write(events, sys.stdout.buffer)
    elif out.endswith(".gz"):
        with gzip.open(Path(out), "wb", compresslevel=1) as stream:
            _write(events, stream)
    else:
        with Path(out).open("wb") as stream:
            _write(events, stream)
    click.echo(report.summary(), err=True)


def _write(events: Iterator[bytes], stream: IO[bytes] | gzip.GzipFile) -> None:
    batch: list[bytes] = []
    for raw in events:
        batch.append(raw)
        if len(batch) == 4096:
            stream.write(b"\n".join(batch) + b"\n")
            batch.clear()
    if batch:
        stream.write(b"\n".join(batch) + b"\n")
