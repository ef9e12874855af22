"""Data files shipped in the package: the example rule set and the rule-file schema."""

from __future__ import annotations

from pathlib import Path

EXAMPLE_RULES: Path = Path(__file__).with_name("example_rules.yaml")
"""SPEC §3's example rule set, the default when SEGMENTS_RULES is unset."""

RULES_SCHEMA: Path = Path(__file__).with_name("rules.schema.json")
"""JSON Schema (draft 2020-12) of a rule file, for editors; docs/rule-language.md."""
