"""Rule files: YAML validation, durations, rates, and exact positions inside YAML scalars."""

from __future__ import annotations

import textwrap
from decimal import Decimal
from pathlib import Path

import pytest

from segments.data import EXAMPLE_RULES
from segments.rules.ast import And, Between, Compare, Expr, Metric
from segments.rules.errors import RuleError, RuleFileError
from segments.rules.parser import format_expression
from segments.rules.ruleset import (
    MICROS_PER_DAY,
    RuleSet,
    load_ruleset,
    parse_duration,
    parse_ruleset,
)

pytestmark = pytest.mark.unit

CONFORMANCE_RULES = Path(__file__).parents[1] / "conformance" / "rules.yaml"
SECOND = 1_000_000

HEADER = "version: 1\nbase_currency: EUR\n"


def rules(text: str) -> RuleSet:
    return parse_ruleset(textwrap.dedent(text), "rules.yaml")


def errors(text: str) -> list[RuleError]:
    with pytest.raises(RuleFileError) as caught:
        rules(text)
    return caught.value.errors


def only_error(text: str) -> RuleError:
    found = errors(text)
    assert len(found) == 1, [str(e) for e in found]
    return found[0]


def with_segments(body: str) -> str:
    """A valid header plus the given segment list items, indented under `segments:`."""
    return HEADER + "segments:\n" + textwrap.indent(textwrap.dedent(body), "  ")


def where(error: RuleError) -> tuple[int, int]:
    return (error.line, error.col)


# --- the shipped files ----------------------------------------------------------------


def test_example_rule_set_loads() -> None:
    ruleset = load_ruleset(EXAMPLE_RULES)
    assert ruleset.source == str(EXAMPLE_RULES)
    assert (ruleset.version, ruleset.timezone, ruleset.base_currency) == (1, "UTC", "EUR")
    assert ruleset.rates == {"USD": Decimal("0.92"), "GBP": Decimal("1.17")}
    assert [s.name for s in ruleset.segments] == [
        "vip",
        "win_back",
        "big_spender",
        "runner",
        "online_only",
        "markdown_sleeper",
        "new_customer",
        "winter_sale",
    ]
    assert ruleset.segments[0].description == "3 or more purchases in the last 6 months"
    (trigger,) = ruleset.triggers
    assert (trigger.name, trigger.segment, trigger.on) == ("winback-email", "win_back", "entered")
    assert trigger.webhook == "http://127.0.0.1:8099/hooks/winback"
    assert trigger.cooldown == 30 * MICROS_PER_DAY
    assert ruleset.max_lateness == 30 * MICROS_PER_DAY
    assert ruleset.max_future_skew == 5 * 60 * SECOND


def test_example_rules_mean_what_spec_says() -> None:
    by_name = {s.name: format_expression(s.when) for s in load_ruleset(EXAMPLE_RULES).segments}
    assert by_name == {
        "vip": 'orders(within="182d") >= 3',
        "win_back": "days_since_last_purchase() > 90",
        "big_spender": 'avg_order_value(within="365d") > 100',
        "runner": 'orders(within="365d", category="Running Shoes") >= 1',
        "online_only": 'orders(channel="online") >= 1 and orders(channel="pos") == 0',
        "markdown_sleeper": 'days_since_last_purchase() > 182 and orders(within="548d") '
        'between 2 and 4 and discounted_orders(within="548d") >= 1',
        "new_customer": "days_since_first_purchase() <= 30",
        "winter_sale": 'orders(within="365d", season="01-01..02-14") >= 1',
    }


def test_conformance_rules_load() -> None:
    ruleset = load_ruleset(CONFORMANCE_RULES)
    assert ruleset.base_currency == "USD"
    assert [s.name for s in ruleset.segments] == [
        "vip",
        "lapsed",
        "big_spender",
        "sleeper",
        "heavy",
    ]


# --- positions inside YAML scalars ----------------------------------------------------


def test_plain_scalar_positions() -> None:
    ruleset = rules(
        with_segments("""\
          - name: vip
            when: orders(within="182d") >= 3
        """)
    )
    when = ruleset.segments[0].when
    assert isinstance(when, Compare)
    assert (when.left.line, when.left.col) == (5, 11)
    assert (when.line, when.col) == (5, 33)


def test_folded_block_scalar_positions_are_exact() -> None:
    ruleset = rules(
        with_segments("""\
          - name: markdown_sleeper
            when: >
              days_since_last_purchase() > 182
              and orders(within="548d") between 2 and 4
                and discounted_orders(within="548d") >= 1
        """)
    )
    when = ruleset.segments[0].when
    assert isinstance(when, And) and isinstance(when.left, And)
    assert (when.line, when.col) == (8, 9)
    assert (when.left.line, when.left.col) == (7, 7)
    first = when.left.left
    assert isinstance(first, Compare) and (first.left.line, first.left.col) == (6, 7)
    between = when.left.right
    assert isinstance(between, Between)
    assert (between.line, between.col) == (7, 33)
    assert (between.operand.line, between.operand.col) == (7, 11)
    assert (between.high.line, between.high.col) == (7, 47)
    last = when.right
    assert isinstance(last, Compare) and (last.left.line, last.left.col) == (8, 13)


@pytest.mark.parametrize("header", [">", "|", ">-", "|-", ">+", "|2", ">  # the rule"])
def test_block_scalar_error_positions_are_exact(header: str) -> None:
    error = only_error(
        with_segments(f"""\
          - name: a
            when: {header}
              orders() > 1
                and order() > 2

          - name: b
            when: orders() > 1
        """)
    )
    assert where(error) == (7, 13)
    assert error.source_line == "        and order() > 2"
    assert "did you mean 'orders'?" in error.message


def test_plain_multi_line_scalar_positions() -> None:
    error = only_error(
        with_segments("""\
          - name: a
            when: orders() > 1 and
              spend(within="7x") > 2   # a comment after the rule
        """)
    )
    assert where(error) == (6, 20)
    assert error.message.startswith('invalid window "7x"')


def test_double_quoted_scalar_positions_survive_escapes_and_folding() -> None:
    text = with_segments(
        "  - name: a\n"
        '    when: "orders(category=\\"Caf\\u00e9\\") > 1 and\n'
        '      spend(channel=\\"web\\") > 2"\n'
    )
    error = only_error(text)
    assert where(error) == (6, 21)
    assert error.message == 'invalid channel "web": expected "pos" or "online"'


def test_double_quoted_scalar_value_is_unescaped() -> None:
    ruleset = rules(
        with_segments("""\
          - name: a
            when: "orders(category=\\"Caf\\u00e9\\x21\\") > 1 \\
                   and units() > 2"
        """)
    )
    when = ruleset.segments[0].when
    assert isinstance(when, And) and isinstance(when.left, Compare)
    assert isinstance(when.left.left, Metric) and when.left.left.category == "Café!"
    assert isinstance(when.right, Compare)
    assert (when.right.left.line, when.right.left.col) == (6, 16)
    assert (when.right.line, when.right.col) == (6, 24)


def test_single_quoted_scalar_positions() -> None:
    error = only_error(
        with_segments("""\
          - name: a
            when: 'orders(category="Men''s") > 1 and
              orders(chanel="pos") > 1'
        """)
    )
    assert where(error) == (6, 14)
    ruleset = rules(
        with_segments("""\
          - name: a
            when: 'orders(category="Men''s") > 1'
        """)
    )
    metric = ruleset.segments[0].when.left  # type: ignore[union-attr]
    assert isinstance(metric, Metric) and metric.category == "Men's"


def test_tags_and_anchors_before_a_scalar_are_skipped() -> None:
    found = errors(
        with_segments("""\
          - name: a
            when: !!str &rule orders() > 1 and
              bad() > 1
          - name: b
            when: *rule
        """)
    )
    # The alias reuses the same rule: its error is reported once.
    assert [where(e) for e in found] == [(6, 7)]


def test_crlf_line_endings() -> None:
    text = (
        HEADER
        + "segments:\r\n  - name: a\r\n    when: >\r\n      orders() > 1\r\n      and x() > 1\r\n"
    )
    error = only_error(text)
    assert where(error) == (7, 11)


def test_parse_errors_of_several_rules_are_all_reported() -> None:
    found = errors(
        with_segments("""\
          - name: a
            when: order() > 1
          - name: b
            when: orders() > 1
            exit_when: orders() and 3
          - name: c
            when: orders(within="1y") > 1
        """)
    )
    assert [(where(e), e.code) for e in found] == [
        ((5, 11), "unknown-metric"),
        ((8, 16), "expected-comparison"),
        ((8, 29), "expected-comparison"),
        ((10, 25), "bad-filter-value"),
    ]


# --- durations ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "micros"),
    [
        ("30d", 30 * MICROS_PER_DAY),
        ("2w", 14 * MICROS_PER_DAY),
        ("12h", 12 * 3600 * SECOND),
        ("15m", 15 * 60 * SECOND),
        ("45s", 45 * SECOND),
        ("0s", 0),
        ("36500d", 36500 * MICROS_PER_DAY),
    ],
)
def test_durations(text: str, micros: int) -> None:
    assert parse_duration(text) == micros


@pytest.mark.parametrize("text", ["30", "1.5d", "-1d", "3x", "", "1y", "30 d", "d", "1d12h", "30D"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="expected a whole number and a unit"):
        parse_duration(text)


def test_too_long_duration() -> None:
    with pytest.raises(ValueError, match="too long: at most 36500d"):
        parse_duration("5215w")


def test_duration_settings() -> None:
    ruleset = rules(
        HEADER
        + "max_lateness: 2d\nmax_future_skew: 30s\n"
        + "segments:\n  - name: a\n    when: orders() > 1\n    min_dwell: 12h\n"
    )
    assert ruleset.max_lateness == 2 * MICROS_PER_DAY
    assert ruleset.max_future_skew == 30 * SECOND
    assert ruleset.segments[0].min_dwell == 12 * 3600 * SECOND


@pytest.mark.parametrize("key", ["max_lateness", "max_future_skew"])
def test_bad_duration_setting(key: str) -> None:
    error = only_error(HEADER + f"{key}: 30\nsegments:\n  - name: a\n    when: orders() > 1\n")
    assert where(error) == (3, len(key) + 3)
    assert error.message.startswith("invalid duration '30': expected a whole number and a unit")


# --- top-level keys -------------------------------------------------------------------

MINIMAL = "segments:\n  - name: a\n    when: orders() > 1\n"


def test_minimal_rule_set_and_defaults() -> None:
    ruleset = rules(HEADER + MINIMAL)
    assert ruleset.timezone == "UTC"
    assert ruleset.rates == {}
    assert ruleset.triggers == ()
    assert ruleset.source == "rules.yaml"
    segment = ruleset.segments[0]
    assert (segment.description, segment.exit_when, segment.min_dwell) == ("", None, None)


@pytest.mark.parametrize(
    ("value", "found"),
    [
        ('"1"', 'the quoted string "1"'),
        ("0", "'0'"),
        ("-1", "'-1'"),
        ("1.5", "'1.5'"),
        ("01", "'01'"),
        ("true", "'true'"),
        ("", "nothing"),
        ("[1]", "a list"),
    ],
)
def test_version_must_be_a_positive_integer(value: str, found: str) -> None:
    error = only_error(f"version: {value}\nbase_currency: EUR\n" + MINIMAL)
    assert error.message == f"expected version to be an integer >= 1, found {found}"
    assert where(error)[0] == 1


def test_version_is_kept() -> None:
    assert rules("version: 42\nbase_currency: EUR\n" + MINIMAL).version == 42


@pytest.mark.parametrize("key", ["version", "base_currency", "segments"])
def test_required_top_level_keys(key: str) -> None:
    lines = [line for line in (HEADER + MINIMAL).splitlines(keepends=True)]
    text = "".join(
        line
        for line in lines
        if not line.startswith(key) and not (key == "segments" and line.startswith(" "))
    )
    found = errors(text)
    assert [(where(e), e.message) for e in found] == [
        ((1, 1), f"the rule file is missing the required key '{key}'")
    ]


def test_unknown_top_level_key_suggests() -> None:
    error = only_error(HEADER + "time_zone: UTC\n" + MINIMAL)
    assert (where(error), error.code) == ((3, 1), "unknown-key")
    assert error.message == "unknown key 'time_zone' in the rule file; did you mean 'timezone'?"


def test_unknown_top_level_key_lists_the_keys() -> None:
    error = only_error(HEADER + "owner: me\n" + MINIMAL)
    assert error.message.startswith(
        "unknown key 'owner' in the rule file; expected one of: version,"
    )


def test_duplicate_key() -> None:
    error = only_error(HEADER + "version: 2\n" + MINIMAL)
    assert (where(error), error.code) == ((3, 1), "duplicate-key")
    assert error.message == "duplicate key 'version' in the rule file (first at 1:1)"


@pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin", "America/New_York", "Asia/Kolkata"])
def test_timezone(zone: str) -> None:
    assert rules(HEADER + f"timezone: {zone}\n" + MINIMAL).timezone == zone


@pytest.mark.parametrize(
    ("zone", "message"),
    [
        (
            "Europe/Pariss",
            "unknown timezone 'Europe/Pariss': expected an IANA name; did you mean 'Europe/Paris'?",
        ),
        ("Mars/Olympus", "unknown timezone 'Mars/Olympus': expected an IANA name"),
        ("localtime", "unknown timezone 'localtime'"),
        ("../etc/passwd", "unknown timezone '../etc/passwd'"),
    ],
)
def test_bad_timezone(zone: str, message: str) -> None:
    error = only_error(HEADER + f"timezone: {zone}\n" + MINIMAL)
    assert where(error) == (3, 11)
    assert error.message.startswith(message)


@pytest.mark.parametrize("code", ["eur", "EU", "EURO", "E1R", '""', "[EUR]"])
def test_bad_base_currency(code: str) -> None:
    error = only_error(f"version: 1\nbase_currency: {code}\n" + MINIMAL)
    assert where(error) == (2, 16)


def test_rates_from_strings_and_plain_numbers_are_exact() -> None:
    ruleset = rules(
        HEADER + 'rates: {USD: "0.92", GBP: 1.17, CHF: 0.1, JPY: 0.0061, SEK: 1}\n' + MINIMAL
    )
    assert ruleset.rates == {
        "USD": Decimal("0.92"),
        "GBP": Decimal("1.17"),
        "CHF": Decimal("0.1"),
        "JPY": Decimal("0.0061"),
        "SEK": Decimal("1"),
    }
    # Never through float: 0.1 keeps its one digit.
    assert str(ruleset.rates["CHF"]) == "0.1"


def test_rates_as_block_mapping_and_empty() -> None:
    assert rules(HEADER + "rates:\n  USD: '0.92'\n" + MINIMAL).rates == {"USD": Decimal("0.92")}
    assert rules(HEADER + "rates:\n" + MINIMAL).rates == {}
    assert rules(HEADER + "rates: {}\n" + MINIMAL).rates == {}


@pytest.mark.parametrize(
    ("rates", "col", "message"),
    [
        ('{USD: "-1"}', 14, 'invalid rate for USD: expected a positive decimal such as "0.92"'),
        ("{USD: 0}", 14, "invalid rate for USD"),
        ("{USD: 0.00}", 14, "invalid rate for USD"),
        ("{USD: 1e3}", 14, "invalid rate for USD"),
        ("{USD: .5}", 14, "invalid rate for USD"),
        ('{USD: "abc"}', 14, "invalid rate for USD"),
        ("{USD: .nan}", 14, "invalid rate for USD"),
        ("{USD: }", 13, "invalid rate for USD"),
        ("{usd: 1}", 9, "invalid currency code 'usd' for a rate"),
        ("{USD: 1, USD: 2}", 17, "duplicate rate for USD (first at 3:9)"),
        ("{EUR: 2}", 14, "the rate of the base currency EUR must be 1 (or left out), found 2"),
        ("[USD]", 8, "expected a mapping of currency code to rate for rates, found a list"),
    ],
)
def test_bad_rates(rates: str, col: int, message: str) -> None:
    error = only_error(HEADER + f"rates: {rates}\n" + MINIMAL)
    assert where(error) == (3, col)
    assert error.message.startswith(message)


def test_base_currency_rate_of_one_is_allowed() -> None:
    assert rules(HEADER + "rates: {EUR: 1}\n" + MINIMAL).rates == {"EUR": Decimal("1")}


# --- segments -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("segments", "message"),
    [
        ("[]", "expected a non-empty list of segments, found an empty list"),
        ("", "expected a non-empty list of segments, found nothing"),
        ("{a: 1}", "expected a non-empty list of segments, found a mapping"),
        ("[vip]", "expected a mapping for a segment, found 'vip'"),
    ],
)
def test_segments_must_be_a_non_empty_list_of_mappings(segments: str, message: str) -> None:
    assert only_error(HEADER + f"segments: {segments}\n").message == message


@pytest.mark.parametrize("name", ["vip", "win_back", "a1", "x_2_y"])
def test_segment_names(name: str) -> None:
    text = with_segments(f"  - name: {name}\n    when: orders() > 1\n")
    assert rules(text).segments[0].name == name


@pytest.mark.parametrize("name", ["Vip", "1vip", "_vip", "win-back", "win back", "vïp", "''"])
def test_bad_segment_names(name: str) -> None:
    error = only_error(with_segments(f"  - name: {name}\n    when: orders() > 1\n"))
    assert where(error) == (4, 11)
    assert error.message.startswith("invalid segment name")


def test_duplicate_segment_name() -> None:
    error = only_error(
        with_segments("""\
          - name: vip
            when: orders() > 1
          - name: vip
            when: orders() > 2
        """)
    )
    assert (where(error), error.code) == ((6, 11), "duplicate-name")
    assert error.message == "duplicate segment name 'vip' (first at 4:11)"


def test_segment_missing_when_and_unknown_key() -> None:
    found = errors(
        with_segments("""\
          - name: vip
            whne: orders() > 1
        """)
    )
    assert [(where(e), e.message) for e in found] == [
        ((4, 5), "segment 'vip' is missing the required key 'when'"),
        ((5, 5), "unknown key 'whne' in segment 'vip'; did you mean 'when'?"),
    ]


def test_segment_missing_name() -> None:
    error = only_error(with_segments("  - when: orders() > 1\n"))
    assert error.message == "a segment is missing the required key 'name'"


@pytest.mark.parametrize(
    ("value", "found"), [("", "nothing"), ("''", "nothing"), ("[1]", "a list")]
)
def test_empty_when(value: str, found: str) -> None:
    error = only_error(with_segments(f"  - name: a\n    when: {value}\n"))
    assert error.message == f"expected a rule for when, found {found}"


def test_description_exit_when_and_min_dwell() -> None:
    ruleset = rules(
        with_segments("""\
          - name: vip
            description: >
              Three or more orders
              in half a year
            when: orders(within="182d") >= 3
            exit_when: orders(within="182d") < 2
            min_dwell: 7d
          - name: quiet
            description:
            when: days_since_last_purchase() > 1
        """)
    )
    vip, quiet = ruleset.segments
    assert vip.description == "Three or more orders in half a year"
    assert vip.exit_when is not None
    assert format_expression(vip.exit_when) == 'orders(within="182d") < 2'
    assert vip.min_dwell == 7 * MICROS_PER_DAY
    assert quiet.description == ""


def test_scalar_words_are_not_yaml_booleans() -> None:
    ruleset = rules(with_segments("  - name: a\n    description: yes\n    when: orders() > 1\n"))
    assert ruleset.segments[0].description == "yes"


# --- triggers -------------------------------------------------------------------------

TRIGGER_BASE = HEADER + "segments:\n  - name: win_back\n    when: days_since_last_purchase() > 90\n"


def trigger(body: str) -> str:
    return TRIGGER_BASE + "triggers:\n" + textwrap.indent(textwrap.dedent(body), "  ")


def test_trigger_defaults_and_exited() -> None:
    ruleset = rules(
        trigger("""\
          - name: lost
            segment: win_back
            on: exited
            webhook: https://hooks.example.com/lost?x=1
        """)
    )
    (only,) = ruleset.triggers
    assert (only.on, only.cooldown, only.webhook) == (
        "exited",
        0,
        "https://hooks.example.com/lost?x=1",
    )


def test_empty_triggers() -> None:
    assert rules(TRIGGER_BASE + "triggers:\n").triggers == ()
    assert rules(TRIGGER_BASE + "triggers: []\n").triggers == ()


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("segment", "winback", "unknown segment 'winback'; did you mean 'win_back'?"),
        ("segment", "vip", "unknown segment 'vip'"),
        ("on", "enter", "invalid value 'enter' for on: expected 'entered' or 'exited'"),
        ("on", "true", "invalid value 'true' for on"),
        (
            "webhook",
            "ftp://h/x",
            "invalid webhook 'ftp://h/x': expected an http:// or https:// URL",
        ),
        ("webhook", "127.0.0.1:8099/x", "invalid webhook"),
        ("webhook", "http:///x", "invalid webhook"),
        ("webhook", "http://h:99999/x", "invalid webhook"),
        ("cooldown", "30", "invalid duration '30'"),
        ("name", "Winback Email", "invalid trigger name 'Winback Email'"),
    ],
)
def test_bad_trigger_fields(field: str, value: str, message: str) -> None:
    fields = {
        "name": "winback-email",
        "segment": "win_back",
        "on": "entered",
        "webhook": "http://127.0.0.1:8099/hooks/winback",
        "cooldown": "30d",
    }
    fields[field] = value
    body = "".join(
        f"{'  - ' if i == 0 else '    '}{key}: {val}\n"
        for i, (key, val) in enumerate(fields.items())
    )
    error = only_error(trigger(body))
    line = 7 + list(fields).index(field)
    assert where(error) == (line, 7 + len(field))
    assert error.message.startswith(message)


def test_trigger_on_a_segment_with_a_broken_rule_is_not_an_extra_error() -> None:
    found = errors(
        HEADER
        + "segments:\n  - name: win_back\n    when: days_since_last() > 90\n"
        + "triggers:\n  - {name: t, segment: win_back, on: entered, webhook: 'http://h/'}\n"
    )
    assert [e.code for e in found] == ["unknown-metric"]


def test_duplicate_trigger_names_and_missing_keys() -> None:
    found = errors(
        trigger("""\
          - name: t
            segment: win_back
            on: entered
            webhook: http://h/
          - name: t
            segment: win_back
            on: entered
            webhook: http://h/
          - name: u
            segment: win_back
            cooldown: 1d
        """)
    )
    assert [(where(e), e.message) for e in found] == [
        ((11, 11), "duplicate trigger name 't' (first at 7:11)"),
        ((15, 5), "trigger 'u' is missing the required key 'on'"),
        ((15, 5), "trigger 'u' is missing the required key 'webhook'"),
    ]


def test_triggers_must_be_a_list() -> None:
    error = only_error(TRIGGER_BASE + "triggers: {name: t}\n")
    assert error.message == "expected a list of triggers, found a mapping"


# --- YAML and file level --------------------------------------------------------------


def test_yaml_syntax_error_has_a_position() -> None:
    error = only_error(HEADER + "segments:\n  - name: a\n    when: orders() > 1\n   - x: [\n")
    assert (where(error), error.code) == ((6, 4), "yaml")
    assert error.message.startswith("invalid YAML: ")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "the rule file is empty: expected version, base_currency and segments"),
        ("# only a comment\n", "the rule file is empty"),
        ("- 1\n", "expected a mapping for the rule file, found a list"),
        ("just text\n", "expected a mapping for the rule file, found 'just text'"),
        ("a: 1\n---\nb: 2\n", "invalid YAML: expected a single document in the stream"),
        ("version: 1\x07\n", "invalid YAML: character U+0007 is not allowed"),
        ("a: " + "[" * 5000, "invalid YAML: nested too deeply"),
    ],
)
def test_not_a_rule_file(text: str, message: str) -> None:
    assert only_error(text).message.startswith(message)


def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.yaml"
    with pytest.raises(RuleFileError) as caught:
        load_ruleset(path)
    (error,) = caught.value.errors
    assert (error.file, error.line, error.col, error.code) == (str(path), 0, 0, "io")
    assert error.message.startswith("cannot read rule file: ")


def test_invalid_utf8_has_a_position(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_bytes(b"version: 1\nbase_currency: \xff\n")
    with pytest.raises(RuleFileError) as caught:
        load_ruleset(path)
    (error,) = caught.value.errors
    assert (error.line, error.col, error.message) == (2, 16, "the rule file is not valid UTF-8")


def test_errors_name_the_file_and_show_the_line(tmp_path: Path) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(with_segments("  - name: a\n    when: order() > 1\n"))
    with pytest.raises(RuleFileError) as caught:
        load_ruleset(path)
    assert str(caught.value) == (
        f"{path}:5:11: error: unknown metric 'order'; did you mean 'orders'?\n"
        "        when: order() > 1\n"
        "              ^"
    )


def test_every_error_has_a_line_and_column() -> None:
    found = errors(
        """\
        version: 0
        base_currency: eur
        rates: {USD: -1}
        timezone: Nowhere/Else
        max_lateness: soon
        segments:
          - name: A
            when: orders() >
          - name: b
            when: orders() > 1
            min_dwell: forever
        triggers:
          - name: t
            segment: c
            on: maybe
            webhook: mailto:x@y
        """
    )
    assert [e.line for e in found] == [1, 2, 3, 4, 5, 7, 8, 11, 14, 15, 16]
    assert all(e.line >= 1 and e.col >= 1 and e.source_line for e in found)
    assert [e.line for e in found] == sorted(e.line for e in found)


def _walk(expr: Expr) -> list[Expr]:
    nodes = [expr]
    for child in ("left", "right", "operand", "low", "high"):
        value = getattr(expr, child, None)
        if value is not None:
            nodes.extend(_walk(value))
    return nodes


def test_every_example_node_points_into_the_file() -> None:
    lines = EXAMPLE_RULES.read_text().splitlines()
    for segment in load_ruleset(EXAMPLE_RULES).segments:
        for node in _walk(segment.when):
            rest = lines[node.line - 1][node.col - 1 :]
            if isinstance(node, Metric):
                assert rest.startswith(node.name + "("), (segment.name, node)
