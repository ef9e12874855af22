"""Loads the hand-checked conformance cases (tests/conformance/, copied from shared/, and
tests/conformance_language2/ for language 2's time rules) and checks a replay's outputs
against them as the cases' README defines conformance."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from segments.clock import parse_instant

CASES_DIR = Path(__file__).parent / "conformance"
RULES = CASES_DIR / "rules.yaml"
LANGUAGE_2_DIR = Path(__file__).parent / "conformance_language2"


@dataclass(frozen=True)
class Case:
    name: str
    path: Path
    as_of: str
    description: str
    rules: Path = RULES  # the rule file of the case's folder

    @property
    def events(self) -> Path:
        return self.path / "events.jsonl"

    def expected_changes(self) -> list[dict[str, Any]]:
        return read_jsonl(self.path / "expected-changes.jsonl")

    def expected_memberships(self) -> dict[str, list[str]]:
        return dict(json.loads((self.path / "expected-memberships.json").read_text()))


def all_cases(directory: Path = CASES_DIR) -> list[Case]:
    """The cases of one folder (by default the version-1 ones), all on its rules.yaml."""
    cases = []
    for folder in sorted(p for p in directory.iterdir() if (p / "case.json").exists()):
        meta = json.loads((folder / "case.json").read_text())
        rules = directory / "rules.yaml"
        cases.append(Case(folder.name, folder, meta["as_of"], meta["description"], rules))
    return cases


def every_case() -> list[Case]:
    """The version-1 cases and language 2's."""
    return all_cases() + all_cases(LANGUAGE_2_DIR)


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def change_key(change: dict[str, Any]) -> tuple[Any, ...]:
    return (
        change["customer_id"],
        change["segment"],
        change["change"],
        parse_instant(change["at"].replace("Z", "+00:00")),
        change["cause"],
        change["seq"],
        change["event_id"],
        change["change_id"],
    )


def assert_conforms(
    case: Case, changes: list[dict[str, Any]], memberships: dict[str, list[str]]
) -> None:
    """The README's definition: same multiset of changes, `at` never decreasing, seq rising
    per customer and segment, equal memberships."""
    expected = sorted(change_key(c) for c in case.expected_changes())
    actual = sorted(change_key(c) for c in changes)
    assert actual == expected, f"{case.name}: changes differ"
    instants = [change_key(c)[3] for c in changes]
    assert instants == sorted(instants), f"{case.name}: `at` decreases"
    last_seq: dict[tuple[str, str], int] = {}
    for change in changes:
        key = (change["customer_id"], change["segment"])
        assert change["seq"] > last_seq.get(key, 0), f"{case.name}: seq does not rise for {key}"
        last_seq[key] = change["seq"]
    assert memberships == case.expected_memberships(), f"{case.name}: memberships differ"
