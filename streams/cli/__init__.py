"""The `segments` command line: one module per command (registered lazily in streams.cli.main)."""
