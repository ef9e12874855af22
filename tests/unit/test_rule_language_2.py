"""Language 2 syntax: arithmetic, unary minus, in_segment, and what validation refuses."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from segments.rules.ast import (
    And,
    Arithmetic,
    Between,
    Compare,
    Expr,
    InSegment,
    Metric,
    Negate,
    Not,
    Number,
    Or,
    children,
)
from segments.rules.errors import RuleError, RuleFileError
from segments.rules.parser import format_expression, parse_expression
from segments.rules.ruleset import parse_ruleset

pytestmark = pytest.mark.unit


def parse(text: str) -> Expr:
    return parse_expression(text, source_name="r.yaml")


def errors(text: str) -> list[RuleError]:
    with pytest.raises(RuleFileError) as caught:
        parse_expression(text, source_name="r.yaml")
    return caught.value.errors


def only_error(text: str) -> RuleError:
    found = errors(text)
    assert len(found) == 1, [str(e) for e in found]
    return found[0]


def bare(expr: Expr) -> Expr:
    changes: dict[str, object] = {"line": 0, "col": 0}
    for field in dataclasses.fields(expr):
        value = getattr(expr, field.name)
        if value is not None and not isinstance(value, str | int | Decimal | tuple):
            changes[field.name] = bare(value)
    return dataclasses.replace(expr, **changes)  # type: ignore[arg-type]


def m(name: str = "orders", within: int | None = None, channel: str | None = None) -> Metric:
    return Metric(name, within, channel, None, None, 0, 0)


def n(text: str) -> Number:
    return Number(Decimal(text), 0, 0)


# --- arithmetic -----------------------------------------------------------------------


def test_the_spec_example_parses_as_a_ratio() -> None:
    expr = parse('spend(channel="online", within="365d") / spend(within="365d") >= 0.8')
    assert bare(expr) == Compare(
        ">=",
        Arithmetic("/", m("spend", 365, "online"), m("spend", 365), 0, 0),
        n("0.8"),
        0,
        0,
    )


def test_usual_precedence_and_left_grouping() -> None:
    expr = parse("orders() + units() * 2 - spend() / 4 > 1")
    assert isinstance(expr, Compare)
    assert bare(expr.left) == Arithmetic(
        "-",
        Arithmetic("+", m(), Arithmetic("*", m("units"), n("2"), 0, 0), 0, 0),
        Arithmetic("/", m("spend"), n("4"), 0, 0),
        0,
        0,
    )
    grouped = parse("(orders() + units()) * 2 > 1")
    assert isinstance(grouped, Compare)
    assert bare(grouped.left) == Arithmetic(
        "*", Arithmetic("+", m(), m("units"), 0, 0), n("2"), 0, 0
    )


def test_arithmetic_binds_tighter_than_comparisons_and_between() -> None:
    expr = parse("units() between orders() and orders() * 2 + 1 and spend() > 0")
    assert isinstance(expr, And)
    assert isinstance(expr.left, Between)
    assert bare(expr.left.high) == Arithmetic("+", Arithmetic("*", m(), n("2"), 0, 0), n("1"), 0, 0)


def test_a_minus_before_a_number_is_the_version_1_literal() -> None:
    # version 1 read "-2.50" as one number token: the tree and the position stay the same
    assert parse("spend() > -2.50") == Compare(
        ">", Metric("spend", None, None, None, None, 1, 1), Number(Decimal("-2.50"), 1, 11), 1, 9
    )
    assert bare(parse("orders()-1 > 2")) == bare(parse("orders() - 1 > 2"))
    assert bare(parse("orders() - -1 > 2")) == Compare(
        ">", Arithmetic("-", m(), n("-1"), 0, 0), n("2"), 0, 0
    )


def test_unary_minus_of_a_metric() -> None:
    expr = parse("-orders() * 2 < -3")
    assert bare(expr) == Compare(
        "<", Arithmetic("*", Negate(m(), 0, 0), n("2"), 0, 0), n("-3"), 0, 0
    )


def test_positions_of_arithmetic_nodes() -> None:
    expr = parse("orders() +\n  -units() > 1")
    assert isinstance(expr, Compare)
    assert isinstance(expr.left, Arithmetic)
    assert (expr.left.line, expr.left.col) == (1, 10)
    assert isinstance(expr.left.right, Negate)
    assert (expr.left.right.line, expr.left.right.col) == (2, 3)


@pytest.mark.parametrize(
    ("text", "col", "code", "message"),
    [
        ("orders() + > 1", 12, "syntax", "expected a metric, a number or '(', found '>'"),
        ("orders() * ", 12, "syntax", "expected a metric, a number or '(', found end of rule"),
        (
            'orders() + "x" > 1',
            12,
            "expected-comparison",
            'expected a number or a metric in arithmetic, found string "x"',
        ),
        (
            "orders() + (units() > 1) > 1",
            21,
            "expected-comparison",
            "expected a number or a metric on each side of '+', found a condition",
        ),
        (
            "orders() * 2",
            10,
            "expected-comparison",
            "expected a comparison such as 'orders() >= 1', found the arithmetic orders() * 2",
        ),
        (
            "1 + 2 > 3",
            7,
            "expected-comparison",
            "expected a comparison that reads a metric, found only numbers",
        ),
        ("orders() % 2 > 1", 10, "syntax", "unexpected character '%'"),
    ],
)
def test_arithmetic_errors_say_what_was_expected(
    text: str, col: int, code: str, message: str
) -> None:
    error = only_error(text)
    assert (error.col, error.code) == (col, code)
    assert message in error.message


@pytest.mark.parametrize(
    ("text", "col", "message"),
    [
        ("days_since_last_purchase() - 30 > 0", 1, "cannot take part in arithmetic"),
        ("2 * days_since_first_purchase() > 60", 5, "cannot take part in arithmetic"),
        ("-days_since_last_purchase() < -30", 2, "cannot take part in arithmetic"),
        (
            'days_since_last_purchase() > 2 * orders(within="30d")',
            1,
            "it is compared with orders(within=...), which changes as orders leave its window",
        ),
        (
            "days_since_last_purchase() < days_since_first_purchase() / 2",
            30,
            "cannot take part in arithmetic",
        ),
        (
            "orders() between days_since_last_purchase() and 9",
            18,
            "cannot be a bound of 'between'",
        ),
        (
            'days_since_last_purchase() between orders(within="7d") and 9',
            1,
            "can only be compared with an expression that time does not change",
        ),
    ],
)
def test_days_since_rules_that_cannot_be_scheduled_are_refused(
    text: str, col: int, message: str
) -> None:
    found = errors(text)
    assert any(
        (e.col, e.code) == (col, "not-schedulable") and message in e.message for e in found
    ), [str(e) for e in found]
    assert all("scheduled exactly" in e.message for e in found)


def test_a_refused_rule_renders_with_file_position_and_caret() -> None:
    with pytest.raises(RuleFileError) as caught:
        parse_expression(
            "days_since_last_purchase() - 30 > 0", source_name="rules.yaml", line=4, col=11
        )
    assert str(caught.value) == (
        "rules.yaml:4:11: error: days_since_last_purchase() cannot take part in arithmetic: "
        "the day on which such a rule changes could not be scheduled exactly; compare it "
        "directly with a number instead, e.g. days_since_last_purchase() > 30\n"
        "              days_since_last_purchase() - 30 > 0\n"
        "              ^"
    )


# --- in_segment -----------------------------------------------------------------------


def test_in_segment_is_a_condition() -> None:
    expr = parse('in_segment("vip") and not in_segment("win_back")')
    assert bare(expr) == And(InSegment("vip", 0, 0), Not(InSegment("win_back", 0, 0), 0, 0), 0, 0)
    assert (expr.left.line, expr.left.col) == (1, 1)  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("text", "col", "message"),
    [
        ("in_segment(vip)", 12, 'expected a segment name in quotes, e.g. in_segment("vip")'),
        ('in_segment "vip"', 12, "expected '(' after 'in_segment', found string"),
        ('in_segment("vip"', 17, "expected ')' after the segment name of in_segment"),
        ('in_segment("vip") > 1', 1, "found a condition"),
        ('in_segmnt("vip")', 1, "unknown metric 'in_segmnt'; did you mean 'in_segment'?"),
    ],
)
def test_in_segment_errors(text: str, col: int, message: str) -> None:
    found = errors(text)
    assert found[0].col == col
    assert message in found[0].message


RULES_HEAD = "version: 1\nbase_currency: EUR\nsegments:\n"


def test_in_segment_must_name_an_earlier_segment() -> None:
    text = RULES_HEAD + (
        "  - name: vip\n"
        '    when: orders() >= 3 and not in_segment("lapsed")\n'
        "  - name: lapsed\n"
        "    when: days_since_last_purchase() > 90\n"
        '    exit_when: in_segment("lapsed") and orders() > 9\n'
        "  - name: lapsed_vip\n"
        '    when: in_segment("vpi") or in_segment("nobody")\n'
    )
    with pytest.raises(RuleFileError) as caught:
        parse_ruleset(text, "rules.yaml")
    found = [(e.line, e.col, e.code, e.message) for e in caught.value.errors]
    assert [(line, col, code) for line, col, code, _ in found] == [
        (5, 33, "bad-segment-reference"),
        (8, 16, "bad-segment-reference"),
        (10, 11, "bad-segment-reference"),
        (10, 32, "bad-segment-reference"),
    ]
    messages = [message for *_, message in found]
    assert (
        "refers to a segment defined later in the file: move 'lapsed' above 'vip'" in (messages[0])
    )
    assert "segment 'lapsed' cannot refer to itself" in messages[1]
    assert messages[2] == "unknown segment 'vpi' in in_segment; did you mean 'vip'?"
    assert messages[3].startswith("unknown segment 'nobody' in in_segment (earlier segments: ")


def test_in_segment_of_an_earlier_segment_validates() -> None:
    ruleset = parse_ruleset(
        RULES_HEAD + "  - name: vip\n    when: orders() >= 3\n"
        '  - name: quiet_vip\n    when: in_segment("vip") and orders(within="30d") == 0\n'
    )
    assert [s.name for s in ruleset.segments] == ["vip", "quiet_vip"]


# --- printing round trips with language 2 ---------------------------------------------

numbers = st.decimals(
    min_value=Decimal("-1000"), max_value=Decimal("1000"), places=2, allow_nan=False
).map(lambda d: Number(d, 0, 0))
metric_values = st.builds(
    Metric,
    st.sampled_from(["orders", "spend", "avg_order_value", "units"]),
    st.none() | st.integers(1, 400),
    st.none() | st.sampled_from(["pos", "online"]),
    st.none(),
    st.none(),
    st.just(0),
    st.just(0),
)
values = st.recursive(
    numbers | metric_values,
    lambda inner: (
        st.builds(Arithmetic, st.sampled_from("+-*/"), inner, inner, st.just(0), st.just(0))
        | st.builds(
            Negate,
            metric_values
            | st.builds(Arithmetic, st.sampled_from("+-*/"), inner, inner, st.just(0), st.just(0)),
            st.just(0),
            st.just(0),
        )
    ),
    max_leaves=6,
)


def reads_a_metric(expr: Expr) -> bool:
    return isinstance(expr, Metric) or any(reads_a_metric(c) for c in children(expr))


conditions = st.recursive(
    st.builds(
        Compare, st.sampled_from(["<", "<=", ">", ">=", "==", "!="]), values, values,
        st.just(0), st.just(0),
    ).filter(reads_a_metric)
    | st.builds(InSegment, st.sampled_from(["vip", "win_back"]), st.just(0), st.just(0)),
    lambda inner: (
        st.builds(Not, inner, st.just(0), st.just(0))
        | st.builds(And, inner, inner, st.just(0), st.just(0))
        | st.builds(Or, inner, inner, st.just(0), st.just(0))
    ),
    max_leaves=6,
)  # fmt: skip


@given(conditions)
def test_printing_and_parsing_language_2_gives_back_the_same_ast(expr: Expr) -> None:
    assert bare(parse(format_expression(expr))) == expr
