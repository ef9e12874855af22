"""Rule expression text -> validated AST with file positions (tokenizer + recursive descent)."""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

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
    String,
)
from segments.rules.errors import RuleError, RuleFileError, source_line_at

# Grammar, loosest binding first (each level is one method of _Parser):
#
#   rule        := or_expr END
#   or_expr     := and_expr ("or" and_expr)*
#   and_expr    := not_expr ("and" not_expr)*
#   not_expr    := "not" not_expr | comparison
#   comparison  := sum (COMPARE_OP sum | "between" sum "and" sum)?
#   sum         := product (("+" | "-") product)*
#   product     := unary (("*" | "/") unary)*
#   unary       := "-" unary | primary
#   primary     := NUMBER | STRING | metric_call | segment_ref | "(" or_expr ")"
#   metric_call := NAME "(" (filter ("," filter)*)? ")"
#   filter      := NAME "=" STRING
#   segment_ref := "in_segment" "(" STRING ")"
#
# Node positions: a literal, metric or segment_ref at its first character,
# Compare/Between/And/Or/Arithmetic at their operator, Not and Negate at their keyword
# or minus. A minus before a number literal folds into the number (-2.5 is one Number),
# so every version-1 rule parses to the tree it always did.

METRICS: tuple[str, ...] = (
    "orders",
    "spend",
    "avg_order_value",
    "units",
    "discounted_orders",
    "distinct_categories",
    "days_since_last_purchase",
    "days_since_first_purchase",
    "min_order_value",
    "max_order_value",
    "avg_days_between_orders",
    "distinct_skus",
    "distinct_products",
    "max_skus_per_product",
)
IN_SEGMENT = "in_segment"
DAYS_SINCE_METRICS = frozenset({"days_since_last_purchase", "days_since_first_purchase"})
FILTERS: tuple[str, ...] = ("within", "channel", "category", "season", "product", "sku")
CHANNELS: tuple[str, ...] = ("pos", "online")
COMPARE_OPS: tuple[str, ...] = ("<", "<=", ">", ">=", "==", "!=")
ARITHMETIC_OPS: tuple[str, ...] = ("+", "-", "*", "/")
KEYWORDS = frozenset({"and", "or", "not", "between"})
MAX_WINDOW_DAYS = 36_500  # 100 years: keeps date arithmetic far from date.min
MAX_NESTING = 50  # of '(' and 'not': deeper is a mistake, and would exhaust Python's stack

Position = tuple[int, int]

_LINE_BREAKS = frozenset("\n\r\x85\u2028\u2029")  # the line breaks YAML counts
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_WORD = re.compile(r"[A-Za-z0-9_.]*")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_WITHIN = re.compile(r"([0-9]+)([dw])")
_SEASON = re.compile(r"([0-9]{2})-([0-9]{2})\.\.([0-9]{2})-([0-9]{2})")
_DAYS_IN_MONTH = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)  # Feb 29 is a valid season edge
_TWO_CHAR_OPS = ("<=", ">=", "==", "!=")
_ONE_CHAR_OPS = "<>(),=+-*/"


def positions_from(text: str, line: int = 1, col: int = 1) -> list[Position]:
    """The (line, col) of every character of text, plus one for its end, counting YAML's breaks."""
    positions: list[Position] = []
    for index, ch in enumerate(text):
        positions.append((line, col))
        crlf = ch == "\r" and text[index + 1 : index + 2] == "\n"
        if ch in _LINE_BREAKS and not crlf:
            line, col = line + 1, 1
        else:
            col += 1
    positions.append((line, col))
    return positions


def parse_expression(
    text: str,
    *,
    source_name: str = "<expression>",
    line: int = 1,
    col: int = 1,
    file_text: str | None = None,
) -> Expr:
    """Parse one rule whose first character sits at (line, col) of source_name.

    file_text, the whole file, supplies the source lines shown under errors; without it
    they are taken from text itself. Raises RuleFileError listing every problem found.
    """
    if file_text is None:
        # Pad so that file line `line` is line `line` and col `col` lines up.
        file_text = "\n" * (line - 1) + " " * (col - 1) + text
    return parse_located(
        text, positions_from(text, line, col), source_name=source_name, file_text=file_text
    )


def parse_located(
    text: str,
    positions: Sequence[Position],
    *,
    source_name: str = "<expression>",
    file_text: str = "",
) -> Expr:
    """Parse text whose i-th character sits at positions[i] of the file (len(text) + 1 entries).

    This is how the rule file loader keeps exact positions for quoted YAML scalars, whose
    value differs from their source text by escapes and line folding.
    """
    if len(positions) != len(text) + 1:
        raise ValueError("positions needs one entry per character plus one for the end")
    problems: list[_Problem] = []
    expr: Expr | None = None
    try:
        tokens = _tokenize(text, positions)
        parser = _Parser(tokens, problems)
        expr = parser.parse_rule()
    except _SyntaxError as error:
        problems.append(error.problem)
    if problems or expr is None:
        raise RuleFileError(
            RuleError(
                file=source_name,
                line=p.line,
                col=p.col,
                message=p.message,
                source_line=source_line_at(file_text, p.line),
                code=p.code,
            )
            for p in problems
        )
    return expr


def format_expression(expr: Expr) -> str:
    """The canonical text of expr: parsing it gives back expr (positions aside)."""
    return _format(expr, _PREC_OR)


def closest(word: str, candidates: Sequence[str]) -> str | None:
    """The candidate a typo most likely meant, or None when nothing is close."""
    matches = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return matches[0] if matches else None


# --- tokens ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str  # "number" | "string" | "name" | "op" | "end"
    text: str  # the spelling in the source
    value: str  # decoded string content for "string"; otherwise == text
    line: int
    col: int

    def describe(self) -> str:
        if self.kind == "end":
            return "end of rule"
        if self.kind == "number":
            return f"number {self.text}"
        if self.kind == "string":
            return f"string {self.text}"
        return f"'{self.text}'"

    def is_op(self, *ops: str) -> bool:
        return self.kind == "op" and self.text in ops

    def is_keyword(self, keyword: str) -> bool:
        return self.kind == "name" and self.text == keyword


@dataclass(frozen=True, slots=True)
class _Problem:
    line: int
    col: int
    message: str
    code: str


class _SyntaxError(Exception):
    """Parsing of this rule cannot go on; the problem is reported with the others."""

    def __init__(self, problem: _Problem) -> None:
        super().__init__(problem.message)
        self.problem = problem


def _syntax(at: Position, message: str) -> _SyntaxError:
    return _SyntaxError(_Problem(at[0], at[1], message, "syntax"))


def _tokenize(text: str, positions: Sequence[Position]) -> list[_Token]:
    tokens: list[_Token] = []
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        at = positions[i]
        if ch.isspace():
            i += 1
            continue
        if ch.isdigit():
            match = _NUMBER.match(text, i)
            assert match is not None
            end = match.end()
            word = _WORD.match(text, end)
            if word is not None and word.end() > end:
                spelling = text[i : word.end()]
                hint = ""
                if _WITHIN.fullmatch(spelling):
                    hint = f'; windows are strings: within="{spelling}"'
                raise _syntax(at, f"invalid number '{spelling}'{hint}")
            tokens.append(_Token("number", text[i:end], text[i:end], *at))
            i = end
            continue
        if ch.isalpha() or ch == "_":
            match = _NAME.match(text, i)
            assert match is not None
            tokens.append(_Token("name", match.group(), match.group(), *at))
            i = match.end()
            continue
        if ch in "\"'":
            i = _string(text, positions, i, tokens)
            continue
        two = text[i : i + 2]
        if two in _TWO_CHAR_OPS:
            tokens.append(_Token("op", two, two, *at))
            i += 2
            continue
        if ch in _ONE_CHAR_OPS:
            tokens.append(_Token("op", ch, ch, *at))
            i += 1
            continue
        raise _syntax(at, _unexpected_character(ch, text[i : i + 2]))
    tokens.append(_Token("end", "", "", *positions[n]))
    return tokens


def _string(text: str, positions: Sequence[Position], start: int, tokens: list[_Token]) -> int:
    """Scan the string literal opening at start; append its token and return the index after."""
    quote = text[start]
    chars: list[str] = []
    i = start + 1
    while True:
        if i >= len(text) or text[i] in _LINE_BREAKS:
            raise _syntax(
                positions[start],
                f"unterminated string: expected a closing {quote} on the same line",
            )
        ch = text[i]
        if ch == quote:
            break
        if ch == "\\":
            escaped = text[i + 1 : i + 2]
            if escaped not in ("\\", '"', "'"):
                raise _syntax(
                    positions[i],
                    f"unknown escape '\\{escaped}' in string: "
                    "expected \\\\, \\\" or \\' (other characters are written as they are)",
                )
            chars.append(escaped)
            i += 2
            continue
        chars.append(ch)
        i += 1
    tokens.append(_Token("string", text[start : i + 1], "".join(chars), *positions[start]))
    return i + 1


def _unexpected_character(ch: str, two: str) -> str:
    hints = {"&&": "; use 'and'", "||": "; use 'or'", "!": "; use 'not' or '!='"}
    hint = hints.get(two, hints.get(ch, ""))
    if ch == "#":
        hint = "; comments belong on YAML lines, not inside a rule"
    return f"unexpected character {ch!r}{hint}"


# --- parser ---------------------------------------------------------------------------


def _is_condition(expr: Expr) -> bool:
    return isinstance(expr, Compare | Between | And | Or | Not | InSegment)


def _describe(expr: Expr) -> str:
    if isinstance(expr, Number):
        return f"number {_format_number(expr.value)}"
    if isinstance(expr, String):
        return f"string {_quote(expr.value)}"
    if isinstance(expr, Metric):
        return f"metric {expr.name}()"
    if isinstance(expr, Arithmetic | Negate):
        return f"the arithmetic {format_expression(expr)}"
    return "a condition"


def has_metric(expr: Expr) -> bool:
    """Whether a value expression reads a metric (else it is a constant)."""
    if isinstance(expr, Metric):
        return True
    if isinstance(expr, Arithmetic):
        return has_metric(expr.left) or has_metric(expr.right)
    if isinstance(expr, Negate):
        return has_metric(expr.operand)
    return False


def time_invariant(expr: Expr) -> bool:
    """Whether time alone cannot change the value: numbers, and arithmetic of them and of
    metrics over all history that are not days-since (they change only with events)."""
    if isinstance(expr, Number):
        return True
    if isinstance(expr, Metric):
        return expr.within_days is None and expr.name not in DAYS_SINCE_METRICS
    if isinstance(expr, Arithmetic):
        return time_invariant(expr.left) and time_invariant(expr.right)
    if isinstance(expr, Negate):
        return time_invariant(expr.operand)
    return False


def _changing_part(expr: Expr) -> Metric | None:
    """The first metric of expr that time alone changes (windowed or days-since)."""
    if isinstance(expr, Metric):
        return None if time_invariant(expr) else expr
    for child in (
        (expr.left, expr.right)
        if isinstance(expr, Arithmetic)
        else (expr.operand,)
        if isinstance(expr, Negate)
        else ()
    ):
        found = _changing_part(child)
        if found is not None:
            return found
    return None


def _days_since(expr: Expr) -> Metric | None:
    return expr if isinstance(expr, Metric) and expr.name in DAYS_SINCE_METRICS else None


class _Parser:
    """One rule's tokens -> AST. Syntax errors abort; semantic problems are collected."""

    def __init__(self, tokens: list[_Token], problems: list[_Problem]) -> None:
        self.tokens = tokens
        self.index = 0
        self.problems = problems
        # Stand-ins for unknown metric names already reported; no second error about them.
        self.reported: set[int] = set()
        self.depth = 0

    # token helpers

    @property
    def token(self) -> _Token:
        return self.tokens[self.index]

    def peek(self, offset: int = 1) -> _Token:
        return self.tokens[min(self.index + offset, len(self.tokens) - 1)]

    def advance(self) -> _Token:
        token = self.token
        if token.kind != "end":
            self.index += 1
        return token

    def enter(self, token: _Token) -> None:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise _syntax(
                (token.line, token.col),
                f"the rule nests '(' and 'not' more than {MAX_NESTING} deep",
            )

    def problem(self, line: int, col: int, message: str, code: str) -> None:
        self.problems.append(_Problem(line, col, message, code))

    def expect_op(self, op: str, context: str) -> _Token:
        token = self.token
        if not token.is_op(op):
            raise _syntax(
                (token.line, token.col), f"expected '{op}' {context}, found {token.describe()}"
            )
        return self.advance()

    # grammar

    def parse_rule(self) -> Expr:
        if self.token.kind == "end":
            raise _syntax((self.token.line, self.token.col), "expected a rule, found nothing")
        expr = self.or_expr()
        token = self.token
        if token.kind != "end":
            if token.is_op(")"):
                message = "unmatched ')'"
            else:
                message = f"expected 'and', 'or' or end of rule, found {token.describe()}"
            raise _syntax((token.line, token.col), message)
        self.require_condition(expr)
        return expr

    def or_expr(self) -> Expr:
        left = self.and_expr()
        while self.token.is_keyword("or"):
            op = self.advance()
            right = self.and_expr()
            self.require_condition(left)
            self.require_condition(right)
            left = Or(left, right, op.line, op.col)
        return left

    def and_expr(self) -> Expr:
        left = self.not_expr()
        while self.token.is_keyword("and"):
            op = self.advance()
            right = self.not_expr()
            self.require_condition(left)
            self.require_condition(right)
            left = And(left, right, op.line, op.col)
        return left

    def not_expr(self) -> Expr:
        if self.token.is_keyword("not"):
            op = self.advance()
            self.enter(op)
            operand = self.not_expr()
            self.depth -= 1
            self.require_condition(operand)
            return Not(operand, op.line, op.col)
        return self.comparison()

    def comparison(self) -> Expr:
        left = self.sum_expr()
        token = self.token
        if token.kind == "op" and token.text in COMPARE_OPS:
            self.advance()
            right = self.sum_expr()
            expr: Expr = Compare(token.text, left, right, token.line, token.col)
            self.check_compare(left, right, token)
        elif token.is_keyword("between"):
            self.advance()
            low = self.sum_expr()
            if not self.token.is_keyword("and"):
                raise _syntax(
                    (self.token.line, self.token.col),
                    "expected 'and' between the bounds of 'between', "
                    f"found {self.token.describe()}",
                )
            self.advance()
            high = self.sum_expr()
            expr = Between(left, low, high, token.line, token.col)
            self.check_between(left, low, high)
        else:
            if token.is_op("="):
                raise _syntax(
                    (token.line, token.col),
                    "expected a comparison operator, found '='; did you mean '=='?",
                )
            if not _is_condition(left) and self.unexpected_after_operand(token):
                raise _syntax(
                    (token.line, token.col),
                    "expected a comparison operator (< <= > >= == !=) or 'between', "
                    f"found {token.describe()}",
                )
            return left
        after = self.token
        if (after.kind == "op" and after.text in COMPARE_OPS) or after.is_keyword("between"):
            raise _syntax(
                (after.line, after.col),
                "comparisons cannot be chained: expected 'and', 'or' or end of rule, "
                f"found {after.describe()}",
            )
        return expr

    @staticmethod
    def unexpected_after_operand(token: _Token) -> bool:
        """True when token cannot follow a bare operand (which then lacks its comparison)."""
        return not (token.kind == "end" or token.is_op(")") or token.text in ("and", "or"))

    def sum_expr(self) -> Expr:
        left = self.product()
        while self.token.is_op("+", "-"):
            op = self.advance()
            right = self.product()
            left = self.arithmetic(op, left, right)
        return left

    def product(self) -> Expr:
        left = self.unary()
        while self.token.is_op("*", "/"):
            op = self.advance()
            right = self.unary()
            left = self.arithmetic(op, left, right)
        return left

    def unary(self) -> Expr:
        if not self.token.is_op("-"):
            return self.primary()
        op = self.advance()
        self.enter(op)
        operand = self.unary()
        self.depth -= 1
        if isinstance(operand, Number):
            # exact (no context rounding), and -2.5 stays the literal it was in version 1
            return Number(operand.value.copy_negate(), op.line, op.col)
        self.check_arithmetic_operand(operand, op)
        return Negate(operand, op.line, op.col)

    def arithmetic(self, op: _Token, left: Expr, right: Expr) -> Arithmetic:
        self.check_arithmetic_operand(left, op)
        self.check_arithmetic_operand(right, op)
        return Arithmetic(op.text, left, right, op.line, op.col)

    def primary(self) -> Expr:
        token = self.token
        if token.kind == "number":
            self.advance()
            return Number(Decimal(token.text), token.line, token.col)
        if token.kind == "string":
            self.advance()
            return String(token.value, token.line, token.col)
        if token.is_op("("):
            self.advance()
            self.enter(token)
            inner = self.or_expr()
            self.depth -= 1
            closing = self.token
            if not closing.is_op(")"):
                raise _syntax(
                    (closing.line, closing.col),
                    f"expected ')' to close the '(' at {token.line}:{token.col}, "
                    f"found {closing.describe()}",
                )
            self.advance()
            return inner
        if token.is_keyword(IN_SEGMENT):
            return self.segment_ref()
        if token.kind == "name" and token.text not in KEYWORDS:
            return self.metric_call()
        raise _syntax(
            (token.line, token.col),
            f"expected a metric, a number or '(', found {token.describe()}",
        )

    def segment_ref(self) -> InSegment:
        name = self.advance()
        self.expect_op("(", "after 'in_segment'")
        argument = self.token
        if argument.kind != "string":
            raise _syntax(
                (argument.line, argument.col),
                'expected a segment name in quotes, e.g. in_segment("vip"), '
                f"found {argument.describe()}",
            )
        self.advance()
        self.expect_op(")", "after the segment name of in_segment")
        return InSegment(argument.value, name.line, name.col)

    def metric_call(self) -> Metric:
        name = self.advance()
        if name.text not in METRICS:
            suggestion = closest(name.text, (*METRICS, IN_SEGMENT))
            hint = (
                f"; did you mean '{suggestion}'?"
                if suggestion
                else f" (metrics: {', '.join(METRICS)})"
            )
            self.problem(
                name.line, name.col, f"unknown metric '{name.text}'{hint}", "unknown-metric"
            )
            if not self.token.is_op("("):
                stand_in = Metric(name.text, None, None, None, None, name.line, name.col)
                self.reported.add(id(stand_in))
                return stand_in
        filters: dict[str, _Token] = {}
        if not self.token.is_op("("):
            after = self.token
            raise _syntax(
                (after.line, after.col),
                f"expected '(' after metric name '{name.text}', found {after.describe()}; "
                f"metrics are called like {name.text}()",
            )
        self.advance()
        if not self.token.is_op(")"):
            while True:
                self.filter_argument(name.text, filters)
                if self.token.is_op(")"):
                    break
                if not self.token.is_op(","):
                    raise _syntax(
                        (self.token.line, self.token.col),
                        f"expected ')' or ',' after filter, found {self.token.describe()}",
                    )
                self.advance()
        self.advance()  # the ')'
        return self.build_metric(name, filters)

    def filter_argument(self, metric: str, filters: dict[str, _Token]) -> None:
        token = self.token
        if token.kind in ("number", "string"):
            self.advance()
            self.problem(
                token.line,
                token.col,
                f"positional argument {token.describe()} in {metric}(): filters are keywords, "
                f'e.g. {metric}(within="182d")',
                "positional-argument",
            )
            return
        if token.kind != "name" or token.text in KEYWORDS:
            raise _syntax(
                (token.line, token.col),
                f"expected a filter such as within=\"182d\" or ')', found {token.describe()}",
            )
        self.advance()
        if not self.token.is_op("="):
            raise _syntax(
                (self.token.line, self.token.col),
                f"expected '=' after filter name '{token.text}', found {self.token.describe()}",
            )
        self.advance()
        value = self.token
        if value.kind == "number":
            self.advance()
            self.problem(
                value.line,
                value.col,
                f"filter '{token.text}' takes a quoted string, found {value.describe()}",
                "bad-filter-value",
            )
            return
        if value.kind != "string":
            raise _syntax(
                (value.line, value.col),
                f"expected a quoted string after '{token.text}=', found {value.describe()}",
            )
        self.advance()
        if token.text not in FILTERS:
            suggestion = closest(token.text, FILTERS)
            hint = (
                f"; did you mean '{suggestion}'?"
                if suggestion
                else f" (filters: {', '.join(FILTERS)})"
            )
            self.problem(
                token.line, token.col, f"unknown filter '{token.text}'{hint}", "unknown-filter"
            )
            return
        if token.text in filters:
            first = filters[token.text]
            self.problem(
                token.line,
                token.col,
                f"duplicate filter '{token.text}' (first given at {first.line}:{first.col})",
                "duplicate-filter",
            )
            return
        filters[token.text] = value

    def build_metric(self, name: _Token, filters: dict[str, _Token]) -> Metric:
        within_days: int | None = None
        channel: str | None = None
        category: str | None = None
        season: tuple[int, int, int, int] | None = None
        if "within" in filters:
            within_days = self.window(filters["within"])
        if "channel" in filters:
            token = filters["channel"]
            if token.value in CHANNELS:
                channel = token.value
            else:
                self.problem(
                    token.line,
                    token.col,
                    f'invalid channel {token.text}: expected "pos" or "online"',
                    "bad-filter-value",
                )
        if "category" in filters:
            token = filters["category"]
            if token.value.strip():
                category = token.value
            else:
                self.problem(
                    token.line, token.col, "category must not be empty", "bad-filter-value"
                )
        if "season" in filters:
            season = self.season(filters["season"])
        product = self.line_field(filters, "product")
        sku = self.line_field(filters, "sku")
        return Metric(
            name.text, within_days, channel, category, season, name.line, name.col, product, sku
        )

    def line_field(self, filters: dict[str, _Token], name: str) -> str | None:
        """product= or sku=: any non-blank text, matched as written (like category=)."""
        token = filters.get(name)
        if token is None:
            return None
        if token.value.strip():
            return token.value
        self.problem(token.line, token.col, f"{name} must not be empty", "bad-filter-value")
        return None

    def window(self, token: _Token) -> int | None:
        match = _WITHIN.fullmatch(token.value)
        if match is None or int(match.group(1)) < 1:
            self.problem(
                token.line,
                token.col,
                f'invalid window {token.text}: expected "<N>d" or "<N>w" with N >= 1, e.g. "182d"',
                "bad-filter-value",
            )
            return None
        days = int(match.group(1)) * (7 if match.group(2) == "w" else 1)
        if days > MAX_WINDOW_DAYS:
            self.problem(
                token.line,
                token.col,
                f"window {token.text} is too long: at most {MAX_WINDOW_DAYS} days; "
                "leave 'within' out for all history",
                "bad-filter-value",
            )
            return None
        return days

    def season(self, token: _Token) -> tuple[int, int, int, int] | None:
        match = _SEASON.fullmatch(token.value)
        expected = 'expected "MM-DD..MM-DD", e.g. "11-15..01-15"'
        if match is None:
            self.problem(
                token.line,
                token.col,
                f"invalid season {token.text}: {expected}",
                "bad-filter-value",
            )
            return None
        from_month, from_day, to_month, to_day = (int(part) for part in match.groups())
        for month, day in ((from_month, from_day), (to_month, to_day)):
            if not 1 <= month <= 12:
                reason = f"there is no month {month:02d}"
            elif not 1 <= day <= _DAYS_IN_MONTH[month - 1]:
                reason = f"there is no day {month:02d}-{day:02d}"
            else:
                continue
            self.problem(
                token.line,
                token.col,
                f"invalid season {token.text}: {reason}; {expected}",
                "bad-filter-value",
            )
            return None
        return (from_month, from_day, to_month, to_day)

    # semantic checks

    def require_condition(self, expr: Expr) -> None:
        if not _is_condition(expr) and id(expr) not in self.reported:
            example = f"{expr.name}() >= 1" if isinstance(expr, Metric) else "orders() >= 1"
            self.problem(
                expr.line,
                expr.col,
                f"expected a comparison such as '{example}', found {_describe(expr)}",
                "expected-comparison",
            )

    def check_arithmetic_operand(self, operand: Expr, op: _Token) -> None:
        if isinstance(operand, String):
            self.problem(
                operand.line,
                operand.col,
                f"expected a number or a metric in arithmetic, found {_describe(operand)}; "
                "strings are only filter values",
                "expected-comparison",
            )
        elif _is_condition(operand):
            self.problem(
                operand.line,
                operand.col,
                f"expected a number or a metric on each side of '{op.text}', found a condition",
                "expected-comparison",
            )
        elif (metric := _days_since(operand)) is not None:
            self.problem(
                metric.line,
                metric.col,
                f"{metric.name}() cannot take part in arithmetic: the day on which such a "
                "rule changes could not be scheduled exactly; compare it directly with a "
                f"number instead, e.g. {metric.name}() > 30",
                "not-schedulable",
            )

    def check_compare(self, left: Expr, right: Expr, op: _Token) -> None:
        sides = (left, right)
        for side in sides:
            if isinstance(side, String):
                self.problem(
                    side.line,
                    side.col,
                    f"expected a comparison of a metric with a number, found {_describe(side)}; "
                    "strings are only filter values",
                    "expected-comparison",
                )
                return
            if _is_condition(side):
                self.problem(
                    side.line,
                    side.col,
                    "expected a metric or a number on each side of a comparison, found a condition",
                    "expected-comparison",
                )
                return
        if isinstance(left, Number) and isinstance(right, Number):
            self.problem(
                op.line,
                op.col,
                "expected a comparison of a metric with a number, found two numbers",
                "expected-comparison",
            )
            return
        if not has_metric(left) and not has_metric(right):
            self.problem(
                op.line,
                op.col,
                "expected a comparison that reads a metric, found only numbers",
                "expected-comparison",
            )
            return
        for side, other in ((left, right), (right, left)):
            if _days_since(side) is not None:
                self.check_days_since_against(side, other)
                return

    def check_days_since_against(self, metric: Expr, other: Expr) -> None:
        """A days-since metric changes every day: the day a comparison of it changes is
        computed from the value it is compared with, so time alone must not change that
        value (SPEC section 3, language 2)."""
        assert isinstance(metric, Metric)
        if time_invariant(other):
            return
        changing = _changing_part(other)
        if changing is None:
            return  # strings and conditions are reported on their own
        if changing.name in DAYS_SINCE_METRICS:
            reason = "it cannot be compared with another days-since metric"
        else:
            reason = (
                f"it is compared with {changing.name}(within=...), which changes as orders "
                "leave its window"
            )
        self.problem(
            metric.line,
            metric.col,
            f"{metric.name}() can only be compared with an expression that time does not "
            f"change (numbers, metrics without within=): {reason}, so the day on which the "
            "comparison changes could not be scheduled exactly",
            "not-schedulable",
        )

    def check_between(self, operand: Expr, low: Expr, high: Expr) -> None:
        if (
            isinstance(operand, String)
            or _is_condition(operand)
            or not (has_metric(operand) or has_metric(low) or has_metric(high))
        ):
            self.problem(
                operand.line,
                operand.col,
                f"expected a metric before 'between', found {_describe(operand)}",
                "expected-comparison",
            )
        for bound in (low, high):
            if isinstance(bound, String) or _is_condition(bound):
                self.problem(
                    bound.line,
                    bound.col,
                    f"the bounds of 'between' must be numbers, found {_describe(bound)}",
                    "bad-between",
                )
            elif (metric := _days_since(bound)) is not None:
                self.problem(
                    metric.line,
                    metric.col,
                    f"{metric.name}() cannot be a bound of 'between': the day on which the "
                    f"rule changes could not be scheduled exactly; write {metric.name}() "
                    "between ... and ... or compare it with a number",
                    "not-schedulable",
                )
        if _days_since(operand) is not None:
            for bound in (low, high):
                if not (isinstance(bound, String) or _is_condition(bound) or _days_since(bound)):
                    self.check_days_since_against(operand, bound)
        if isinstance(low, Number) and isinstance(high, Number) and low.value > high.value:
            self.problem(
                low.line,
                low.col,
                f"empty range: low bound {_format_number(low.value)} is greater than "
                f"high bound {_format_number(high.value)}",
                "bad-between",
            )


# --- printer --------------------------------------------------------------------------

_PREC_OR, _PREC_AND, _PREC_NOT, _PREC_COMPARE, _PREC_SUM, _PREC_PRODUCT, _PREC_UNARY = range(1, 8)
_PREC_PRIMARY = 8


def _precedence(expr: Expr) -> int:
    if isinstance(expr, Arithmetic):
        return _PREC_SUM if expr.op in ("+", "-") else _PREC_PRODUCT
    if isinstance(expr, Negate):
        return _PREC_UNARY
    if isinstance(expr, Or):
        return _PREC_OR
    if isinstance(expr, And):
        return _PREC_AND
    if isinstance(expr, Not):
        return _PREC_NOT
    if isinstance(expr, Compare | Between):
        return _PREC_COMPARE
    return _PREC_PRIMARY


def _format(expr: Expr, at_least: int) -> str:
    text = _format_bare(expr)
    return f"({text})" if _precedence(expr) < at_least else text


def _format_bare(expr: Expr) -> str:
    if isinstance(expr, Number):
        return _format_number(expr.value)
    if isinstance(expr, String):
        return _quote(expr.value)
    if isinstance(expr, Metric):
        return _format_metric(expr)
    if isinstance(expr, InSegment):
        return f"{IN_SEGMENT}({_quote(expr.name)})"
    if isinstance(expr, Arithmetic):
        own = _precedence(expr)
        return f"{_format(expr.left, own)} {expr.op} {_format(expr.right, own + 1)}"
    if isinstance(expr, Negate):
        return f"-{_format(expr.operand, _PREC_UNARY)}"
    if isinstance(expr, Compare):
        left = _format(expr.left, _PREC_SUM)
        return f"{left} {expr.op} {_format(expr.right, _PREC_SUM)}"
    if isinstance(expr, Between):
        operand = _format(expr.operand, _PREC_SUM)
        low = _format(expr.low, _PREC_SUM)
        return f"{operand} between {low} and {_format(expr.high, _PREC_SUM)}"
    if isinstance(expr, Not):
        return f"not {_format(expr.operand, _PREC_NOT)}"
    if isinstance(expr, And):
        return f"{_format(expr.left, _PREC_AND)} and {_format(expr.right, _PREC_NOT)}"
    return f"{_format(expr.left, _PREC_OR)} or {_format(expr.right, _PREC_AND)}"


def _format_metric(metric: Metric) -> str:
    filters: list[str] = []
    if metric.within_days is not None:
        filters.append(f'within="{metric.within_days}d"')
    if metric.channel is not None:
        filters.append(f"channel={_quote(metric.channel)}")
    if metric.category is not None:
        filters.append(f"category={_quote(metric.category)}")
    if metric.product is not None:
        filters.append(f"product={_quote(metric.product)}")
    if metric.sku is not None:
        filters.append(f"sku={_quote(metric.sku)}")
    if metric.season is not None:
        from_month, from_day, to_month, to_day = metric.season
        filters.append(f'season="{from_month:02d}-{from_day:02d}..{to_month:02d}-{to_day:02d}"')
    return f"{metric.name}({', '.join(filters)})"


def _format_number(value: Decimal) -> str:
    return format(value, "f")


def _quote(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
