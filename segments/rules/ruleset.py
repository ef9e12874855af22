"""A rule file (YAML) loaded into a validated, immutable RuleSet."""

from __future__ import annotations

import os
import re
import zoneinfo
from dataclasses import dataclass, field, replace
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from segments.rules.ast import Expr, InSegment, children
from segments.rules.errors import RuleError, RuleFileError, source_line_at
from segments.rules.parser import Position, closest, parse_located, positions_from

MICROS_PER_DAY = 86_400_000_000


@dataclass(frozen=True, slots=True)
class Segment:
    name: str
    description: str
    when: Expr
    exit_when: Expr | None = None  # the customer leaves only when this holds
    min_dwell: int | None = None  # microseconds; no exit before this long in the segment


@dataclass(frozen=True, slots=True)
class Trigger:
    name: str
    segment: str
    on: str  # "entered" | "exited"
    webhook: str
    cooldown: int = 0  # microseconds


@dataclass(frozen=True, slots=True)
class TraitCase:
    value: str
    when: Expr


@dataclass(frozen=True, slots=True)
class Trait:
    """A categorical value per customer (SPEC section 3, language 2): either `cases`
    (the first whose `when` holds gives the value, else `default`) or `top_category`
    (the category with the most spend in the last `top_category_days` days)."""

    name: str
    description: str = ""
    cases: tuple[TraitCase, ...] = ()
    default: str | None = None
    top_category_days: int | None = None


@dataclass(frozen=True, slots=True)
class RuleSet:
    version: int
    base_currency: str
    segments: tuple[Segment, ...]
    timezone: str = "UTC"
    rates: dict[str, Decimal] = field(default_factory=dict)  # units of base per unit
    triggers: tuple[Trigger, ...] = ()
    traits: tuple[Trait, ...] = ()
    max_lateness: int = 30 * MICROS_PER_DAY  # microseconds
    max_future_skew: int = 5 * 60 * 1_000_000  # microseconds, wall-clock mode only
    source: str = "<memory>"


# --- loading --------------------------------------------------------------------------
# The file is read through PyYAML's compose API: nodes keep their source marks, so every
# error has a line and column, and scalars are never constructed (no float for a rate,
# no YAML 1.1 surprises such as `on` meaning True).

MAX_DURATION_DAYS = 36_500
DURATION_UNITS: dict[str, int] = {
    "s": 1_000_000,
    "m": 60 * 1_000_000,
    "h": 3_600 * 1_000_000,
    "d": MICROS_PER_DAY,
    "w": 7 * MICROS_PER_DAY,
}
TOP_LEVEL_KEYS = (
    "version",
    "timezone",
    "base_currency",
    "rates",
    "segments",
    "triggers",
    "max_lateness",
    "max_future_skew",
    "traits",
)
TRAIT_KEYS = ("name", "description", "cases", "default", "top_category")
CASE_KEYS = ("value", "when")
TOP_CATEGORY_KEYS = ("within",)
SEGMENT_KEYS = ("name", "description", "when", "exit_when", "min_dwell")
TRIGGER_KEYS = ("name", "segment", "on", "webhook", "cooldown")
TRIGGER_EVENTS = ("entered", "exited")

_DURATION = re.compile(r"([0-9]+)([smhdw])")
_VERSION = re.compile(r"[1-9][0-9]*")
_CURRENCY = re.compile(r"[A-Z]{3}")
_RATE = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_SEGMENT_NAME = re.compile(r"[a-z][a-z0-9_]*")
_WITHIN_DAYS = re.compile(r"[1-9][0-9]*d")
_TRIGGER_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
_NULL_TAG = "tag:yaml.org,2002:null"
_NODE_PROPERTIES = re.compile(r"(?:[&!]\S*\s+)*")  # anchors and tags before a scalar
_BLOCK_HEADER = re.compile(r"[|>][-+0-9]*[ \t]*(?:#[^\n\r\x85\u2028\u2029]*)?")


def parse_duration(text: str) -> int:
    """A duration such as "30d", "2w", "12h", "15m" or "45s" -> microseconds.

    Raises ValueError naming what was expected.
    """
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ValueError(
            f"invalid duration {text!r}: expected a whole number and a unit "
            '(s, m, h, d or w), e.g. "30d"'
        )
    micros = int(match.group(1)) * DURATION_UNITS[match.group(2)]
    if micros > MAX_DURATION_DAYS * MICROS_PER_DAY:
        raise ValueError(f"duration {text!r} is too long: at most {MAX_DURATION_DAYS}d")
    return micros


def load_ruleset(path: str | os.PathLike[str]) -> RuleSet:
    """Read and validate a rule file. Raises RuleFileError listing every problem."""
    name = os.fspath(path)
    try:
        data = Path(name).read_bytes()
    except OSError as error:
        reason = error.strerror or str(error)
        raise RuleFileError(
            [RuleError(name, 0, 0, f"cannot read rule file: {reason}", code="io")]
        ) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        good = data[: error.start].decode("utf-8")
        line = good.count("\n") + 1
        col = len(good) - (good.rfind("\n") + 1) + 1
        raise RuleFileError(
            [RuleError(name, line, col, "the rule file is not valid UTF-8", code="encoding")]
        ) from None
    return parse_ruleset(text, name)


def parse_ruleset(text: str, source_name: str = "<memory>") -> RuleSet:
    """Validate the text of a rule file; source_name is used in errors and as RuleSet.source."""
    return _RuleFileReader(text, source_name).read()


class _RuleFileReader:
    """Walks the composed YAML tree, collecting every problem before giving up."""

    def __init__(self, text: str, source_name: str) -> None:
        self.text = text
        self.source_name = source_name
        self.errors: list[RuleError] = []
        # Every well-formed segment name, even of a segment with a broken rule: a trigger
        # naming it must not get a second, misleading "unknown segment" error.
        self.segment_names: list[str] = []

    # errors

    def error_at(self, line: int, col: int, message: str, code: str) -> None:
        self.errors.append(
            RuleError(
                file=self.source_name,
                line=line,
                col=col,
                message=message,
                source_line=source_line_at(self.text, line),
                code=code,
            )
        )

    def error(self, node: yaml.Node, message: str, code: str = "invalid") -> None:
        self.error_at(node.start_mark.line + 1, node.start_mark.column + 1, message, code)

    # the document

    def read(self) -> RuleSet:
        root = self.compose()
        ruleset = self.rule_set(root) if root is not None else None
        if self.errors or ruleset is None:
            raise RuleFileError(self.errors)
        return ruleset

    def compose(self) -> yaml.Node | None:
        try:
            root = yaml.compose(self.text, Loader=yaml.SafeLoader)
        except yaml.MarkedYAMLError as error:
            mark = error.problem_mark or error.context_mark
            problem = error.problem or "invalid YAML"
            if error.context and error.problem:
                problem = f"{error.context}: {error.problem}"
            line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
            self.error_at(line, col, f"invalid YAML: {problem}", "yaml")
            return None
        except RecursionError:
            self.error_at(1, 1, "invalid YAML: nested too deeply", "yaml")
            return None
        except yaml.reader.ReaderError as error:  # a character YAML does not allow
            before = self.text[: error.position]
            line = before.count("\n") + 1
            col = len(before) - (before.rfind("\n") + 1) + 1
            character = error.character
            code = character if isinstance(character, int) else ord(character)
            self.error_at(line, col, f"invalid YAML: character U+{code:04X} is not allowed", "yaml")
            return None
        if root is None:
            self.error_at(
                1,
                1,
                "the rule file is empty: expected version, base_currency and segments",
                "missing-key",
            )
        return root

    def rule_set(self, root: yaml.Node) -> RuleSet | None:
        fields = self.mapping(
            root, "the rule file", TOP_LEVEL_KEYS, required=("version", "base_currency", "segments")
        )
        if fields is None:
            return None
        version = self.version(fields["version"]) if "version" in fields else None
        timezone = self.timezone(fields["timezone"]) if "timezone" in fields else "UTC"
        base_currency = (
            self.currency(fields["base_currency"]) if "base_currency" in fields else None
        )
        rates = self.rates(fields["rates"], base_currency) if "rates" in fields else {}
        segments = self.segments(fields["segments"]) if "segments" in fields else ()
        triggers = self.triggers(fields["triggers"]) if "triggers" in fields else ()
        traits = self.traits(fields["traits"]) if "traits" in fields else ()
        max_lateness = self.duration(fields["max_lateness"]) if "max_lateness" in fields else None
        max_future_skew = (
            self.duration(fields["max_future_skew"]) if "max_future_skew" in fields else None
        )
        if self.errors or version is None or base_currency is None or not segments:
            return None
        ruleset = RuleSet(
            version=version,
            base_currency=base_currency,
            segments=segments,
            timezone=timezone,
            rates=rates,
            triggers=triggers,
            traits=traits,
            source=self.source_name,
        )
        if max_lateness is not None:
            ruleset = replace(ruleset, max_lateness=max_lateness)
        if max_future_skew is not None:
            ruleset = replace(ruleset, max_future_skew=max_future_skew)
        return ruleset

    # structure

    def mapping(
        self,
        node: yaml.Node,
        what: str,
        allowed: tuple[str, ...],
        required: tuple[str, ...] = (),
    ) -> dict[str, yaml.Node] | None:
        """The mapping's values by key; reports unknown, duplicate and missing keys."""
        if not isinstance(node, yaml.MappingNode):
            self.error(node, f"expected a mapping for {what}, found {_kind(node)}", "bad-value")
            return None
        fields: dict[str, yaml.Node] = {}
        keys: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                self.error(
                    key_node, f"expected a key name in {what}, found {_kind(key_node)}", "bad-key"
                )
                continue
            key = key_node.value
            if key in keys:
                first = keys[key].start_mark
                self.error(
                    key_node,
                    f"duplicate key '{key}' in {what} "
                    f"(first at {first.line + 1}:{first.column + 1})",
                    "duplicate-key",
                )
                continue
            keys[key] = key_node
            if key not in allowed:
                suggestion = closest(key, allowed)
                hint = (
                    f"; did you mean '{suggestion}'?"
                    if suggestion
                    else f"; expected one of: {', '.join(allowed)}"
                )
                self.error(key_node, f"unknown key '{key}' in {what}{hint}", "unknown-key")
                continue
            fields[key] = value_node
        for key in required:
            if key not in keys:
                self.error(node, f"{what} is missing the required key '{key}'", "missing-key")
        return fields

    def string(self, node: yaml.Node, what: str) -> str | None:
        """The scalar's source value (never constructed: `on`, `yes`, `1.0` stay text)."""
        if not isinstance(node, yaml.ScalarNode):
            self.error(node, f"expected a string for {what}, found {_kind(node)}", "bad-value")
            return None
        if _is_null(node):
            self.error(node, f"expected a value for {what}, found nothing", "bad-value")
            return None
        return str(node.value)

    # top-level values

    def version(self, node: yaml.Node) -> int | None:
        if (
            isinstance(node, yaml.ScalarNode)
            and node.style is None
            and _VERSION.fullmatch(node.value)
        ):
            return int(node.value)
        self.error(
            node, f"expected version to be an integer >= 1, found {_shown(node)}", "bad-value"
        )
        return None

    def timezone(self, node: yaml.Node) -> str:
        name = self.string(node, "timezone")
        if name is None:
            return "UTC"
        zones = _timezones()
        if name == "UTC" or name in zones:
            return name
        suggestion = closest(name, sorted(zones))
        hint = f"; did you mean '{suggestion}'?" if suggestion else ", e.g. 'Europe/Paris'"
        self.error(node, f"unknown timezone '{name}': expected an IANA name{hint}", "bad-value")
        return "UTC"

    def currency(self, node: yaml.Node, what: str = "base_currency") -> str | None:
        code = self.string(node, what)
        if code is None:
            return None
        if not _CURRENCY.fullmatch(code):
            self.error(
                node,
                f"invalid currency code '{code}' for {what}: "
                "expected 3 capital letters such as 'EUR'",
                "bad-value",
            )
            return None
        return code

    def rates(self, node: yaml.Node, base_currency: str | None) -> dict[str, Decimal]:
        if isinstance(node, yaml.ScalarNode) and _is_null(node):
            return {}
        if not isinstance(node, yaml.MappingNode):
            self.error(
                node,
                f"expected a mapping of currency code to rate for rates, found {_kind(node)}",
                "bad-value",
            )
            return {}
        rates: dict[str, Decimal] = {}
        seen: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            code = self.currency(key_node, "a rate")
            if code is None:
                continue
            if code in seen:
                first = seen[code].start_mark
                self.error(
                    key_node,
                    f"duplicate rate for {code} (first at {first.line + 1}:{first.column + 1})",
                    "duplicate-key",
                )
                continue
            seen[code] = key_node
            rate = self.rate(value_node, code)
            if rate is None:
                continue
            if code == base_currency and rate != 1:
                self.error(
                    value_node,
                    f"the rate of the base currency {code} must be 1 (or left out), found {rate}",
                    "bad-value",
                )
                continue
            rates[code] = rate
        return rates

    def rate(self, node: yaml.Node, code: str) -> Decimal | None:
        # A plain YAML number is read from its source text, never through float.
        if (
            isinstance(node, yaml.ScalarNode)
            and not _is_null(node)
            and _RATE.fullmatch(node.value)
            and Decimal(node.value) > 0
        ):
            return Decimal(node.value)
        self.error(
            node,
            f'invalid rate for {code}: expected a positive decimal such as "0.92", '
            f"found {_shown(node)}",
            "bad-value",
        )
        return None

    def duration(self, node: yaml.Node, what: str = "") -> int | None:
        text = self.string(node, what or "a duration")
        if text is None:
            return None
        try:
            return parse_duration(text)
        except ValueError as error:
            self.error(node, str(error), "bad-value")
            return None

    # segments and triggers

    def segments(self, node: yaml.Node) -> tuple[Segment, ...]:
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            self.error(
                node,
                f"expected a non-empty list of segments, found {_kind(node)}",
                "bad-value",
            )
            return ()
        segments: list[Segment] = []
        names: dict[str, yaml.Node] = {}
        # (the segment's name or None, its rules) in file order, for in_segment references
        rules: list[tuple[str | None, list[Expr]]] = []
        for item in node.value:
            what = _label(item, "segment")
            fields = self.mapping(item, what, SEGMENT_KEYS, required=("name", "when"))
            if fields is None:
                continue
            name = self.segment_name(fields["name"], names) if "name" in fields else None
            description = self.description(fields["description"]) if "description" in fields else ""
            when = self.expression(fields["when"], "when") if "when" in fields else None
            exit_when = (
                self.expression(fields["exit_when"], "exit_when") if "exit_when" in fields else None
            )
            min_dwell = (
                self.duration(fields["min_dwell"], "min_dwell") if "min_dwell" in fields else None
            )
            rules.append((name, [rule for rule in (when, exit_when) if rule is not None]))
            if name is not None and when is not None:
                segments.append(Segment(name, description, when, exit_when, min_dwell))
        self.segment_references(rules)
        return tuple(segments)

    def segment_references(self, rules: list[tuple[str | None, list[Expr]]]) -> None:
        """in_segment("x") must name a segment defined earlier in the file: segments are
        evaluated in file order, each seeing the memberships of those before it."""
        every = self.segment_names
        earlier: list[str] = []
        for name, expressions in rules:
            for expression in expressions:
                for ref in _segment_refs(expression):
                    if ref.name in earlier:
                        continue
                    if ref.name == name:
                        message = (
                            f"segment '{name}' cannot refer to itself: in_segment names a "
                            "segment defined earlier in the file"
                        )
                    elif ref.name in every:
                        message = (
                            f'in_segment("{ref.name}") refers to a segment defined later in '
                            f"the file: move '{ref.name}' above '{name}' (segments see only "
                            "the memberships of segments defined before them)"
                        )
                    else:
                        suggestion = closest(ref.name, earlier)
                        hint = (
                            f"; did you mean '{suggestion}'?"
                            if suggestion
                            else f" (earlier segments: {', '.join(earlier) or 'none'})"
                        )
                        message = f"unknown segment '{ref.name}' in in_segment{hint}"
                    self.error_at(ref.line, ref.col, message, "bad-segment-reference")
            if name is not None:
                earlier.append(name)

    def new_name(
        self,
        node: yaml.Node,
        names: dict[str, yaml.Node],
        kind: str,
        pattern: re.Pattern[str],
        expected: str,
    ) -> str | None:
        """A `kind` name (segment, trait, trigger) that matches `pattern` and is not in
        `names` yet; None after reporting what is wrong. The caller records it."""
        name = self.string(node, f"a {kind} name")
        if name is None:
            return None
        if not pattern.fullmatch(name):
            self.error(node, f"invalid {kind} name '{name}': expected {expected}", "bad-value")
            return None
        if name in names:
            first = names[name].start_mark
            self.error(
                node,
                f"duplicate {kind} name '{name}' (first at {first.line + 1}:{first.column + 1})",
                "duplicate-name",
            )
            return None
        return name

    def segment_name(self, node: yaml.Node, names: dict[str, yaml.Node]) -> str | None:
        name = self.new_name(
            node,
            names,
            "segment",
            _SEGMENT_NAME,
            "a lowercase letter, then lowercase letters, digits or '_' (e.g. 'win_back')",
        )
        if name is None:
            return None
        names[name] = node
        self.segment_names.append(name)
        return name

    def description(self, node: yaml.Node) -> str:
        if isinstance(node, yaml.ScalarNode) and _is_null(node):
            return ""
        text = self.string(node, "description")
        return text.strip() if text is not None else ""

    def expression(self, node: yaml.Node, what: str) -> Expr | None:
        if not isinstance(node, yaml.ScalarNode):
            self.error(node, f"expected a rule for {what}, found {_kind(node)}", "bad-value")
            return None
        if _is_null(node) or not node.value.strip():
            self.error(node, f"expected a rule for {what}, found nothing", "bad-value")
            return None
        source, positions = self.scalar_source(node)
        try:
            return parse_located(
                source, positions, source_name=self.source_name, file_text=self.text
            )
        except RuleFileError as error:
            self.errors.extend(error.errors)
            return None

    def scalar_source(self, node: yaml.ScalarNode) -> tuple[str, list[Position]]:
        """The scalar's text with the file position of each character.

        Plain and block scalars are read from the raw source between the node's marks:
        folding only changes whitespace, which the rule language ignores. Quoted scalars
        are unescaped here with positions kept. Should either disagree with the value
        PyYAML composed, the value is used with every position at the scalar's start.
        """
        start, end = node.start_mark.index, node.end_mark.index
        raw = self.text[start:end]
        positions = positions_from(raw, node.start_mark.line + 1, node.start_mark.column + 1)
        skip = _NODE_PROPERTIES.match(raw)
        offset = skip.end() if skip else 0
        raw, positions = raw[offset:], positions[offset:]
        candidate: tuple[str, list[Position]] | None = None
        if node.style in (">", "|"):
            header = _BLOCK_HEADER.match(raw)
            if header is not None:
                candidate = raw[header.end() :], positions[header.end() :]
        elif node.style is None:
            candidate = raw, positions
        elif node.style in ("'", '"') and raw[:1] == node.style:
            unquoted = _unquote(raw, positions, node.style)
            if unquoted is not None and unquoted[0] == node.value:
                candidate = unquoted
        if candidate is not None and " ".join(candidate[0].split()) == " ".join(node.value.split()):
            return candidate
        value = str(node.value)
        return value, [(node.start_mark.line + 1, node.start_mark.column + 1)] * (len(value) + 1)

    def triggers(self, node: yaml.Node) -> tuple[Trigger, ...]:
        if isinstance(node, yaml.ScalarNode) and _is_null(node):
            return ()
        if not isinstance(node, yaml.SequenceNode):
            self.error(node, f"expected a list of triggers, found {_kind(node)}", "bad-value")
            return ()
        triggers: list[Trigger] = []
        names: dict[str, yaml.Node] = {}
        for item in node.value:
            fields = self.mapping(
                item,
                _label(item, "trigger"),
                TRIGGER_KEYS,
                required=("name", "segment", "on", "webhook"),
            )
            if fields is None:
                continue
            name = self.trigger_name(fields["name"], names) if "name" in fields else None
            segment = self.trigger_segment(fields["segment"]) if "segment" in fields else None
            on = self.trigger_event(fields["on"]) if "on" in fields else None
            webhook = self.webhook(fields["webhook"]) if "webhook" in fields else None
            cooldown = self.duration(fields["cooldown"], "cooldown") if "cooldown" in fields else 0
            if None not in (name, segment, on, webhook, cooldown):
                assert name and segment and on and webhook and cooldown is not None
                triggers.append(Trigger(name, segment, on, webhook, cooldown))
        return tuple(triggers)

    def trigger_name(self, node: yaml.Node, names: dict[str, yaml.Node]) -> str | None:
        name = self.new_name(
            node,
            names,
            "trigger",
            _TRIGGER_NAME,
            "lowercase letters, digits, '_' or '-' (e.g. 'winback-email')",
        )
        if name is None:
            return None
        names[name] = node
        return name

    def trigger_segment(self, node: yaml.Node) -> str | None:
        name = self.string(node, "a trigger's segment")
        if name is None:
            return None
        if name not in self.segment_names:
            suggestion = closest(name, self.segment_names)
            hint = f"; did you mean '{suggestion}'?" if suggestion else ""
            self.error(node, f"unknown segment '{name}'{hint}", "unknown-segment")
            return None
        return name

    def trigger_event(self, node: yaml.Node) -> str | None:
        event = self.string(node, "on")
        if event is None:
            return None
        if event not in TRIGGER_EVENTS:
            self.error(
                node, f"invalid value '{event}' for on: expected 'entered' or 'exited'", "bad-value"
            )
            return None
        return event

    def webhook(self, node: yaml.Node) -> str | None:
        url = self.string(node, "webhook")
        if url is None:
            return None
        try:
            parts = urlsplit(url)
            valid = (
                parts.scheme in ("http", "https")
                and bool(parts.hostname)
                and not any(ch.isspace() for ch in url)
            )
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            valid = False
        if not valid:
            self.error(
                node,
                f"invalid webhook '{url}': expected an http:// or https:// URL with a host",
                "bad-value",
            )
            return None
        return url

    # traits

    def traits(self, node: yaml.Node) -> tuple[Trait, ...]:
        if isinstance(node, yaml.ScalarNode) and _is_null(node):
            return ()
        if not isinstance(node, yaml.SequenceNode):
            self.error(node, f"expected a list of traits, found {_kind(node)}", "bad-value")
            return ()
        traits: list[Trait] = []
        names: dict[str, yaml.Node] = {}
        for item in node.value:
            what = _label(item, "trait")
            reported = len(self.errors)
            fields = self.mapping(item, what, TRAIT_KEYS, required=("name",))
            if fields is None:
                continue
            name = self.trait_name(fields["name"], names) if "name" in fields else None
            description = self.description(fields["description"]) if "description" in fields else ""
            has_cases, has_top = "cases" in fields, "top_category" in fields
            if has_cases == has_top:
                if not has_cases and len(self.errors) > reported:
                    continue  # most likely a misspelt key, already reported with a hint
                self.error(
                    item,
                    f"{what} needs exactly one of 'cases' (with an optional 'default') and "
                    f"'top_category', found {'both' if has_cases else 'neither'}",
                    "bad-trait",
                )
                continue
            if has_top:
                if "default" in fields:
                    self.error(
                        fields["default"],
                        f"{what}: 'default' goes with 'cases'; top_category is null when "
                        "nothing was bought in its window",
                        "bad-trait",
                    )
                days = self.top_category(fields["top_category"], what)
                if name is not None and days is not None:
                    traits.append(Trait(name, description, top_category_days=days))
                continue
            cases = self.cases(fields["cases"], what)
            default = (
                self.trait_value(fields["default"], "default") if "default" in fields else None
            )
            if name is not None and cases is not None:
                traits.append(Trait(name, description, cases=cases, default=default))
        return tuple(traits)

    def trait_name(self, node: yaml.Node, names: dict[str, yaml.Node]) -> str | None:
        name = self.new_name(
            node,
            names,
            "trait",
            _SEGMENT_NAME,
            "a lowercase letter, then lowercase letters, digits or '_' (e.g. 'lifecycle')",
        )
        if name is None:
            return None
        if name in self.segment_names:
            self.error(
                node,
                f"trait name '{name}' is also a segment name: a trait and a segment need "
                "different names",
                "duplicate-name",
            )
            return None
        names[name] = node
        return name

    def trait_value(self, node: yaml.Node, what: str) -> str | None:
        if isinstance(node, yaml.ScalarNode) and _is_null(node) and what == "default":
            return None  # `default: null` or `default:` is the absent default
        return self.string(node, f"a trait's {what}")

    def cases(self, node: yaml.Node, what: str) -> tuple[TraitCase, ...] | None:
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            self.error(
                node,
                f"expected a non-empty list of cases ({{value: ..., when: ...}}) for {what}, "
                f"found {_kind(node)}",
                "bad-value",
            )
            return None
        cases: list[TraitCase] = []
        broken = False
        for item in node.value:
            fields = self.mapping(item, f"a case of {what}", CASE_KEYS, required=CASE_KEYS)
            if fields is None:
                broken = True
                continue
            value = self.trait_value(fields["value"], "value") if "value" in fields else None
            when = self.expression(fields["when"], "when") if "when" in fields else None
            if when is not None:
                self.trait_references(when)
            if value is None or when is None:
                broken = True
                continue
            cases.append(TraitCase(value, when))
        return None if broken else tuple(cases)

    def trait_references(self, expr: Expr) -> None:
        """A case may read any segment: every segment is evaluated before the traits."""
        for ref in _segment_refs(expr):
            if ref.name in self.segment_names:
                continue
            suggestion = closest(ref.name, self.segment_names)
            hint = (
                f"; did you mean '{suggestion}'?"
                if suggestion
                else f" (segments: {', '.join(self.segment_names) or 'none'})"
            )
            self.error_at(
                ref.line,
                ref.col,
                f"unknown segment '{ref.name}' in in_segment{hint}",
                "bad-segment-reference",
            )

    def top_category(self, node: yaml.Node, what: str) -> int | None:
        fields = self.mapping(
            node, f"top_category of {what}", TOP_CATEGORY_KEYS, required=TOP_CATEGORY_KEYS
        )
        if fields is None or "within" not in fields:
            return None
        text = self.string(fields["within"], "within")
        if text is None:
            return None
        if not _WITHIN_DAYS.fullmatch(text) or int(text[:-1]) > MAX_DURATION_DAYS:
            self.error(
                fields["within"],
                f"invalid window '{text}' for top_category: expected a whole number of days "
                f'from 1d to {MAX_DURATION_DAYS}d, e.g. "365d"',
                "bad-value",
            )
            return None
        return int(text[:-1])


def _segment_refs(expr: Expr) -> list[InSegment]:
    """Every in_segment(...) of a rule, in source order."""
    if isinstance(expr, InSegment):
        return [expr]
    return [ref for child in children(expr) for ref in _segment_refs(child)]


def _label(item: yaml.Node, kind: str) -> str:
    """ "segment 'vip'" when the item has a usable name, else "a segment" (for messages)."""
    if isinstance(item, yaml.MappingNode):
        for key, value in item.value:
            if (
                isinstance(key, yaml.ScalarNode)
                and key.value == "name"
                and isinstance(value, yaml.ScalarNode)
                and value.value
                and not _is_null(value)
            ):
                return f"{kind} '{value.value}'"
    return f"a {kind}"


def _is_null(node: yaml.ScalarNode) -> bool:
    return bool(node.tag == _NULL_TAG and node.style is None)


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list" if node.value else "an empty list"
    if isinstance(node, yaml.ScalarNode) and _is_null(node):
        return "nothing"
    return f"'{node.value}'"


def _shown(node: yaml.Node) -> str:
    if isinstance(node, yaml.ScalarNode) and node.style in ("'", '"'):
        return f"the quoted string {node.style}{node.value}{node.style}"
    return _kind(node)


@lru_cache(maxsize=1)
def _timezones() -> frozenset[str]:
    # "localtime" is a host's link, not an IANA name: rules must mean the same everywhere.
    return frozenset(zoneinfo.available_timezones() - {"localtime"})


_DOUBLE_QUOTED_ESCAPES = {
    "0": "\0", "a": "\a", "b": "\b", "t": "\t", "\t": "\t", "n": "\n", "v": "\v", "f": "\f",
    "r": "\r", "e": "\x1b", " ": " ", '"': '"', "/": "/", "\\": "\\", "N": "\x85",
    "_": "\xa0", "L": "\u2028", "P": "\u2029",
}  # fmt: skip
_HEX_ESCAPES = {"x": 2, "u": 4, "U": 8}
_BREAKS = "\r\n\x85\u2028\u2029"


def _unquote(raw: str, positions: list[Position], quote: str) -> tuple[str, list[Position]] | None:
    """Unescape and fold a quoted YAML scalar, keeping each character's file position.

    None when the text does not end where expected (the caller then falls back).
    """
    chars: list[str] = []
    where: list[Position] = []
    i = 1
    end = len(raw) - 1
    if end < 1 or raw[end] != quote:
        return None
    while i < end:
        ch = raw[i]
        if quote == "'" and raw.startswith("''", i):
            chars.append("'")
            where.append(positions[i])
            i += 2
        elif quote == '"' and ch == "\\":
            escaped = raw[i + 1 : i + 2]
            if escaped in _BREAKS:  # an escaped line break joins the lines with nothing
                i += 2 if raw.startswith("\r\n", i + 1) else 1
                i += 1
                while i < end and raw[i] in " \t":
                    i += 1
            elif escaped in _HEX_ESCAPES:
                digits = raw[i + 2 : i + 2 + _HEX_ESCAPES[escaped]]
                try:
                    chars.append(chr(int(digits, 16)))
                except ValueError:
                    return None
                where.append(positions[i])
                i += 2 + len(digits)
            elif escaped in _DOUBLE_QUOTED_ESCAPES:
                chars.append(_DOUBLE_QUOTED_ESCAPES[escaped])
                where.append(positions[i])
                i += 2
            else:
                return None
        elif ch in " \t" or ch in _BREAKS:
            # Whitespace runs: spanning k line breaks they fold to one space (k == 1) or
            # k - 1 newlines; otherwise they stay as they are.
            j = i
            while j < end and (raw[j] in " \t" or raw[j] in _BREAKS):
                j += 1
            run = raw[i:j].replace("\r\n", "\n")
            breaks = sum(run.count(b) for b in "\r\n\x85\u2028\u2029")
            if breaks == 0:
                chars.extend(run)
                where.extend(positions[i:j])
            elif breaks == 1:
                chars.append(" ")
                where.append(positions[i])
            else:
                chars.extend("\n" * (breaks - 1))
                where.extend([positions[i]] * (breaks - 1))
            i = j
        else:
            chars.append(ch)
            where.append(positions[i])
            i += 1
    where.append(positions[end])
    return "".join(chars), where
