"""Rule file errors: located, compiler-style diagnostics and the exception that carries them."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class RuleError:
    """One problem in a rule file, at a 1-based line and column of that file.

    line and col are 0 when the problem has no position (the file cannot be read).
    code is a short machine-readable reason such as "unknown-metric" or "syntax".
    """

    file: str
    line: int
    col: int
    message: str
    source_line: str = ""
    code: str = "invalid"

    def __str__(self) -> str:
        if self.line <= 0:
            return f"{self.file}: error: {self.message}"
        header = f"{self.file}:{self.line}:{self.col}: error: {self.message}"
        if not self.source_line:
            return header
        # Keep the source line's tabs in the caret line so the caret lines up in a terminal.
        prefix = self.source_line[: max(self.col - 1, 0)]
        pad = "".join(ch if ch == "\t" else " " for ch in prefix)
        return f"{header}\n    {self.source_line}\n    {pad}^"


class RuleFileError(Exception):
    """A rule file is invalid; errors lists every problem found, in file order."""

    def __init__(self, errors: Iterable[RuleError]) -> None:
        # dict.fromkeys drops repeats, e.g. of a rule that a YAML alias uses twice.
        unique = dict.fromkeys(errors)
        self.errors: list[RuleError] = sorted(unique, key=lambda e: (e.line, e.col))
        if not self.errors:
            raise ValueError("RuleFileError needs at least one RuleError")
        super().__init__(self.__str__())

    def __str__(self) -> str:
        return "\n".join(str(error) for error in self.errors)


def source_line_at(text: str, line: int) -> str:
    """The 1-based line of text without its line break, or "" when out of range."""
    lines = text.splitlines()
    if 1 <= line <= len(lines):
        return lines[line - 1]
    return ""
