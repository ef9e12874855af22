"""A small hand-checked replay: every output file of `segments replay` against expectations."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conformance_cases import change_key, read_jsonl

pytestmark = pytest.mark.unit

GOLDEN = Path(__file__).resolve().parent.parent / "golden" / "small"


def _replay(
    input_arg: str, out: Path, stdin: bytes | None = None, jobs: int = 1
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "streams", "replay", "--rules", str(GOLDEN / "rules.yaml"),
         "--input", input_arg, "--as-of", "2024-05-10T00:00:00Z", "--out", str(out),
         "--jobs", str(jobs)],
        input=stdin, capture_output=True, check=False,
    )  # fmt: skip


def _check(out: Path) -> None:
    changes = read_jsonl(out / "changes.jsonl")
    expected = read_jsonl(GOLDEN / "expected-changes.jsonl")
    assert [change_key(c) for c in changes] == [change_key(c) for c in expected]
    assert all(c["rules_version"] == 1 for c in changes)
    assert json.loads((out / "memberships.json").read_text()) == json.loads(
        (GOLDEN / "expected-memberships.json").read_text()
    )
    rejected = read_jsonl(out / "rejected.jsonl")
    assert [{"line": r["line"], "reason": r["reason"]} for r in rejected] == read_jsonl(
        GOLDEN / "expected-rejected.jsonl"
    )
    lines = (GOLDEN / "events.jsonl").read_text().splitlines()
    assert all(r["raw"] == lines[r["line"] - 1] and r["message"] for r in rejected)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["events_read"] == 9
    assert summary["applied"] == 4
    assert summary["duplicates"] == 1
    assert summary["rejected_by_reason"] == {
        "invalid_json": 1, "naive_timestamp": 1, "negative_amount": 1, "unknown_currency": 1,
    }  # fmt: skip
    assert summary["changes_by_segment"] == {
        "big": {"entered": 2, "exited": 1},
        "buyer": {"entered": 2, "exited": 2},
    }


def test_golden_file(tmp_path: Path) -> None:
    completed = _replay(str(GOLDEN / "events.jsonl"), tmp_path)
    assert completed.returncode == 0, completed.stderr
    _check(tmp_path)


def test_golden_gzip_and_stdin_give_the_same_result(tmp_path: Path) -> None:
    raw = (GOLDEN / "events.jsonl").read_bytes()
    gz = tmp_path / "events.jsonl.gz"
    gz.write_bytes(gzip.compress(raw))
    assert _replay(str(gz), tmp_path / "gz").returncode == 0
    _check(tmp_path / "gz")
    assert _replay("-", tmp_path / "stdin", stdin=raw).returncode == 0
    _check(tmp_path / "stdin")


@pytest.mark.parametrize("jobs", [2, 3])
def test_golden_file_in_jobs_gives_the_bytes_of_one_job(tmp_path: Path, jobs: int) -> None:
    assert _replay(str(GOLDEN / "events.jsonl"), tmp_path / "one").returncode == 0
    completed = _replay(str(GOLDEN / "events.jsonl"), tmp_path / "many", jobs=jobs)
    assert completed.returncode == 0, completed.stderr
    _check(tmp_path / "many")
    for name in ("changes.jsonl", "memberships.json", "rejected.jsonl"):
        assert (tmp_path / "many" / name).read_bytes() == (tmp_path / "one" / name).read_bytes()


def test_an_invalid_rule_file_exits_2_with_file_line_and_column(tmp_path: Path) -> None:
    rules = tmp_path / "bad.yaml"
    rules.write_text(
        "version: 1\nbase_currency: EUR\nsegments:\n  - name: x\n    when: order() > 1\n"
    )
    completed = subprocess.run(
        [sys.executable, "-m", "streams", "replay", "--rules", str(rules),
         "--input", str(GOLDEN / "events.jsonl"), "--out", str(tmp_path / "out")],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert completed.returncode == 2
    assert f"{rules}:5:11" in completed.stderr
    assert "orders" in completed.stderr  # the suggestion
