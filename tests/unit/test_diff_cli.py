"""`segments diff` as a user runs it: the table, --json, exit codes and error messages."""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.test_diff import AS_OF, EVENTS, NEW, OLD

pytestmark = pytest.mark.unit


def segments(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "streams", *args], capture_output=True, text=True, check=False
    )


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "old.yaml").write_text(OLD)
    (tmp_path / "new.yaml").write_text(NEW)
    with gzip.open(tmp_path / "events.jsonl.gz", "wb") as events:
        events.write(b"\n".join(EVENTS) + b"\n")
    return {name: str(tmp_path / name) for name in ("old.yaml", "new.yaml", "events.jsonl.gz")}


def diff_args(files: dict[str, str], *extra: str) -> list[str]:
    return [
        "diff",
        "--old",
        files["old.yaml"],
        "--new",
        files["new.yaml"],
        "--input",
        files["events.jsonl.gz"],
        "--as-of",
        AS_OF,
        *extra,
    ]


def test_table_on_stdout_exit_0(files: dict[str, str]) -> None:
    completed = segments(*diff_args(files))
    assert completed.returncode == 0, completed.stderr
    assert completed.stderr == ""
    lines = completed.stdout.splitlines()
    assert lines[0] == (
        f"{files['old.yaml']} (version 1) -> {files['new.yaml']} (version 2) at {AS_OF}"
    )
    assert "regular  kept          1      2        1       0" in lines
    assert "entered big: b, c" in lines


def test_json_on_stdout_and_warnings_on_stderr(files: dict[str, str]) -> None:
    Path(files["new.yaml"]).write_text(NEW.replace("version: 2", "version: 1"))
    completed = segments(*diff_args(files, "--json", "--sample", "1"))
    assert completed.returncode == 0, completed.stderr
    document = json.loads(completed.stdout)
    assert document["new"]["switched_as_version"] == 2
    regular = next(s for s in document["segments"] if s["name"] == "regular")
    assert (regular["entered"], regular["exited"], regular["sample"]["entered"]) == (1, 0, ["b"])
    assert completed.stderr.startswith("warning: both files have version 1")
    assert document["warnings"] == [completed.stderr.removeprefix("warning: ").rstrip("\n")]


def test_a_broken_rule_file_exits_2_with_its_position(files: dict[str, str]) -> None:
    Path(files["new.yaml"]).write_text(NEW.replace("orders(within", "order(within", 1))
    completed = segments(*diff_args(files))
    assert completed.returncode == 2
    assert completed.stdout == ""
    assert completed.stderr.startswith(
        f"{files['new.yaml']}:5:11: error: unknown metric 'order'; did you mean 'orders'?\n"
    )
    assert completed.stderr.endswith(f"{files['new.yaml']}: 1 error\n")


def test_the_old_rule_file_is_checked_too(files: dict[str, str]) -> None:
    Path(files["old.yaml"]).write_text(OLD + "foo: 1\n")
    completed = segments(*diff_args(files))
    assert completed.returncode == 2
    assert completed.stderr.startswith(f"{files['old.yaml']}:10:1: error: unknown key 'foo'")


def test_errors_of_both_files_are_printed(files: dict[str, str]) -> None:
    Path(files["old.yaml"]).write_text(OLD + "foo: 1\n")
    Path(files["new.yaml"]).write_text(NEW.replace("orders(within", "order(within", 1))
    completed = segments(*diff_args(files))
    assert completed.returncode == 2
    assert f"{files['old.yaml']}: 1 error\n{files['new.yaml']}:5:11: error:" in completed.stderr
    assert completed.stderr.endswith(f"{files['new.yaml']}: 1 error\n")


def test_a_missing_input_or_a_bad_instant_is_a_usage_error(files: dict[str, str]) -> None:
    missing = diff_args(files)
    missing[missing.index("--input") + 1] = files["events.jsonl.gz"] + ".nope"
    completed = segments(*missing)
    assert completed.returncode == 2
    assert "Invalid value for --input: no such file:" in completed.stderr

    directory = diff_args(files)
    directory[directory.index("--input") + 1] = str(Path(files["old.yaml"]).parent)
    completed = segments(*directory)
    assert completed.returncode == 2
    assert "Invalid value for --input: not a file:" in completed.stderr

    naive = diff_args(files)
    naive[naive.index("--as-of") + 1] = "2026-03-01T00:00:00"
    completed = segments(*naive)
    assert completed.returncode == 2
    assert "Invalid value for --as-of" in completed.stderr
    assert "has no UTC offset" in completed.stderr

    without = diff_args(files)[:-2]
    completed = segments(*without)
    assert completed.returncode == 2
    assert "Missing option '--as-of'" in completed.stderr


def test_input_from_standard_input(files: dict[str, str]) -> None:
    args = diff_args(files, "--json")
    args[args.index("--input") + 1] = "-"
    completed = subprocess.run(
        [sys.executable, "-m", "streams", *args],
        input=b"\n".join(EVENTS),
        capture_output=True,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert json.loads(completed.stdout)["input"]["events_read"] == len(EVENTS)


def test_an_unreadable_input_is_reported_not_a_traceback(files: dict[str, str]) -> None:
    Path(files["events.jsonl.gz"]).write_bytes(b"\x1f\x8b\x08\x00garbage")
    completed = segments(*diff_args(files))
    assert completed.returncode == 1
    assert completed.stderr.startswith(f"Error: cannot read {files['events.jsonl.gz']}:")
    assert "Traceback" not in completed.stderr
