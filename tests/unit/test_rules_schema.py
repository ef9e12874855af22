"""The rule-file JSON Schema (segments/data/rules.schema.json) against the real loader.

Every rule file shipped in the repository must satisfy the schema (editors would
otherwise mark a valid file), and files the loader refuses for a reason the schema can
express must be refused by both: `segments validate` exits 2 and the schema reports an
error. The YAML is read as editors read it (YAML 1.2 core schema: `on` and `yes` are
text, `2025-01-01` is text, no merge keys), not with PyYAML's YAML 1.1 defaults, which
would turn a trigger's `on:` key into True.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from jsonschema import Draft202012Validator

from segments.data import EXAMPLE_RULES, RULES_SCHEMA
from segments.rules.errors import RuleFileError
from segments.rules.ruleset import load_ruleset, parse_ruleset
from streams.cli.main import cli

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
VALIDATOR = Draft202012Validator(json.loads(RULES_SCHEMA.read_text()))

_BOOL = "tag:yaml.org,2002:bool"
_INT = "tag:yaml.org,2002:int"
_FLOAT = "tag:yaml.org,2002:float"
_YAML11_ONLY = (_BOOL, _INT, _FLOAT, "tag:yaml.org,2002:timestamp", "tag:yaml.org,2002:merge")


class CoreSchemaLoader(yaml.SafeLoader):
    """PyYAML's safe loader with the YAML 1.2 core schema's implicit types."""


CoreSchemaLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _YAML11_ONLY]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
CoreSchemaLoader.add_implicit_resolver(
    _BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
CoreSchemaLoader.add_implicit_resolver(
    _INT, re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$"), list("-+0123456789")
)
CoreSchemaLoader.add_implicit_resolver(
    _FLOAT,
    re.compile(
        r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?"
        r"|[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"
    ),
    list("-+0123456789."),
)


def _core_int(loader: yaml.SafeLoader, node: yaml.Node) -> int:
    text = str(loader.construct_scalar(node))  # type: ignore[arg-type]
    if text.startswith("0o"):
        return int(text[2:], 8)
    if text.startswith("0x"):
        return int(text[2:], 16)
    return int(text, 10)  # YAML 1.2: a leading 0 is not octal


CoreSchemaLoader.add_constructor(_INT, _core_int)


def schema_errors(text: str) -> list[str]:
    data: Any = yaml.load(text, Loader=CoreSchemaLoader)  # a SafeLoader subclass
    return [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in VALIDATOR.iter_errors(data)
    ]


def shipped_rule_files() -> list[Path]:
    """Every rule file in the repository: examples, tests' rule sets, the chart's, docs'."""
    found = {EXAMPLE_RULES}
    for pattern in ("tests/**/rules*.yaml", "deploy/**/rules*.yaml", "docs/**/*rules*.yaml"):
        found.update(ROOT.glob(pattern))
    return sorted(found)


def test_the_schema_is_a_valid_draft_2020_12_schema() -> None:
    schema = json.loads(RULES_SCHEMA.read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    Draft202012Validator.check_schema(schema)

    # Editors whose support stops at draft-07 ignore a $ref's sibling keywords (the
    # descriptions shown on hover): every $ref stands alone, and $defs is only a pointer.
    def refs_with_siblings(node: Any) -> list[dict[str, Any]]:
        if isinstance(node, list):
            return [found for item in node for found in refs_with_siblings(item)]
        if not isinstance(node, dict):
            return []
        here = [node] if "$ref" in node and len(node) > 1 else []
        return here + [found for value in node.values() for found in refs_with_siblings(value)]

    assert refs_with_siblings(schema) == []


def test_every_shipped_rule_file_is_found() -> None:
    names = {path.relative_to(ROOT).as_posix() for path in shipped_rule_files()}
    assert {
        "segments/data/example_rules.yaml",
        "tests/conformance/rules.yaml",
        "tests/golden/small/rules.yaml",
        "docs/examples/first-rules.yaml",
    } <= names


@pytest.mark.parametrize(
    "path", shipped_rule_files(), ids=lambda path: path.relative_to(ROOT).as_posix()
)
def test_every_shipped_rule_file_satisfies_the_schema(path: Path) -> None:
    load_ruleset(path)  # a real rule file: the loader accepts it
    assert schema_errors(path.read_text()) == []


def test_the_readme_shows_the_shipped_first_rule_file() -> None:
    example = (ROOT / "docs" / "examples" / "first-rules.yaml").read_text()
    assert f"```yaml\n{example}```" in (ROOT / "README.md").read_text()


def test_the_docs_example_points_editors_at_the_schema() -> None:
    example = ROOT / "docs" / "examples" / "first-rules.yaml"
    modeline = example.read_text().splitlines()[0]
    match = re.fullmatch(r"# yaml-language-server: \$schema=(\S+)", modeline)
    assert match, modeline
    assert (example.parent / match.group(1)).resolve() == RULES_SCHEMA.resolve()


HEADER = "version: 1\nbase_currency: EUR\n"
SEGMENT = "segments:\n  - name: vip\n    when: orders() >= 3\n"

# Files the loader accepts that a YAML 1.1 reading, or a schema stricter than the
# loader, would get wrong.
VALID = {
    "words-yaml-1.1-reads-as-booleans": HEADER
    + "rates: {YES: 2}\nsegments:\n  - {name: vip, description: yes, when: orders() > 1}\n"
    "triggers:\n  - {name: t, segment: vip, on: exited, webhook: 'https://x.example:8443/h'}\n",
    "plain-and-quoted-rates": HEADER + "rates: {USD: 0.92, GBP: '1.17', CHF: 1}\n" + SEGMENT,
    "empty-rates-and-triggers": HEADER + "rates:\ntriggers:\n" + SEGMENT,
    "scalar-descriptions-and-guards": HEADER
    + "max_lateness: 0s\nmax_future_skew: 2w\nsegments:\n  - name: vip\n"
    "    description: 2025-01-01\n    when: orders() >= 3\n    exit_when: orders() < 2\n"
    "    min_dwell: 7d\n  - {name: b, description: 42, when: units() > 1}\n"
    "  - {name: c, description: true, when: units() > 2}\n"
    "  - {name: d, description:, when: units() > 3}\n",
    "traits-of-both-kinds": HEADER + SEGMENT + "traits:\n  - name: lifecycle\n    cases:\n"
    '      - {value: loyal, when: in_segment("vip")}\n      - {value: 1, when: orders() >= 1}\n'
    "    default: prospect\n  - {name: favourite, top_category: {within: 365d}}\n"
    "  - {name: no_default, description: x, cases: [{value: a, when: units() > 1}], default:}\n",
    "anchors-and-aliases": HEADER
    + "segments:\n  - {name: a, when: &rule orders() > 1}\n  - {name: b, when: *rule}\n",
}

# (refused file, the loader's error code): each is an error both must report.
INVALID = {
    "missing-segments": (HEADER, "missing-key"),
    "missing-version": ("base_currency: EUR\n" + SEGMENT, "missing-key"),
    "unknown-top-level-key": (HEADER + "segmets: []\n" + SEGMENT, "unknown-key"),
    "unknown-segment-key": (
        HEADER + "segments:\n  - {name: vip, whne: orders() > 1}\n",
        "unknown-key",
    ),
    "quoted-version": ('version: "1"\nbase_currency: EUR\n' + SEGMENT, "bad-value"),
    "version-zero": ("version: 0\nbase_currency: EUR\n" + SEGMENT, "bad-value"),
    "lowercase-currency": ("version: 1\nbase_currency: eur\n" + SEGMENT, "bad-value"),
    "empty-segment-list": (HEADER + "segments: []\n", "bad-value"),
    "bad-segment-name": (
        HEADER + "segments:\n  - {name: Win-Back, when: orders() > 1}\n",
        "bad-value",
    ),
    "rule-missing": (HEADER + "segments:\n  - name: vip\n    when:\n", "bad-value"),
    "rule-is-a-number": (HEADER + "segments:\n  - {name: vip, when: 3}\n", "expected-comparison"),
    "combined-duration": (HEADER + SEGMENT + "    min_dwell: 1d12h\n", "bad-value"),
    "duration-without-unit": (HEADER + "max_lateness: 30\n" + SEGMENT, "bad-value"),
    "zero-rate": (HEADER + "rates: {USD: '0.0'}\n" + SEGMENT, "bad-value"),
    "negative-rate": (HEADER + "rates: {USD: -1}\n" + SEGMENT, "bad-value"),
    "rate-of-a-bad-code": (HEADER + "rates: {usd: 1}\n" + SEGMENT, "bad-value"),
    "trigger-on-enter": (
        HEADER + SEGMENT + "triggers:\n  - {name: t, segment: vip, on: enter, "
        "webhook: 'http://127.0.0.1/h'}\n",
        "bad-value",
    ),
    "trigger-ftp-webhook": (
        HEADER + SEGMENT + "triggers:\n  - {name: t, segment: vip, on: entered, "
        "webhook: 'ftp://host/h'}\n",
        "bad-value",
    ),
    "trigger-webhook-without-host": (
        HEADER + SEGMENT + "triggers:\n  - {name: t, segment: vip, on: entered, "
        "webhook: 'http:///h'}\n",
        "bad-value",
    ),
    "trigger-without-webhook": (
        HEADER + SEGMENT + "triggers:\n  - {name: t, segment: vip, on: entered}\n",
        "missing-key",
    ),
    "trigger-bad-name": (
        HEADER + SEGMENT + "triggers:\n  - {name: Mail, segment: vip, on: entered, "
        "webhook: 'http://h/'}\n",
        "bad-value",
    ),
    "trait-with-both-kinds": (
        HEADER + SEGMENT + "traits:\n  - {name: t, top_category: {within: 30d}, "
        "cases: [{value: a, when: orders() > 1}]}\n",
        "bad-trait",
    ),
    "trait-with-neither-kind": (HEADER + SEGMENT + "traits:\n  - {name: t}\n", "bad-trait"),
    "trait-default-with-top-category": (
        HEADER + SEGMENT + "traits:\n  - {name: t, top_category: {within: 30d}, default: x}\n",
        "bad-trait",
    ),
    "trait-window-in-weeks": (
        HEADER + SEGMENT + "traits:\n  - {name: t, top_category: {within: 2w}}\n",
        "bad-value",
    ),
    "trait-case-without-when": (
        HEADER + SEGMENT + "traits:\n  - {name: t, cases: [{value: a}]}\n",
        "missing-key",
    ),
    "trait-unknown-key": (
        HEADER + SEGMENT + "traits:\n  - {name: t, case: [{value: a, when: orders() > 1}]}\n",
        "unknown-key",
    ),
    "trait-bad-name": (
        HEADER + SEGMENT + "traits:\n  - {name: Top, top_category: {within: 30d}}\n",
        "bad-value",
    ),
    "merge-key": (
        HEADER + "base: &base {when: orders() > 1}\n" + "segments:\n  - {<<: *base, name: a}\n",
        "unknown-key",
    ),
}


def validate(path: Path) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["validate", str(path)])
    return result.exit_code, result.stderr


@pytest.mark.parametrize("text", VALID.values(), ids=VALID.keys())
def test_files_the_validator_accepts_satisfy_the_schema(text: str, tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    assert validate(path) == (0, "")
    assert schema_errors(text) == []


@pytest.mark.parametrize("text,code", INVALID.values(), ids=INVALID.keys())
def test_schema_and_validator_both_refuse(text: str, code: str, tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    exit_code, stderr = validate(path)
    assert exit_code == 2, stderr
    assert schema_errors(text), "the schema accepted a file `segments validate` refuses"
    with pytest.raises(RuleFileError) as caught:  # refused for the reason the case is about
        parse_ruleset(text)
    assert code in {error.code for error in caught.value.errors}, caught.value.errors
