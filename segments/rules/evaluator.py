"""Compiles a RuleSet once into one generated Python function that evaluates every segment.

Every metric the rules use is computed in a single pass over the customer's
order records, then each segment's `when` (and `exit_when`) is a plain Python
boolean expression over those values. Nothing is parsed or walked per event.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from segments.aggregates import CustomerState, FilterKey
from segments.clock import MICROS_PER_DAY, Calendar, month_day
from segments.rules.ast import And, Between, Compare, Expr, Metric, Not, Number, Or, String
from segments.rules.ruleset import RuleSet

Value = int | Decimal | None
Evaluation = tuple[tuple[bool, ...], tuple[Value, ...]]

ALWAYS_DEFINED = frozenset({"orders", "spend", "units", "discounted_orders", "distinct_categories"})
DAYS_SINCE = frozenset({"days_since_last_purchase", "days_since_first_purchase"})
_CENT = Decimal("0.01")


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """A metric call with its filters, without source position: equal calls share one value."""

    name: str
    within_days: int | None
    channel: str | None
    category: str | None
    season: tuple[int, int, int, int] | None

    @classmethod
    def of(cls, metric: Metric) -> MetricSpec:
        return cls(metric.name, metric.within_days, metric.channel, metric.category, metric.season)

    @property
    def key(self) -> FilterKey:
        return (self.channel, self.category, self.season)

    @property
    def label(self) -> str:
        """Name used in change events' `metrics`, e.g. orders_182d or orders_365d_running_shoes."""
        parts = [self.name]
        if self.within_days is not None:
            parts.append(f"{self.within_days}d")
        if self.channel is not None:
            parts.append(self.channel)
        if self.category is not None:
            parts.append("".join(c if c.isalnum() else "_" for c in self.category.lower()))
        if self.season is not None:
            start_month, start_day, end_month, end_day = self.season
            parts.append(f"{start_month:02d}{start_day:02d}_{end_month:02d}{end_day:02d}")
        return "_".join(parts)


@dataclass(frozen=True, slots=True)
class CompiledRules:
    ruleset: RuleSet
    calendar: Calendar
    specs: tuple[MetricSpec, ...]
    lifetime_keys: tuple[FilterKey, ...]
    keep_categories: frozenset[str] | None  # None: keep every category
    lifetime_categories: bool  # lifetime accumulators track category sets
    windows: tuple[int, ...]
    # (days, filter, whether unknown-order returns count): each distinct windowed filter
    window_filters: tuple[tuple[int, FilterKey, bool], ...]
    horizon_days: int  # order records older than this many days are pruned
    seen_days: int  # how long ids of returns are remembered (max_lateness)
    # (spec index, k): a days-since comparison flips on the day the value reaches k
    day_thresholds: tuple[tuple[int, int], ...]
    segment_metrics: tuple[tuple[tuple[str, int], ...], ...]  # per segment: (label, spec index)
    evaluate: Callable[[CustomerState, int], Evaluation]
    # per segment: (index, name, has exit_when, min_dwell); the hot loop reads only these
    segment_plan: tuple[tuple[int, str, bool, int | None], ...]
    dwell_plan: tuple[tuple[int, str, bool, int], ...]  # the segments with a min_dwell
    source: str  # the generated code, for debugging and docs

    def metrics_of(self, segment_index: int, values: tuple[Value, ...]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for label, index in self.segment_metrics[segment_index]:
            value = values[index]
            result[label] = str(value.quantize(_CENT)) if isinstance(value, Decimal) else value
        return result


def compile_rules(ruleset: RuleSet) -> CompiledRules:
    specs: list[MetricSpec] = []
    index_of: dict[MetricSpec, int] = {}
    thresholds: set[tuple[int, int]] = set()
    segment_metrics: list[tuple[int, ...]] = []

    def spec_index(metric: Metric) -> int:
        spec = MetricSpec.of(metric)
        if spec not in index_of:
            index_of[spec] = len(specs)
            specs.append(spec)
        return index_of[spec]

    def operand(expr: Expr) -> tuple[str, int | None]:
        """Python source of an operand, and its spec index when it is a metric."""
        if isinstance(expr, Metric):
            index = spec_index(expr)
            return f"v{index}", index
        if isinstance(expr, Number):
            return _literal(expr.value), None
        raise ValueError(f"line {expr.line}: expected a metric or a number")

    def note_threshold(index: int | None, op: str, other: Expr) -> None:
        """Record the days-since values at which `value op number` changes truth."""
        if index is None or specs[index].name not in DAYS_SINCE or not isinstance(other, Number):
            return
        for value in _flip_values(op, other.value):
            thresholds.add((index, value))

    def guard(*indexes: int | None) -> str:
        checks = [
            f"v{i} is not None"
            for i in indexes
            if i is not None and specs[i].name not in ALWAYS_DEFINED
        ]
        return " and ".join(checks)

    def emit(expr: Expr, used: set[int]) -> str:
        if isinstance(expr, And):
            return f"({emit(expr.left, used)} and {emit(expr.right, used)})"
        if isinstance(expr, Or):
            return f"({emit(expr.left, used)} or {emit(expr.right, used)})"
        if isinstance(expr, Not):
            return f"(not {emit(expr.operand, used)})"
        if isinstance(expr, Compare):
            left, li = operand(expr.left)
            right, ri = operand(expr.right)
            used.update(i for i in (li, ri) if i is not None)
            note_threshold(li, expr.op, expr.right)
            note_threshold(ri, _MIRRORED[expr.op], expr.left)
            test = f"{left} {expr.op} {right}"
            checks = guard(li, ri)
            return f"({checks} and {test})" if checks else f"({test})"
        if isinstance(expr, Between):
            value, vi = operand(expr.operand)
            low, _ = operand(expr.low)
            high, _ = operand(expr.high)
            if vi is not None:
                used.add(vi)
            note_threshold(vi, ">=", expr.low)
            note_threshold(vi, "<=", expr.high)
            test = f"{low} <= {value} <= {high}"
            checks = guard(vi)
            return f"({checks} and {test})" if checks else f"({test})"
        if isinstance(expr, Metric | Number | String):
            raise ValueError(f"line {expr.line}: expected a comparison")
        raise TypeError(f"unknown expression {expr!r}")

    flags: list[str] = []
    for segment in ruleset.segments:
        used: set[int] = set()
        flags.append(emit(segment.when, used))
        flags.append(emit(segment.exit_when, used) if segment.exit_when is not None else "False")
        segment_metrics.append(tuple(sorted(used)))

    source, namespace = _generate(specs, flags)
    exec(compile(source, f"<rules {ruleset.source} v{ruleset.version}>", "exec"), namespace)
    evaluate = namespace["evaluate"]

    plan = tuple(
        (i, s.name, s.exit_when is not None, s.min_dwell) for i, s in enumerate(ruleset.segments)
    )
    windows = tuple(sorted({s.within_days for s in specs if s.within_days is not None}))
    seen_days = -(-ruleset.max_lateness // MICROS_PER_DAY) + 1
    named = {s.category for s in specs if s.category is not None}
    keep_all = any(s.name == "distinct_categories" for s in specs)
    lifetime_keys = tuple(dict.fromkeys(s.key for s in specs if s.within_days is None))
    return CompiledRules(
        ruleset=ruleset,
        calendar=Calendar(ruleset.timezone),
        specs=tuple(specs),
        lifetime_keys=lifetime_keys,
        keep_categories=None if keep_all else frozenset(named),
        lifetime_categories=any(
            s.name == "distinct_categories" and s.within_days is None for s in specs
        ),
        windows=windows,
        window_filters=tuple(
            dict.fromkeys(
                (
                    s.within_days,
                    s.key,
                    s.name in ("spend", "avg_order_value") and s.category is None,
                )
                for s in specs
                if s.within_days is not None
            )
        ),
        horizon_days=max((*windows, seen_days)),
        seen_days=seen_days,
        day_thresholds=tuple(sorted(thresholds)),
        segment_metrics=tuple(
            tuple((specs[i].label, i) for i in indexes) for indexes in segment_metrics
        ),
        evaluate=evaluate,
        segment_plan=plan,
        dwell_plan=tuple((i, n, e, d) for i, n, e, d in plan if d is not None),
        source=source,
    )


_MIRRORED = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}


def _flip_values(op: str, number: Decimal) -> tuple[int, ...]:
    """Integer values v at which `v op number` differs from `v - 1 op number`."""
    if op in (">", "<="):
        return (math.floor(number) + 1,)
    if op in (">=", "<"):
        return (math.ceil(number),)
    if number == number.to_integral_value():  # == and != flip entering and leaving n
        return (int(number), int(number) + 1)
    return ()


def _literal(value: Decimal) -> str:
    # Integral numbers compare as ints (fast with int counts); others stay Decimal.
    if value == value.to_integral_value():
        return str(int(value))
    return f"Decimal({str(value)!r})"


def _season_test(season: tuple[int, int, int, int]) -> str:
    start = season[0] * 100 + season[1]
    end = season[2] * 100 + season[3]
    if start <= end:
        return f"{start} <= md <= {end}"
    return f"(md >= {start} or md <= {end})"


def _generate(specs: list[MetricSpec], flags: list[str]) -> tuple[str, dict[str, Any]]:
    namespace: dict[str, Any] = {"Decimal": Decimal, "month_day": month_day, "ZERO": Decimal(0)}
    init: list[str] = []
    per_order: list[str] = []
    per_adjustment: list[str] = []
    finish: list[str] = []
    uses_season = any(s.season is not None and s.within_days is not None for s in specs)
    uses_categories = any(s.within_days is not None for s in specs)

    for i, spec in enumerate(specs):
        name = spec.name
        if spec.within_days is None:
            namespace[f"K{i}"] = spec.key
            finish.append(f"L{i} = lifetime[K{i}]")
            finish.append(f"v{i} = {_lifetime_value(i, name)}")
            continue
        conditions = [f"age < {spec.within_days}"]
        if spec.channel is not None:
            conditions.append(f"o.channel == {spec.channel!r}")
        if spec.category is not None:
            conditions.append(f"cats is not None and {spec.category!r} in cats")
        if spec.season is not None:
            conditions.append(_season_test(spec.season))
        body = _window_body(i, name, spec.category)
        init.extend(body[0])
        per_order.append(f"if {' and '.join(conditions)}:")
        per_order.extend("    " + line for line in body[1])
        if name in ("spend", "avg_order_value") and spec.category is None:
            adj_conditions = [conditions[0]]
            if spec.channel is not None:
                adj_conditions.append(f"a.channel == {spec.channel!r}")
            if spec.season is not None:
                adj_conditions.append(_season_test(spec.season).replace("md", "month_day(a.day)"))
            per_adjustment.append(f"if {' and '.join(adj_conditions)}:")
            per_adjustment.append(f"    s{i} += a.amount")
        finish.append(f"v{i} = {_window_value(i, name)}")

    lines = ["def evaluate(state, today):", "    lifetime = state.lifetime"]
    lines.extend("    " + line for line in init)
    if per_order:
        lines.append("    for o in state.orders:")
        lines.append("        net = o.net")
        lines.append("        if not net > ZERO:")
        lines.append("            continue")
        lines.append("        age = today - o.day")
        lines.append("        if age < 0:")
        lines.append("            continue")
        if uses_categories:
            lines.append("        cats = o.categories")
        if uses_season:
            lines.append("        md = month_day(o.day)")
        lines.extend("        " + line for line in per_order)
    if per_adjustment:
        lines.append("    for a in state.adjustments:")
        lines.append("        age = today - a.day")
        lines.append("        if age < 0:")
        lines.append("            continue")
        lines.extend("        " + line for line in per_adjustment)
    lines.extend("    " + line for line in finish)
    values = ", ".join(f"v{i}" for i in range(len(specs)))
    lines.append(f"    return ({', '.join(flags)},), ({values}{',' if specs else ''})")
    return "\n".join(lines) + "\n", namespace


def _window_body(i: int, name: str, category: str | None) -> tuple[list[str], list[str]]:
    amount = f"cats[{category!r}].amount" if category is not None else "net"
    units = f"cats[{category!r}].units" if category is not None else "o.units"
    if name == "orders":
        return [f"c{i} = 0"], [f"c{i} += 1"]
    if name == "spend":
        return [f"s{i} = ZERO"], [f"s{i} += {amount}"]
    if name == "avg_order_value":
        return [f"c{i} = 0", f"s{i} = ZERO"], [f"c{i} += 1", f"s{i} += {amount}"]
    if name == "units":
        return [f"u{i} = 0"], [f"u{i} += {units}"]
    if name == "discounted_orders":
        return [f"d{i} = 0"], [f"if o.discounted: d{i} += 1"]
    if name == "distinct_categories":
        update = f"k{i}.add({category!r})" if category is not None else f"k{i}.update(cats)"
        return [f"k{i} = set()"], [f"if cats: {update}"]
    if name == "days_since_last_purchase":
        return [f"l{i} = None"], [f"l{i} = o.day"]  # records are ordered by day
    if name == "days_since_first_purchase":
        return [f"f{i} = None"], [f"if f{i} is None: f{i} = o.day"]
    raise ValueError(f"unknown metric {name!r}")


def _window_value(i: int, name: str) -> str:
    return {
        "orders": f"c{i}",
        "spend": f"s{i}",
        "avg_order_value": f"(s{i} / c{i} if c{i} else None)",
        "units": f"u{i}",
        "discounted_orders": f"d{i}",
        "distinct_categories": f"len(k{i})",
        "days_since_last_purchase": f"(today - l{i} if l{i} is not None else None)",
        "days_since_first_purchase": f"(today - f{i} if f{i} is not None else None)",
    }[name]


def _lifetime_value(i: int, name: str) -> str:
    return {
        "orders": f"L{i}.orders",
        "spend": f"L{i}.spend",
        "avg_order_value": f"(L{i}.spend / L{i}.orders if L{i}.orders else None)",
        "units": f"L{i}.units",
        "discounted_orders": f"L{i}.discounted",
        "distinct_categories": f"len(L{i}.categories)",
        "days_since_last_purchase": (
            f"(today - L{i}.last_day if L{i}.last_day is not None else None)"
        ),
        "days_since_first_purchase": (
            f"(today - L{i}.first_day if L{i}.first_day is not None else None)"
        ),
    }[name]
