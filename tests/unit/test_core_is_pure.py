"""The core (segments/) imports no I/O framework: STYLE.md's test of the split."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

CORE = Path(__file__).resolve().parents[2] / "segments"
SHELL_ONLY = {"click", "faust", "aiokafka", "kafka", "redis", "aiohttp", "asyncio", "streams"}


def test_no_module_of_the_core_imports_a_shell_library() -> None:
    offenders = []
    for path in sorted(CORE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            else:
                continue
            offenders += [
                f"{path.relative_to(CORE.parent)}: {name}"
                for name in names
                if name.split(".")[0] in SHELL_ONLY
            ]
    assert offenders == []
