"""Why a customer is (or is not) in each segment: the rules, the metric values, the comparisons.

explain() is pure: it reads a CustomerState as step() left it and the compiled
rules, and returns a JSON-ready document. Metric values come from the compiled
rules' own `evaluate` (the generated code step() uses), so they are the very
values the engine compared; only the comparisons themselves are walked here, with
the evaluator's arithmetic helpers and its rule that any undefined operand makes a
comparison false. tests/property/test_explain_vs_engine.py checks every truth
value against the generated evaluator.

The document has one entry per segment under "segments"; per-customer values of
other kinds (traits) go in lists of their own beside it.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from segments.aggregates import CustomerState, ensure_lifetime_keys
from segments.changes import format_instant
from segments.clock import MICROS_PER_DAY, MICROS_PER_SECOND
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
)
from segments.rules.evaluator import (
    CompiledRules,
    MetricSpec,
    Value,
    add,
    divide,
    multiply,
    negate,
    subtract,
)
from segments.rules.parser import format_expression as to_text

_ARITHMETIC = {"+": add, "-": subtract, "*": multiply, "/": divide}
_COMPARE = {
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}


def explain(state: CustomerState, rules: CompiledRules, now: int) -> dict[str, Any]:
    """The explanation of one customer's segments at instant `now` (microseconds, UTC).

    `state` must have been stepped by these rules; only its derived order index
    (a cache) may be built. A state stored under another rule version gets the
    lifetime accumulators the rules need first, as step() would give it.
    """
    if state.rules_version != rules.ruleset.version:
        ensure_lifetime_keys(
            state, rules.lifetime_keys, rules.lifetime_categories, rules.lifetime_items
        )
    today = rules.calendar.day_of(now)
    _, values = rules.evaluate(state, today)
    walker = _Walker(state, rules, values)
    segments = []
    for index, segment in enumerate(rules.ruleset.segments):
        membership = state.memberships.get(segment.name)
        member = membership is not None and membership.member
        segments.append(
            {
                "name": segment.name,
                "description": segment.description,
                "member": member,
                "since": format_instant(membership.since) if member and membership else None,
                "when": walker.condition(segment.when),
                "exit_when": (
                    walker.condition(segment.exit_when) if segment.exit_when is not None else None
                ),
                "min_dwell": format_duration(segment.min_dwell)
                if segment.min_dwell is not None
                else None,
                "metrics": rules.metrics_of(index, values),
            }
        )
    return {
        "customer_id": state.customer_id,
        "as_of": format_instant(now),
        "rules_version": rules.ruleset.version,
        "segments": segments,
    }


class _Walker:
    """Evaluates conditions and values of one state, with the metric values already computed."""

    def __init__(self, state: CustomerState, rules: CompiledRules, values: tuple[Value, ...]):
        self.state = state
        self.values = values
        self.index = {spec: i for i, spec in enumerate(rules.specs)}

    def condition(self, expr: Expr) -> dict[str, Any]:
        """A when or exit_when: {"rule": text, "holds": bool, "tree": every part with values}."""
        tree = self.node(expr)
        return {"rule": to_text(expr), "holds": tree["holds"], "tree": tree}

    def node(self, expr: Expr) -> dict[str, Any]:
        if isinstance(expr, And | Or):
            left, right = self.node(expr.left), self.node(expr.right)
            holds = (
                left["holds"] and right["holds"]
                if isinstance(expr, And)
                else left["holds"] or right["holds"]
            )
            op = "and" if isinstance(expr, And) else "or"
            return {"op": op, "holds": holds, "args": [left, right]}
        if isinstance(expr, Not):
            inner = self.node(expr.operand)
            return {"op": "not", "holds": not inner["holds"], "args": [inner]}
        if isinstance(expr, InSegment):
            membership = self.state.memberships.get(expr.name)
            holds = membership is not None and bool(membership.member)
            return {"op": "in_segment", "text": to_text(expr), "segment": expr.name, "holds": holds}
        if isinstance(expr, Compare):
            left, right = self.value(expr.left), self.value(expr.right)
            a, b = left.pop("raw"), right.pop("raw")
            holds = a is not None and b is not None and _COMPARE[expr.op](a, b)
            return {
                "op": expr.op,
                "text": to_text(expr),
                "holds": bool(holds),
                "left": left,
                "right": right,
            }
        if isinstance(expr, Between):
            operand, low, high = (
                self.value(expr.operand),
                self.value(expr.low),
                self.value(expr.high),
            )
            x, lo, hi = operand.pop("raw"), low.pop("raw"), high.pop("raw")
            holds = x is not None and lo is not None and hi is not None and lo <= x <= hi
            return {
                "op": "between",
                "text": to_text(expr),
                "holds": bool(holds),
                "operand": operand,
                "low": low,
                "high": high,
            }
        raise ValueError(f"line {expr.line}: expected a condition, got {to_text(expr)}")

    def value(self, expr: Expr) -> dict[str, Any]:
        """{"text", "value", "undefined"[, "metric"]} plus the exact value under "raw"."""
        raw = self.raw(expr)
        out: dict[str, Any] = {"text": to_text(expr)}
        if isinstance(expr, Metric):
            out["metric"] = MetricSpec.of(expr).label
        out["value"] = json_value(raw)
        out["undefined"] = raw is None
        out["raw"] = raw
        return out

    def raw(self, expr: Expr) -> Value:
        # The generated code's operands: integral literals as ints, metrics from evaluate().
        if isinstance(expr, Number):
            value = expr.value
            return int(value) if value == value.to_integral_value() else value
        if isinstance(expr, Metric):
            return self.values[self.index[MetricSpec.of(expr)]]
        if isinstance(expr, Negate):
            return negate(self.raw(expr.operand))
        if isinstance(expr, Arithmetic):
            return _ARITHMETIC[expr.op](self.raw(expr.left), self.raw(expr.right))
        raise ValueError(f"line {expr.line}: expected a value, got {to_text(expr)}")


def json_value(value: Value) -> int | str | None:
    """Counts and days as JSON numbers; decimals as exact strings (no float rounding)."""
    if isinstance(value, Decimal):
        return str(value)
    return value


def format_duration(micros: int) -> str:
    """A rule-file duration: 10d, 12h, 30m or 45s (the largest unit that divides it)."""
    for unit, size in (("d", MICROS_PER_DAY), ("h", 3600 * MICROS_PER_SECOND)):
        if micros % size == 0:
            return f"{micros // size}{unit}"
    if micros % (60 * MICROS_PER_SECOND) == 0:
        return f"{micros // (60 * MICROS_PER_SECOND)}m"
    return f"{micros / MICROS_PER_SECOND:g}s"
