"""The shared conformance cases, each run through the real `segments replay` command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conformance_cases import (
    LANGUAGE_2_DIR,
    Case,
    all_cases,
    assert_conforms,
    every_case,
    read_jsonl,
)

pytestmark = pytest.mark.unit

CASES = every_case()


def test_every_case_is_found() -> None:
    assert len(all_cases()) == 15
    assert len(all_cases(LANGUAGE_2_DIR)) == 4


@pytest.mark.parametrize("case", CASES, ids=[f"{c.path.parent.name}/{c.name}" for c in CASES])
def test_replay_conforms(case: Case, tmp_path: Path) -> None:
    out = tmp_path / "out"
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "streams",
            "replay",
            "--rules",
            str(case.rules),
            "--input",
            str(case.events),
            "--as-of",
            case.as_of,
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert (out / "rejected.jsonl").read_text() == ""
    changes = read_jsonl(out / "changes.jsonl")
    memberships = json.loads((out / "memberships.json").read_text())
    assert_conforms(case, changes, memberships)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rejected"] == 0
    assert summary["changes"] == len(case.expected_changes())
