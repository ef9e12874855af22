"""`python -m streams ...` is the `segments` command."""

from streams.cli.main import cli

cli()
