"""The rule expression parser: syntax, precedence, positions, errors, print/parse round trips."""

from __future__ import annotations

import dataclasses
from decimal import Decimal

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from segments.rules.ast import And, Between, Compare, Expr, Metric, Not, Number, Or, String
from segments.rules.errors import RuleError, RuleFileError
from segments.rules.parser import (
    DAYS_SINCE_METRICS,
    METRICS,
    format_expression,
    parse_expression,
    parse_located,
    positions_from,
)

pytestmark = pytest.mark.unit


def parse(text: str) -> Expr:
    return parse_expression(text, source_name="r.yaml")


def errors(text: str, line: int = 1, col: int = 1) -> list[RuleError]:
    with pytest.raises(RuleFileError) as caught:
        parse_expression(text, source_name="r.yaml", line=line, col=col)
    return caught.value.errors


def only_error(text: str) -> RuleError:
    found = errors(text)
    assert len(found) == 1, [str(e) for e in found]
    return found[0]


def bare(expr: Expr) -> Expr:
    """expr with every position zeroed, to compare shapes."""
    changes: dict[str, object] = {"line": 0, "col": 0}
    for field in dataclasses.fields(expr):
        value = getattr(expr, field.name)
        if isinstance(value, Number | String | Metric | Compare | Between | And | Or | Not):
            changes[field.name] = bare(value)
    return dataclasses.replace(expr, **changes)  # type: ignore[arg-type]


def m(name: str = "orders", **filters: object) -> Metric:
    return Metric(
        name,
        filters.get("within_days"),  # type: ignore[arg-type]
        filters.get("channel"),  # type: ignore[arg-type]
        filters.get("category"),  # type: ignore[arg-type]
        filters.get("season"),  # type: ignore[arg-type]
        0,
        0,
    )


def n(value: str) -> Number:
    return Number(Decimal(value), 0, 0)


def cmp(op: str, left: Expr, right: Expr) -> Compare:
    return Compare(op, left, right, 0, 0)


# --- syntax forms ---------------------------------------------------------------------


@pytest.mark.parametrize("op", ["<", "<=", ">", ">=", "==", "!="])
def test_every_comparison_operator(op: str) -> None:
    assert bare(parse(f"orders() {op} 3")) == cmp(op, m(), n("3"))


def test_number_may_be_on_the_left() -> None:
    assert bare(parse("3 <= orders()")) == cmp("<=", n("3"), m())


def test_metric_may_be_compared_with_a_metric() -> None:
    assert bare(parse("spend() > units()")) == cmp(">", m("spend"), m("units"))


@pytest.mark.parametrize("metric", METRICS)
def test_every_metric(metric: str) -> None:
    assert bare(parse(f"{metric}() > 0")) == cmp(">", m(metric), n("0"))


def test_numbers_are_exact_decimals() -> None:
    expr = parse("spend() > 0.1")
    assert isinstance(expr, Compare)
    assert expr.right == Number(Decimal("0.1"), 1, 11)
    assert bare(parse("spend() >= -2.50")) == cmp(">=", m("spend"), n("-2.50"))


def test_between_is_inclusive_range_syntax() -> None:
    expr = bare(parse("orders() between 2 and 4"))
    assert expr == Between(m(), n("2"), n("4"), 0, 0)


def test_equal_between_bounds_are_allowed() -> None:
    assert bare(parse("orders() between 3 and 3")) == Between(m(), n("3"), n("3"), 0, 0)


def test_and_or_not_and_parentheses() -> None:
    a, b = cmp(">", m(), n("1")), cmp("<", m("spend"), n("2"))
    assert bare(parse("orders() > 1 and spend() < 2")) == And(a, b, 0, 0)
    assert bare(parse("orders() > 1 or spend() < 2")) == Or(a, b, 0, 0)
    assert bare(parse("not orders() > 1")) == Not(a, 0, 0)
    assert bare(parse("(orders() > 1)")) == a
    assert bare(parse("not not (orders() > 1)")) == Not(Not(a, 0, 0), 0, 0)


def test_newlines_and_tabs_are_whitespace() -> None:
    assert bare(parse('orders(\n  within="7d"\n)\n>=\t1')) == cmp(">=", m(within_days=7), n("1"))


def test_keywords_need_no_spaces_around_parentheses() -> None:
    a, b = cmp(">", m(), n("1")), cmp(">", m("units"), n("2"))
    assert bare(parse("(orders()>1)and(units()>2)")) == And(a, b, 0, 0)


# --- precedence -----------------------------------------------------------------------


def test_and_binds_tighter_than_or() -> None:
    expr = parse("orders() > 1 or orders() > 2 and orders() > 3")
    assert isinstance(expr, Or)
    assert isinstance(expr.right, And)


def test_not_binds_tighter_than_and() -> None:
    expr = parse("not orders() > 1 and orders() > 2")
    assert isinstance(expr, And)
    assert isinstance(expr.left, Not)
    assert isinstance(expr.left.operand, Compare)


def test_and_and_or_associate_to_the_left() -> None:
    expr = parse("orders() > 1 and orders() > 2 and orders() > 3")
    assert isinstance(expr, And) and isinstance(expr.left, And)
    expr = parse("orders() > 1 or orders() > 2 or orders() > 3")
    assert isinstance(expr, Or) and isinstance(expr.left, Or)


def test_parentheses_override_precedence() -> None:
    expr = parse("(orders() > 1 or orders() > 2) and orders() > 3")
    assert isinstance(expr, And) and isinstance(expr.left, Or)


def test_the_and_of_between_belongs_to_between() -> None:
    expr = parse("orders() between 2 and 4 and spend() > 1")
    assert isinstance(expr, And)
    assert isinstance(expr.left, Between)
    assert isinstance(expr.right, Compare)


# --- filters --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ('within="182d"', m(within_days=182)),
        ('within="1d"', m(within_days=1)),
        ('within="2w"', m(within_days=14)),
        ('within="36500d"', m(within_days=36500)),
        ('channel="pos"', m(channel="pos")),
        ('channel="online"', m(channel="online")),
        ('category="Running Shoes"', m(category="Running Shoes")),
        ("category='Kids'' & Baby'", None),  # '' is not an escape: a syntax error, see below
        ("category='Men\\'s'", m(category="Men's")),
        ('category="a \\"b\\" \\\\ c"', m(category='a "b" \\ c')),
        ('season="01-01..02-14"', m(season=(1, 1, 2, 14))),
        ('season="11-15..01-15"', m(season=(11, 15, 1, 15))),
        ('season="02-29..02-29"', m(season=(2, 29, 2, 29))),
        (
            'within="365d", channel="pos", category="Shoes", season="12-01..12-31"',
            m(within_days=365, channel="pos", category="Shoes", season=(12, 1, 12, 31)),
        ),
        ('season="06-01..08-31", within="3w"', m(within_days=21, season=(6, 1, 8, 31))),
    ],
)
def test_filters(filters: str, expected: Metric | None) -> None:
    text = f"orders({filters}) >= 1"
    if expected is None:
        assert errors(text)[0].code == "syntax"
        return
    assert bare(parse(text)) == cmp(">=", expected, n("1"))


def test_filters_apply_to_days_since_metrics_too() -> None:
    expr = bare(parse('days_since_last_purchase(channel="pos", within="365d") > 30'))
    assert expr == cmp(">", m("days_since_last_purchase", channel="pos", within_days=365), n("30"))


@pytest.mark.parametrize(
    ("filters", "col", "message"),
    [
        ('within="0d"', 15, 'invalid window "0d": expected "<N>d" or "<N>w" with N >= 1'),
        ('within="182"', 15, 'invalid window "182"'),
        ('within="1.5d"', 15, 'invalid window "1.5d"'),
        ('within="-3d"', 15, 'invalid window "-3d"'),
        ('within="3m"', 15, 'invalid window "3m"'),
        ('within="36501d"', 15, 'window "36501d" is too long: at most 36500 days'),
        ('channel="web"', 16, 'invalid channel "web": expected "pos" or "online"'),
        ('channel="POS"', 16, 'invalid channel "POS"'),
        ('category=""', 17, "category must not be empty"),
        ('category="  "', 17, "category must not be empty"),
        ('season="01-01"', 15, 'invalid season "01-01": expected "MM-DD..MM-DD"'),
        ('season="1-1..2-14"', 15, 'invalid season "1-1..2-14"'),
        ('season="13-01..01-31"', 15, "there is no month 13"),
        ('season="00-01..01-31"', 15, "there is no month 00"),
        ('season="02-30..03-01"', 15, "there is no day 02-30"),
        ('season="04-31..05-01"', 15, "there is no day 04-31"),
        ('season="01-01..01-00"', 15, "there is no day 01-00"),
        ("within=182", 15, "filter 'within' takes a quoted string, found number 182"),
    ],
)
def test_bad_filter_values(filters: str, col: int, message: str) -> None:
    error = only_error(f"orders({filters}) >= 1")
    assert (error.line, error.col, error.code) == (1, col, "bad-filter-value")
    assert message in error.message


def test_unknown_filter_suggests_the_closest() -> None:
    error = only_error('orders(chanel="pos") >= 1')
    assert (error.col, error.code) == (8, "unknown-filter")
    assert error.message == "unknown filter 'chanel'; did you mean 'channel'?"


def test_unknown_filter_without_a_close_name_lists_them() -> None:
    error = only_error('orders(store="s1") >= 1')
    assert (
        error.message
        == "unknown filter 'store' (filters: within, channel, category, season, product, sku)"
    )


def test_duplicate_filter() -> None:
    error = only_error('orders(within="7d", within="14d") >= 1')
    assert (error.col, error.code) == (21, "duplicate-filter")
    assert error.message == "duplicate filter 'within' (first given at 1:15)"


@pytest.mark.parametrize(
    ("text", "col", "found"),
    [
        ('orders("182d") >= 1', 8, 'string "182d"'),
        ("orders(3) >= 1", 8, "number 3"),
    ],
)
def test_positional_arguments_are_refused(text: str, col: int, found: str) -> None:
    error = only_error(text)
    assert (error.col, error.code) == (col, "positional-argument")
    assert error.message.startswith(
        f"positional argument {found} in orders(): filters are keywords"
    )


# --- positions ------------------------------------------------------------------------


def test_positions_of_every_node_kind() -> None:
    expr = parse('not orders(within="7d") between 1 and 2 or\n  spend() > 10 and units() != 0')
    assert isinstance(expr, Or)
    assert (expr.line, expr.col) == (1, 41)
    left, right = expr.left, expr.right
    assert isinstance(left, Not) and (left.line, left.col) == (1, 1)
    between = left.operand
    assert isinstance(between, Between) and (between.line, between.col) == (1, 25)
    assert (between.operand.line, between.operand.col) == (1, 5)
    assert (between.low.line, between.low.col) == (1, 33)
    assert (between.high.line, between.high.col) == (1, 39)
    assert isinstance(right, And) and (right.line, right.col) == (2, 16)
    assert isinstance(right.left, Compare) and (right.left.line, right.left.col) == (2, 11)
    assert (right.left.left.line, right.left.left.col) == (2, 3)
    assert (right.right.line, right.right.col) == (2, 28)


def test_positions_are_file_positions_given_a_start() -> None:
    # As in a YAML file: the rule starts at line 12, column 11, and goes on over lines
    # whose columns count from the start of the file's line.
    expr = parse_expression("orders() > 1\n      and\n      units() > 2", line=12, col=11)
    assert isinstance(expr, And)
    assert (expr.line, expr.col) == (13, 7)
    assert (expr.left.line, expr.left.col) == (12, 20)
    assert isinstance(expr.right, Compare)
    assert (expr.right.left.line, expr.right.left.col) == (14, 7)


def test_error_positions_are_file_positions_given_a_start() -> None:
    found = errors('orders() > 1\n      and orders(bad="x") > 2', line=12, col=11)
    assert [(e.line, e.col, e.code) for e in found] == [(13, 18, "unknown-filter")]
    assert found[0].source_line == '      and orders(bad="x") > 2'


def test_located_parse_uses_given_positions() -> None:
    positions = [(5, 20 + 2 * i) for i in range(len("units()>1"))] + [(5, 99)]
    expr = parse_located("units()>1", positions, source_name="f")
    assert isinstance(expr, Compare)
    assert (expr.line, expr.col) == (5, 34)
    assert (expr.right.line, expr.right.col) == (5, 36)


def test_positions_from_counts_yaml_line_breaks() -> None:
    assert positions_from("a\r\nb\rc\nd", 3, 5) == [
        (3, 5),
        (3, 6),
        (3, 7),
        (4, 1),
        (4, 2),
        (5, 1),
        (5, 2),
        (6, 1),
        (6, 2),
    ]


# --- errors ---------------------------------------------------------------------------


def test_unknown_metric_suggests_the_closest_name() -> None:
    error = only_error("order() > 3")
    assert (error.line, error.col, error.code) == (1, 1, "unknown-metric")
    assert error.message == "unknown metric 'order'; did you mean 'orders'?"


def test_unknown_metric_without_close_name_lists_the_metrics() -> None:
    error = only_error("loyalty_points() > 3")
    assert error.message.startswith("unknown metric 'loyalty_points' (metrics: orders, spend,")


def test_unknown_name_without_parentheses_is_one_error() -> None:
    error = only_error("foo > 2")
    assert error.code == "unknown-metric"


def test_missing_parentheses_after_metric() -> None:
    error = only_error("orders >= 3")
    assert (error.col, error.code) == (8, "syntax")
    assert error.message.startswith("expected '(' after metric name 'orders', found '>='")


@pytest.mark.parametrize(
    ("text", "col", "message"),
    [
        ('orders(within="7d" and', 20, "expected ')' or ',' after filter, found 'and'"),
        ("orders(within) > 1", 14, "expected '=' after filter name 'within', found ')'"),
        ("orders(within=) > 1", 15, "expected a quoted string after 'within=', found ')'"),
        (
            'orders(within="7d",) > 1',
            20,
            "expected a filter such as within=\"182d\" or ')', found ')'",
        ),
        ("orders(", 8, "expected a filter such as within=\"182d\" or ')', found end of rule"),
        ("orders() >", 11, "expected a metric, a number or '(', found end of rule"),
        ("orders() > and", 12, "expected a metric, a number or '(', found 'and'"),
        (
            "orders() 3",
            10,
            "expected a comparison operator (< <= > >= == !=) or 'between', found number 3",
        ),
        ("orders() = 3", 10, "expected a comparison operator, found '='; did you mean '=='?"),
        ("orders() > 1 < 2", 14, "comparisons cannot be chained"),
        (
            "orders() between 1 or 2",
            20,
            "expected 'and' between the bounds of 'between', found 'or'",
        ),
        ("(orders() > 1", 14, "expected ')' to close the '(' at 1:1, found end of rule"),
        ("orders() > 1)", 13, "unmatched ')'"),
        ("orders() > 1 orders() > 2", 14, "expected 'and', 'or' or end of rule, found 'orders'"),
        ("", 1, "expected a rule, found nothing"),
        ("   \n  ", 3, "expected a rule, found nothing"),
        ("orders() > 1 && units() > 1", 14, "unexpected character '&'; use 'and'"),
        ("orders() > 1 || units() > 1", 14, "unexpected character '|'; use 'or'"),
        ("!orders() > 1", 1, "unexpected character '!'; use 'not' or '!='"),
        ("orders() > 1 # note", 14, "unexpected character '#'"),
        ("orders() > 1e3", 12, "invalid number '1e3'"),
        (
            "orders(within=182d) > 1",
            15,
            "invalid number '182d'; windows are strings: within=\"182d\"",
        ),
        ("orders() > 1.", 12, "invalid number '1.'"),
        (
            'orders(category="Shoes) > 1',
            17,
            'unterminated string: expected a closing " on the same line',
        ),
        ('orders(category="Running\n Shoes") > 1', 17, "unterminated string"),
        ('orders(category="a\\nb") > 1', 19, "unknown escape '\\n' in string"),
        ("orders() > not 1", 12, "expected a metric, a number or '(', found 'not'"),
    ],
)
def test_syntax_errors_say_what_was_expected(text: str, col: int, message: str) -> None:
    error = only_error(text)
    assert error.code == "syntax"
    assert error.col == col
    assert message in error.message


def test_syntax_error_position_on_a_later_line() -> None:
    error = only_error("orders() > 1\n  and\n  spend( > 2")
    assert (error.line, error.col) == (3, 10)
    assert error.message == "expected a filter such as within=\"182d\" or ')', found '>'"


@pytest.mark.parametrize(
    ("text", "positions", "fragment"),
    [
        ("3", [(1, 1)], "expected a comparison such as 'orders() >= 1', found number 3"),
        ('"vip"', [(1, 1)], 'found string "vip"'),
        (
            "orders()",
            [(1, 1)],
            "expected a comparison such as 'orders() >= 1', found metric orders()",
        ),
        ("orders() and 3", [(1, 1), (1, 14)], "expected a comparison"),
        ("orders() > 1 or spend()", [(1, 17)], "such as 'spend() >= 1', found metric spend()"),
        ("not units()", [(1, 5)], "found metric units()"),
        ('orders() == "x"', [(1, 13)], 'found string "x"; strings are only filter values'),
        ('"x" != orders()', [(1, 1)], "strings are only filter values"),
        ("1 < 2", [(1, 3)], "expected a comparison of a metric with a number, found two numbers"),
        ("(orders() > 1) == 1", [(1, 11)], "found a condition"),
        ("3 between 1 and 4", [(1, 1)], "expected a metric before 'between', found number 3"),
    ],
)
def test_rules_must_be_comparisons(
    text: str, positions: list[tuple[int, int]], fragment: str
) -> None:
    found = errors(text)
    assert [(e.line, e.col) for e in found] == positions
    assert all(e.code == "expected-comparison" for e in found)
    assert fragment in found[-1].message


@pytest.mark.parametrize(
    ("text", "col"),
    [
        ("days_since_last_purchase() > days_since_first_purchase()", 1),
        ('orders(within="7d") < days_since_first_purchase()', 23),
        ('days_since_first_purchase() == spend(within="30d")', 1),
    ],
)
def test_days_since_compares_only_with_what_time_does_not_change(text: str, col: int) -> None:
    error = only_error(text)
    assert (error.col, error.code) == (col, "not-schedulable")
    assert "can only be compared with an expression that time does not change" in error.message


def test_days_since_compares_with_metrics_over_all_history() -> None:
    # language 2: the change day is worked out from the other side's value
    assert isinstance(parse("orders() < days_since_first_purchase()"), Compare)
    assert isinstance(parse("days_since_first_purchase() == spend()"), Compare)


def test_days_since_may_use_between() -> None:
    assert isinstance(parse("days_since_last_purchase() between 30 and 90"), Between)


@pytest.mark.parametrize(
    ("text", "col", "message"),
    [
        ("orders() between 4 and 2", 18, "empty range: low bound 4 is greater than high bound 2"),
        ("orders() between 1.5 and 1.25", 18, "low bound 1.5 is greater than high bound 1.25"),
        (
            "orders() between (units() > 1) and 2",
            27,
            "the bounds of 'between' must be numbers, found a condition",
        ),
        (
            'orders() between 1 and "x"',
            24,
            "the bounds of 'between' must be numbers, found string \"x\"",
        ),
    ],
)
def test_between_bounds(text: str, col: int, message: str) -> None:
    error = only_error(text)
    assert (error.col, error.code) == (col, "bad-between")
    assert message in error.message


def test_every_semantic_problem_of_a_rule_is_reported() -> None:
    found = errors('order() > 1 and orders(chanel="x", within="0d") > 1 and 3')
    assert [(e.col, e.code) for e in found] == [
        (1, "unknown-metric"),
        (24, "unknown-filter"),
        (43, "bad-filter-value"),
        (57, "expected-comparison"),
    ]


def test_deep_nesting_is_an_error_not_a_crash() -> None:
    assert isinstance(parse("(" * 50 + "orders() > 1" + ")" * 50), Compare)
    error = only_error("(" * 51 + "orders() > 1" + ")" * 51)
    assert "nests '(' and 'not' more than 50 deep" in error.message
    assert only_error("not " * 60 + "orders() > 1").code == "syntax"


# --- rendering ------------------------------------------------------------------------


def test_errors_render_like_a_compiler() -> None:
    with pytest.raises(RuleFileError) as caught:
        parse_expression("order() > 3", source_name="rules.yaml", line=12, col=11)
    assert str(caught.value) == (
        "rules.yaml:12:11: error: unknown metric 'order'; did you mean 'orders'?\n"
        "              order() > 3\n"
        "              ^"
    )


def test_caret_keeps_tabs_of_the_source_line() -> None:
    error = RuleError("f", 1, 3, "m", "\t\tx")
    assert str(error).splitlines()[2] == "    \t\t^"


def test_error_without_position_has_no_source_lines() -> None:
    assert str(RuleError("f.yaml", 0, 0, "cannot read rule file: gone")) == (
        "f.yaml: error: cannot read rule file: gone"
    )


def test_rule_file_error_sorts_and_deduplicates() -> None:
    late, early = RuleError("f", 9, 1, "late"), RuleError("f", 2, 5, "early")
    assert RuleFileError([late, early, late]).errors == [early, late]
    with pytest.raises(ValueError):
        RuleFileError([])


# --- printing and round trips ---------------------------------------------------------


def test_format_expression_is_canonical() -> None:
    text = (
        "not (orders(within=\"2w\", channel='pos') > 1 or spend() <= 10.50)"
        ' and days_since_last_purchase(season="11-15..01-15") between 1 and 3'
    )
    assert format_expression(parse(text)) == (
        'not (orders(within="14d", channel="pos") > 1 or spend() <= 10.50)'
        ' and days_since_last_purchase(season="11-15..01-15") between 1 and 3'
    )


def test_format_parenthesises_right_nested_and_or() -> None:
    a, b, c = (cmp(">", m(), n(str(i))) for i in range(3))
    assert format_expression(And(a, And(b, c, 0, 0), 0, 0)) == (
        "orders() > 0 and (orders() > 1 and orders() > 2)"
    )
    assert format_expression(Or(Or(a, b, 0, 0), c, 0, 0)) == (
        "orders() > 0 or orders() > 1 or orders() > 2"
    )


NON_DAYS_METRICS = tuple(name for name in METRICS if name not in DAYS_SINCE_METRICS)

numbers = st.decimals(
    min_value=Decimal("-1000000"),
    max_value=Decimal("1000000"),
    places=2,
    allow_nan=False,
    allow_infinity=False,
).map(lambda d: Number(d, 0, 0))


@st.composite
def metrics(draw: st.DrawFn, names: tuple[str, ...] = METRICS) -> Metric:
    season = draw(
        st.none()
        | st.tuples(st.integers(1, 12), st.integers(1, 28), st.integers(1, 12), st.integers(1, 28))
    )
    line_text = st.none() | st.text(min_size=1, max_size=12).filter(
        lambda s: s.strip() != ""
    ).filter(lambda s: not any(c in s for c in "\n\r\x85\u2028\u2029"))
    return Metric(
        draw(st.sampled_from(names)),
        draw(st.none() | st.integers(1, 36500)),
        draw(st.none() | st.sampled_from(["pos", "online"])),
        draw(line_text),
        season,
        0,
        0,
        draw(line_text),  # product=
        draw(line_text),  # sku=
    )


@st.composite
def comparisons(draw: st.DrawFn) -> Expr:
    op = draw(st.sampled_from(["<", "<=", ">", ">=", "==", "!="]))
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return Compare(op, draw(metrics()), draw(numbers), 0, 0)
    if kind == 1:
        return Compare(op, draw(numbers), draw(metrics()), 0, 0)
    if kind == 2:
        pair = metrics(NON_DAYS_METRICS)
        return Compare(op, draw(pair), draw(pair), 0, 0)
    low, high = sorted([draw(numbers), draw(numbers)], key=lambda number: number.value)
    return Between(draw(metrics()), low, high, 0, 0)


conditions = st.recursive(
    comparisons(),
    lambda inner: (
        st.builds(Not, inner, st.just(0), st.just(0))
        | st.builds(And, inner, inner, st.just(0), st.just(0))
        | st.builds(Or, inner, inner, st.just(0), st.just(0))
    ),
    max_leaves=12,
)


def categories(expr: Expr) -> list[str]:
    if isinstance(expr, Metric):
        return [text for text in (expr.category, expr.product, expr.sku) if text is not None]
    found: list[str] = []
    for field in dataclasses.fields(expr):
        value = getattr(expr, field.name)
        if isinstance(value, Number | String | Metric | Compare | Between | And | Or | Not):
            found.extend(categories(value))
    return found


@given(conditions)
def test_printing_and_parsing_gives_back_the_same_ast(expr: Expr) -> None:
    text = format_expression(expr)
    assert bare(parse(text)) == expr


@given(conditions)
def test_positions_point_at_the_node_in_the_text(expr: Expr) -> None:
    # Spread the rule over lines as a YAML block scalar would, then check that every
    # metric and number sits where its position says.
    assume(not any(" and " in c or " or " in c for c in categories(expr)))
    text = format_expression(expr).replace(" and ", "\n  and ").replace(" or ", "\n or ")
    lines = text.split("\n")

    def check(node: Expr) -> None:
        rest = lines[node.line - 1][node.col - 1 :]
        if isinstance(node, Metric):
            assert rest.startswith(node.name + "(")
        elif isinstance(node, Number):
            assert rest.startswith(format(node.value, "f"))
        elif isinstance(node, Compare):
            assert rest.startswith(node.op)
            check(node.left)
            check(node.right)
        elif isinstance(node, Between):
            assert rest.startswith("between")
            check(node.operand)
            check(node.low)
            check(node.high)
        elif isinstance(node, Not):
            assert rest.startswith("not")
            check(node.operand)
        elif isinstance(node, And | Or):
            assert rest.startswith("and" if isinstance(node, And) else "or")
            check(node.left)
            check(node.right)

    check(parse(text))
