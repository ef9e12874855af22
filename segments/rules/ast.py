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
    distinct_categories, days_since_last_purchase, days_since_first_purchase.
    season is (from_month, from_day, to_month, to_day), inclusive, may wrap the year.
    """

    name: str
    within_days: int | None
    channel: str | None
    category: str | None
    season: tuple[int, int, int, int] | None
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


Expr = Number | String | Metric | Compare | Between | And | Or | Not
