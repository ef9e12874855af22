"""The rule language's syntax tree: what the parser produces and the evaluator compiles."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

# Positions are 1-based and refer to the rule *file* (not the expression string),
# so every error and every compiled rule can point back at the YAML source.


@dataclass(frozen=True, slots=True)
class Number:
    value: Decimal
    line: int
    col: int


@dataclass(frozen=True, slots=True)
class String:
    value: str
    line: int
    col: int


@dataclass(frozen=True, slots=True)
class Metric:
    """A validated metric call such as orders(within="182d", channel="pos").

    name is one of: orders, spend, avg_order_value, units, discounted_orders,
    distinct_categories, days_since_last_purchase, days_since_first_purchase, and
    language 2's (parser.METRICS). season is (from_month, from_day, to_month, to_day),
    inclusive, may wrap the year.
    """

    name: str
    within_days: int | None
    channel: str | None
    category: str | None
    season: tuple[int, int, int, int] | None
    line: int
    col: int
    # language 2: only the lines of that product / SKU (like category, SPEC section 3)
    product: str | None = None
    sku: str | None = None


@dataclass(frozen=True, slots=True)
class Arithmetic:
    """left op right with op one of + - * /: exact decimals, undefined propagates."""

    op: str
    left: Expr
    right: Expr
    line: int
    col: int


@dataclass(frozen=True, slots=True)
class Negate:
    """Unary minus of a non-literal (a minus before a number literal is folded into it)."""

    operand: Expr
    line: int
    col: int


@dataclass(frozen=True, slots=True)
class InSegment:
    """in_segment("name"): true while the customer is a member of an earlier segment."""

    name: str
    line: int
    col: int


@dataclass(frozen=True, slots=True)
class Compare:
    op: str  # one of < <= > >= == !=
    left: Expr
    right: Expr
    line: int
    col: int


@dataclass(frozen=True, slots=True)
class Between:
    """x between low and high, inclusive on both ends."""

    operand: Expr
    low: Expr
    high: Expr
    line: int
    col: int


@dataclass(frozen=True, slots=True)
class And:
    left: Expr
    right: Expr
    line: int
    col: int


@dataclass(frozen=True, slots=True)
class Or:
    left: Expr
    right: Expr
    line: int
    col: int


@dataclass(frozen=True, slots=True)
class Not:
    operand: Expr
    line: int
    col: int


Expr = (
    Number | String | Metric | Arithmetic | Negate | InSegment | Compare | Between | And | Or | Not
)


def children(expr: Expr) -> tuple[Expr, ...]:
    """The direct sub-expressions of expr, in source order."""
    if isinstance(expr, Arithmetic | Compare | And | Or):
        return (expr.left, expr.right)
    if isinstance(expr, Negate | Not):
        return (expr.operand,)
    if isinstance(expr, Between):
        return (expr.operand, expr.low, expr.high)
    return ()
