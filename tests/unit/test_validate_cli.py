"""`segments validate`: the OK line and exit 0, or every error on stderr and exit 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from segments.data import EXAMPLE_RULES
from streams.cli.main import cli
from streams.cli.validate import load_ruleset_or_exit, validate_command

pytestmark = pytest.mark.unit

BAD_RULES = """\
version: 1
base_currency: EUR
segments:
  - name: vip
    when: order(within="182d") >= 3
  - name: lapsed
    when: days_since_last_purchase() > 90 and
      orders(chanel="pos") > 1
"""


def test_valid_file_prints_ok_and_exits_0() -> None:
    result = CliRunner().invoke(cli, ["validate", str(EXAMPLE_RULES)])
    assert result.exit_code == 0, result.output
    assert result.stdout == f"OK: {EXAMPLE_RULES} (version 1, 8 segments, 1 trigger)\n"
    assert result.stderr == ""


def test_counts_are_pluralised(tmp_path: Path) -> None:
    path = tmp_path / "one.yaml"
    path.write_text("version: 3\nbase_currency: EUR\nsegments:\n  - {name: a, when: units() > 1}\n")
    result = CliRunner().invoke(validate_command, [str(path)])
    assert result.exit_code == 0
    assert result.stdout == f"OK: {path} (version 3, 1 segment, 0 triggers)\n"


def test_invalid_file_prints_every_error_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(BAD_RULES)
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr == (
        f"{path}:5:11: error: unknown metric 'order'; did you mean 'orders'?\n"
        '        when: order(within="182d") >= 3\n'
        "              ^\n"
        f"{path}:8:14: error: unknown filter 'chanel'; did you mean 'channel'?\n"
        '          orders(chanel="pos") > 1\n'
        "                 ^\n"
        f"{path}: 2 errors\n"
    )


def test_missing_file_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    result = CliRunner().invoke(cli, ["validate", str(path)])
    assert result.exit_code == 2
    assert result.stderr.startswith(f"{path}: error: cannot read rule file: ")
    assert result.stderr.endswith(f"{path}: 1 error\n")


def test_load_or_exit_returns_the_rule_set() -> None:
    assert load_ruleset_or_exit(EXAMPLE_RULES).version == 1


def test_load_or_exit_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(BAD_RULES)
    with pytest.raises(click.exceptions.Exit) as caught:
        load_ruleset_or_exit(path)
    assert caught.value.exit_code == 2
    assert "unknown metric 'order'" in capsys.readouterr().err


def test_the_installed_command_exits_2_on_errors(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(BAD_RULES)
    completed = subprocess.run(
        [sys.executable, "-m", "streams", "validate", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert completed.returncode == 2
    assert completed.stderr.endswith(f"{path}: 2 errors\n")
