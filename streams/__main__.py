"""`python -m streams ...` is the `segments` command."""

from streams.main import cli

cli()
