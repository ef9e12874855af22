"""Compiles a RuleSet once into generated Python functions that evaluate every segment.

Windowed metrics are read from a per-customer index of the counted orders
(bisections over their days, built once and kept up to date as orders are
added and pruned), unwindowed ones from the lifetime accumulators; each
segment's `when` (and `exit_when`) is then a plain Python boolean expression
over those values. Nothing is parsed or walked per event.
"""

from __future__ import annotations

import dataclasses
import math
from bisect import bisect_left, bisect_right
from collections.abc import Callable
from dataclasses import dataclass
from decimal import (
    MAX_EMAX,
    MIN_EMIN,
    ROUND_HALF_EVEN,
    Context,
    Decimal,
    DivisionByZero,
    InvalidOperation,
    Overflow,
)
from operator import attrgetter
from typing import Any

from segments.aggregates import (
    CustomerState,
    FilterKey,
    LineFilter,
    Order,
    distinct_item_categories,
    distinct_products,
    distinct_skus,
    extreme_order_value,
    max_skus_per_product,
)
from segments.clock import MICROS_PER_DAY, Calendar, month_day
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
    children,
)
from segments.rules.ruleset import RuleSet, Segment, Trait

Value = int | Decimal | None
Evaluation = tuple[tuple[bool, ...], tuple[Value, ...]]

ALWAYS_DEFINED = frozenset(
    {
        "orders",
        "spend",
        "units",
        "discounted_orders",
        "distinct_categories",
        "distinct_skus",
        "distinct_products",
        "max_skus_per_product",
    }
)
ITEM_METRICS = frozenset({"distinct_skus", "distinct_products", "max_skus_per_product"})
DAYS_SINCE = frozenset({"days_since_last_purchase", "days_since_first_purchase"})
_CENT = Decimal("0.01")

# Arithmetic of the rule language (SPEC section 3, language 2): Decimal with 100 significant
# digits, like money.py's conversions. + - and * of the values the core produces (amounts
# below 1e15 with at most 12 places, counts, days) are exact; a quotient is rounded once,
# half-even, at the 100th digit, far below any difference a comparison with a literal or
# an amount can see. Division by zero and any undefined operand give undefined (None).
ARITHMETIC = Context(
    prec=100,
    rounding=ROUND_HALF_EVEN,
    Emax=MAX_EMAX,
    Emin=MIN_EMIN,
    traps=[InvalidOperation, DivisionByZero, Overflow],
)


def add(a: Value, b: Value) -> Value:
    return None if a is None or b is None else ARITHMETIC.add(a, b)


def subtract(a: Value, b: Value) -> Value:
    return None if a is None or b is None else ARITHMETIC.subtract(a, b)


def multiply(a: Value, b: Value) -> Value:
    return None if a is None or b is None else ARITHMETIC.multiply(a, b)


def divide(a: Value, b: Value) -> Value:
    return None if a is None or b is None or not b else ARITHMETIC.divide(a, b)


def negate(a: Value) -> Value:
    return None if a is None else ARITHMETIC.minus(a)


_ARITHMETIC_HELPERS = {"+": "ADD", "-": "SUB", "*": "MUL", "/": "DIV"}


def _simple(expr: Expr) -> bool:
    """A metric or a number: the operands version 1 compiles as they always were."""
    return isinstance(expr, Metric | Number)


class _Values:
    """Python source for value expressions (metrics, numbers, arithmetic) and for
    comparisons of them with undefined handled: any undefined operand makes it false."""

    def __init__(self, specs: list[MetricSpec], spec_index: Callable[[Metric], int]) -> None:
        self.specs = specs
        self.spec_index = spec_index
        self.temps = 0

    def code(self, expr: Expr, used: list[int]) -> tuple[str, bool]:
        """The source of a value and whether it can be undefined; metric indexes to used."""
        if isinstance(expr, Number):
            return _literal(expr.value), False
        if isinstance(expr, Metric):
            index = self.spec_index(expr)
            used.append(index)
            return f"v{index}", self.specs[index].name not in ALWAYS_DEFINED
        if isinstance(expr, Negate):
            operand, _ = self.code(expr.operand, used)
            return f"NEG({operand})", True
        if isinstance(expr, Arithmetic):
            left, _ = self.code(expr.left, used)
            right, _ = self.code(expr.right, used)
            return f"{_ARITHMETIC_HELPERS[expr.op]}({left}, {right})", True
        raise ValueError(f"line {expr.line}: expected a metric, a number or arithmetic")

    def test(self, operands: list[Expr], test: Callable[[list[str]], str], used: list[int]) -> str:
        """`test` of the operands' values, false when any of them is undefined."""
        checks: list[str] = []
        texts: list[str] = []
        for operand in operands:
            text, maybe_undefined = self.code(operand, used)
            if maybe_undefined and isinstance(operand, Metric):
                checks.append(f"{text} is not None")
            elif maybe_undefined:
                self.temps += 1
                temp = f"t{self.temps}"
                checks.append(f"({temp} := {text}) is not None")
                text = temp
            texts.append(text)
        return f"({' and '.join([*checks, test(texts)])})"


def segment_references(segments: tuple[Segment, ...]) -> frozenset[str]:
    """The names of the segments some rule reads with in_segment(...)."""

    def refs(expr: Expr | None) -> set[str]:
        if expr is None:
            return set()
        if isinstance(expr, InSegment):
            return {expr.name}
        return {name for child in children(expr) for name in refs(child)}

    return frozenset(name for s in segments for name in refs(s.when) | refs(s.exit_when))


def trait_references(traits: tuple[Trait, ...]) -> frozenset[str]:
    """The names of the segments the traits' cases read with in_segment(...)."""
    return segment_references(
        tuple(Segment(t.name, "", case.when) for t in traits for case in t.cases)
    )


@dataclass(frozen=True, slots=True)
class TraitPlan:
    """How step() works out one trait from an evaluation (membership.py).

    cases: its value is that of the first case whose flag (flags[first + k]) holds, else
    `default`; top_category (days not None): computed from the state's orders.
    """

    name: str
    first: int  # index in the flags of the first case's condition
    values: tuple[str, ...]  # each case's value
    default: str | None
    days: int | None  # top_category's window in days; None: a cases trait


@dataclass(frozen=True, slots=True)
class MetricSpec:
    """A metric call with its filters, without source position: equal calls share one value."""

    name: str
    within_days: int | None
    channel: str | None
    category: str | None
    season: tuple[int, int, int, int] | None
    product: str | None = None
    sku: str | None = None

    @classmethod
    def of(cls, metric: Metric) -> MetricSpec:
        return cls(
            metric.name,
            metric.within_days,
            metric.channel,
            metric.category,
            metric.season,
            metric.product,
            metric.sku,
        )

    @property
    def lines(self) -> str | LineFilter | None:
        """The lines the metric reads: all (None), a category's (its name, as in version 1)
        or, with product= or sku=, those matching (category, product, sku)."""
        if self.product is None and self.sku is None:
            return self.category
        return (self.category, self.product, self.sku)

    @property
    def key(self) -> FilterKey:
        return (self.channel, self.lines, self.season)

    @property
    def label(self) -> str:
        """Name used in change events' `metrics`, e.g. orders_182d or orders_365d_running_shoes."""
        parts = [self.name]
        if self.within_days is not None:
            parts.append(f"{self.within_days}d")
        if self.channel is not None:
            parts.append(self.channel)
        if self.category is not None:
            parts.append(_slug(self.category))
        if self.product is not None:
            parts.append(f"product_{_slug(self.product)}")
        if self.sku is not None:
            parts.append(f"sku_{_slug(self.sku)}")
        if self.season is not None:
            start_month, start_day, end_month, end_day = self.season
            parts.append(f"{start_month:02d}{start_day:02d}_{end_month:02d}{end_day:02d}")
        return "_".join(parts)


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text.lower())


@dataclass(frozen=True, slots=True)
class CompiledRules:
    ruleset: RuleSet
    calendar: Calendar
    specs: tuple[MetricSpec, ...]
    lifetime_keys: tuple[FilterKey, ...]
    keep_categories: frozenset[str] | None  # None: keep every category
    lifetime_categories: bool  # lifetime accumulators track category sets
    lifetime_extremes: bool  # prune keeps the least and greatest pruned order value
    keep_items: bool  # orders keep their line items (category, product, sku)
    lifetime_items: bool  # lifetime accumulators count line items
    windows: tuple[int, ...]
    # (days, filter, whether unknown-order returns count): each distinct windowed filter
    window_filters: tuple[tuple[int, FilterKey, bool], ...]
    horizon_days: int  # order records older than this many days are pruned
    seen_days: int  # how long ids of returns are remembered (max_lateness)
    # (spec index, k): a days-since comparison flips on the day the value reaches k
    day_thresholds: tuple[tuple[int, int], ...]
    segment_metrics: tuple[tuple[tuple[str, int], ...], ...]  # per segment: (label, spec index)
    evaluate: Callable[[CustomerState, int], Evaluation]
    # the first day after `today` on which time alone changes a metric (see next_deadline)
    next_day: Callable[[CustomerState, int], int | None]
    # evaluate at one day and instant, and the first day after it on which a flag can change
    assess: Callable[
        [CustomerState, int, int], tuple[tuple[bool, ...], tuple[Value, ...], int | None]
    ]
    # an index updated in place for one added order / records pruned before a day (None: stale)
    index_add: Callable[[tuple[Any, ...], Order], tuple[Any, ...] | None]
    index_prune: Callable[[tuple[Any, ...], int], tuple[Any, ...] | None]
    # per segment: (index, name, has exit_when, min_dwell); the hot loop reads only these
    segment_plan: tuple[tuple[int, str, bool, int | None], ...]
    trait_plan: tuple[TraitPlan, ...]  # empty: a rule set without traits
    dwell_plan: tuple[tuple[int, str, bool, int], ...]  # the segments with a min_dwell
    source: str  # the generated code, for debugging and docs
    # the distinct flag tuples seen so far, each kept once (membership.py shares them)
    flag_sets: dict[tuple[bool, ...], tuple[bool, ...]] = dataclasses.field(
        default_factory=dict, compare=False, repr=False
    )
    # (settled flags, flags) -> (the same, the segments whose flags differ); membership.py
    flag_changes: dict[
        tuple[tuple[bool, ...], tuple[bool, ...]],
        tuple[tuple[bool, ...], tuple[bool, ...], tuple[tuple[int, str, bool, int | None], ...]],
    ] = dataclasses.field(default_factory=dict, compare=False, repr=False)
    # the product=/sku= filters the rules read: orders keep their lines' totals per filter
    keep_line_filters: tuple[LineFilter, ...] = ()

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

    values = _Values(specs, spec_index)
    # (days-since spec index, op, value expression): a days-since comparison whose other
    # side time does not change (the parser lets no other kind through); its change days
    # are worked out from that side's value at run time
    dynamic: list[tuple[int, str, Expr]] = []

    def note_dynamic(expr: Expr) -> None:
        pairs: list[tuple[Expr, str, Expr]] = []
        if isinstance(expr, Compare):
            pairs = [(expr.left, expr.op, expr.right), (expr.right, _MIRRORED[expr.op], expr.left)]
        elif isinstance(expr, Between):
            pairs = [(expr.operand, ">=", expr.low), (expr.operand, "<=", expr.high)]
        for side, op, other in pairs:
            if _days_since_metric(side) and not isinstance(other, Number):
                assert isinstance(side, Metric)
                dynamic.append((spec_index(side), op, other))

    def emit(expr: Expr, used: set[int]) -> str:
        note_dynamic(expr)
        if isinstance(expr, InSegment):
            # evaluate() reads the memberships as stored; assess() (what step() uses)
            # sees the earlier segment's membership after this very evaluation
            return f"(MEMBER(state.memberships.get({expr.name!r})))"
        if isinstance(expr, Compare) and not (_simple(expr.left) and _simple(expr.right)):
            read: list[int] = []
            op = expr.op
            text = values.test([expr.left, expr.right], lambda v: f"{v[0]} {op} {v[1]}", read)
            used.update(read)
            return text
        if isinstance(expr, Between) and not all(
            _simple(e) for e in (expr.operand, expr.low, expr.high)
        ):
            read = []
            text = values.test(
                [expr.operand, expr.low, expr.high], lambda v: f"{v[1]} <= {v[0]} <= {v[2]}", read
            )
            used.update(read)
            return text
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
        if isinstance(expr, Metric | Number | String | Arithmetic | Negate):
            raise ValueError(f"line {expr.line}: expected a comparison")
        raise TypeError(f"unknown expression {expr!r}")

    flags: list[str] = []
    conditions: list[Expr | None] = []
    for segment in ruleset.segments:
        used: set[int] = set()
        flags.append(emit(segment.when, used))
        flags.append(emit(segment.exit_when, used) if segment.exit_when is not None else "False")
        conditions.extend((segment.when, segment.exit_when))
        segment_metrics.append(tuple(sorted(used)))
    # Traits (SPEC section 3, language 2): each case's condition is one more flag after
    # the segments' own, so assess() also works out the day it can change; a rule set
    # without traits generates exactly the code it did before.
    trait_plan: list[TraitPlan] = []
    for trait in ruleset.traits:
        if trait.top_category_days is not None:
            # a hidden spend(within=...) keeps the orders (and their deadlines) in the window
            spec = MetricSpec("spend", trait.top_category_days, None, None, None)
            if spec not in index_of:
                index_of[spec] = len(specs)
                specs.append(spec)
            trait_plan.append(TraitPlan(trait.name, len(flags), (), None, trait.top_category_days))
            continue
        trait_plan.append(
            TraitPlan(
                trait.name, len(flags), tuple(c.value for c in trait.cases), trait.default, None
            )
        )
        for case in trait.cases:
            flags.append(emit(case.when, set()))
            conditions.append(case.when)

    window_filters = tuple(
        dict.fromkeys(
            (
                s.within_days,
                s.key,
                s.name in ("spend", "avg_order_value") and s.lines is None,
            )
            for s in specs
            if s.within_days is not None
        )
    )
    day_thresholds = tuple(sorted(thresholds))
    source, namespace = _generate(
        specs,
        flags,
        window_filters,
        day_thresholds,
        conditions,
        lambda m: index_of[MetricSpec.of(m)],
        ruleset.segments,
        dynamic,
        trait_references(ruleset.traits),
    )
    exec(compile(source, f"<rules {ruleset.source} v{ruleset.version}>", "exec"), namespace)
    evaluate = namespace["evaluate"]

    plan = tuple(
        (i, s.name, s.exit_when is not None, s.min_dwell) for i, s in enumerate(ruleset.segments)
    )
    windows = tuple(sorted({s.within_days for s in specs if s.within_days is not None}))
    seen_days = -(-ruleset.max_lateness // MICROS_PER_DAY) + 1
    named = {s.category for s in specs if s.category is not None}
    line_filters = tuple(dict.fromkeys(s.lines for s in specs if isinstance(s.lines, tuple)))
    keep_all = any(s.name == "distinct_categories" for s in specs) or any(
        t.top_category_days is not None for t in ruleset.traits
    )
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
        lifetime_extremes=any(
            s.name in ("min_order_value", "max_order_value") and s.within_days is None
            for s in specs
        ),
        # product= and sku= filters read the line items too (distinct_categories under one)
        keep_items=bool(line_filters) or any(s.name in ITEM_METRICS for s in specs),
        lifetime_items=any(
            (s.name in ITEM_METRICS or isinstance(s.lines, tuple)) and s.within_days is None
            for s in specs
        ),
        keep_line_filters=line_filters,
        windows=windows,
        window_filters=window_filters,
        horizon_days=max((*windows, seen_days)),
        seen_days=seen_days,
        day_thresholds=day_thresholds,
        segment_metrics=tuple(
            tuple((specs[i].label, i) for i in indexes) for indexes in segment_metrics
        ),
        evaluate=evaluate,
        next_day=namespace["next_day"],
        assess=namespace["assess"],
        index_add=namespace["index_add"],
        index_prune=namespace["index_prune"],
        segment_plan=plan,
        trait_plan=tuple(trait_plan),
        dwell_plan=tuple((i, n, e, d) for i, n, e, d in plan if d is not None),
        source=source,
    )


_MIRRORED = {"<": ">", "<=": ">=", ">": "<", ">=": "<=", "==": "==", "!=": "!="}


def flip_values(op: str, value: int | Decimal) -> tuple[int, ...]:
    """_flip_values of a value known only at run time (an int or a Decimal)."""
    return _flip_values(op, Decimal(value) if isinstance(value, int) else value)


def _days_since_metric(expr: Expr) -> bool:
    return isinstance(expr, Metric) and expr.name in DAYS_SINCE


def _dynamic_flip_lines(
    spec: MetricSpec, i: int, op: str, value: str, target: str, *, after: bool
) -> list[str]:
    """Lines lowering `target` to the first day after today on which days-since metric `i`
    crosses the run-time `value` (not None) under `op`, as the constant case does."""
    out = [f"for k in FLIPS({op!r}, {value}):"]
    if spec.within_days is None:
        field = "last_day" if spec.name == "days_since_last_purchase" else "first_day"
        lifetime = f"L{i}" if after else f"state.lifetime[K{i}]"
        out.append(f"    base = {lifetime}.{field}")
        out.append(f"    if base is not None and today < base + k < {target}:")
        out.append(f"        {target} = base + k")
    else:
        # the first counted order (of any filter) whose day + k is still ahead
        out.append("    p = bisect_right(counted, today - k)")
        out.append(f"    if p < len(counted) and counted[p] + k < {target}:")
        out.append(f"        {target} = counted[p] + k")
    return out


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


def _order_conditions(key: FilterKey, day: str) -> list[str]:
    """Generated tests that an order `o` (whose local day is the expression `day`)
    matches a filter key's channel, category and season; empty: every order does."""
    channel, lines, season = key
    conditions = []
    if channel is not None:
        conditions.append(f"o.channel == {channel!r}")
    if isinstance(lines, tuple):
        conditions.append(f"o.line_totals is not None and {lines!r} in o.line_totals")
    elif lines is not None:
        conditions.append(f"o.categories is not None and {lines!r} in o.categories")
    if season is not None:
        conditions.append(_season_test(season).replace("md", f"month_day({day})"))
    return conditions


def _season_test(season: tuple[int, int, int, int]) -> str:
    start = season[0] * 100 + season[1]
    end = season[2] * 100 + season[3]
    if start <= end:
        return f"{start} <= md <= {end}"
    return f"(md >= {start} or md <= {end})"


def _generate(
    specs: list[MetricSpec],
    flags: list[str],
    window_filters: tuple[tuple[int, FilterKey, bool], ...],
    day_thresholds: tuple[tuple[int, int], ...],
    flag_conditions: list[Expr | None],
    spec_index: Callable[[Metric], int],
    segments: tuple[Segment, ...] = (),
    dynamic: list[tuple[int, str, Expr]] | None = None,
    read_by_traits: frozenset[str] = frozenset(),
) -> tuple[str, dict[str, Any]]:
    """Source of `build_index`, `index_add`, `index_prune`, `evaluate`, `next_day`, `assess`.

    The index (CustomerState.index) holds, per distinct filter of the windowed
    metrics, the days of the counted orders that match it and the amounts,
    units, discount flags or categories the metrics read, in record order.
    A windowed metric at `today` is then one or two bisections plus, for a
    sum, the sum of a slice; the day an order leaves a window is one bisection.
    Ticks, which change no records, reuse the index built at the customer's
    last event. Sums add the same amounts in the same order as a pass over
    the records would, so every value is identical.
    """
    namespace: dict[str, Any] = {
        "Decimal": Decimal,
        "month_day": month_day,
        "ZERO": Decimal(0),
        "TOKEN": object(),  # an index built by other compiled rules is rebuilt
        "bisect_left": bisect_left,
        "bisect_right": bisect_right,
        "DAY": attrgetter("day"),
        "NET": attrgetter("net"),
        "UNITS": attrgetter("units"),
        "DISCOUNTED": attrgetter("discounted"),
        "NO_DAY": _NO_DAY,
        "EXACT_SUM": 10**16,
        "ADD": add,
        "SUB": subtract,
        "MUL": multiply,
        "DIV": divide,
        "NEG": negate,
        "MEMBER": _is_member,
        "EXTREME": extreme_order_value,
        "DISTINCT_SKUS": distinct_skus,
        "DISTINCT_PRODUCTS": distinct_products,
        "MAX_SKUS_PER_PRODUCT": max_skus_per_product,
        "DISTINCT_CATEGORIES": distinct_item_categories,
        "FLIPS": flip_values,
    }
    windowed = [s for s in specs if s.within_days is not None]
    keys = list(dict.fromkeys(s.key for s in windowed))
    fields: dict[FilterKey, list[str]] = {key: ["days"] for key in keys}
    for spec in windowed:
        wanted = {
            "spend": "amount",
            "avg_order_value": "amount",
            "units": "units",
            "discounted_orders": "discounted",
            "distinct_categories": (
                "categories"
                if spec.lines is None
                else "items"
                if isinstance(spec.lines, tuple)
                else None
            ),
            "min_order_value": "amount",
            "max_order_value": "amount",
            "distinct_skus": "items",
            "distinct_products": "items",
            "max_skus_per_product": "items",
        }.get(spec.name)
        if wanted is not None and wanted not in fields[spec.key]:
            fields[spec.key].append(wanted)
    names = ["counted"]
    for j, key in enumerate(keys):
        names.extend(f"x{j}_{field}" for field in fields[key])

    build = [
        "def build_index(state):",
        "    counted_orders = [o for o in state.orders if o.net > ZERO]",
        "    counted = list(map(DAY, counted_orders))",
    ]
    for j, key in enumerate(keys):
        total = _lines_total(key[1], "o")
        conditions = _order_conditions(key, "o.day")
        if conditions:
            build.append(f"    x{j} = [o for o in counted_orders if {' and '.join(conditions)}]")
            build.append(f"    x{j}_days = list(map(DAY, x{j}))")
        else:
            build.append(f"    x{j} = counted_orders")
            build.append(f"    x{j}_days = counted")
        for field in fields[key][1:]:
            value = {
                "amount": (
                    f"[{total}.amount for o in x{j}]"
                    if total is not None
                    else f"list(map(NET, x{j}))"
                ),
                "units": (
                    f"[{total}.units for o in x{j}]"
                    if total is not None
                    else f"list(map(UNITS, x{j}))"
                ),
                "discounted": f"list(map(DISCOUNTED, x{j}))",
                "categories": f"[o.categories or () for o in x{j}]",
                "items": f"[o.items or () for o in x{j}]",
            }[field]
            build.append(f"    x{j}_{field} = {value}")
    build.append(f"    index = state.index = (TOKEN, {', '.join(names)})")
    build.append("    return index")

    # index_add / index_prune: keep an index up to date with one added order or with
    # records pruned before a day (step() does both on most events), in place.
    grow = [
        "def index_add(index, o):",
        "    if index[0] is not TOKEN:",
        "        return None",
        "    if not o.net > ZERO:",
        "        return index",
        f"    _, {', '.join(names)} = index",
        "    day = o.day",
        "    at = bisect_right(counted, day)",
        "    counted.insert(at, day)",
    ]
    trim = [
        "def index_prune(index, oldest):",
        "    if index[0] is not TOKEN:",
        "        return None",
        f"    _, {', '.join(names)} = index",
        "    cut = bisect_left(counted, oldest)",
        "    if cut:",
        "        del counted[:cut]",
    ]
    for j, key in enumerate(keys):
        total = _lines_total(key[1], "o")
        conditions = _order_conditions(key, "day")
        inserted = {
            "amount": f"{total}.amount" if total is not None else "o.net",
            "units": f"{total}.units" if total is not None else "o.units",
            "discounted": "o.discounted",
            "categories": "o.categories or ()",
            "items": "o.items or ()",
        }
        if not conditions:  # x{j}_days is `counted` itself: already updated above
            grow.extend(
                f"    x{j}_{field}.insert(at, {inserted[field]})" for field in fields[key][1:]
            )
            if len(fields[key]) > 1:
                trim.append("    if cut:")
                trim.extend(f"        del x{j}_{field}[:cut]" for field in fields[key][1:])
            continue
        # at{j} and cut{j}, not at and cut: the keys without conditions, which may come
        # later, use the positions in `counted`
        grow.append(f"    if {' and '.join(conditions)}:")
        grow.append(f"        at{j} = bisect_right(x{j}_days, day)")
        grow.append(f"        x{j}_days.insert(at{j}, day)")
        grow.extend(
            f"        x{j}_{field}.insert(at{j}, {inserted[field]})" for field in fields[key][1:]
        )
        trim.append(f"    cut{j} = bisect_left(x{j}_days, oldest)")
        trim.append(f"    if cut{j}:")
        trim.extend(f"        del x{j}_{field}[:cut{j}]" for field in fields[key])
    grow.append("    return index")
    trim.append("    return index")
    unpack = [
        "    index = state.index",
        "    if index is None or index[0] is not TOKEN:",
        "        index = build_index(state)",
        f"    _, {', '.join(names)} = index",
    ]

    lines = ["def evaluate(state, today):", "    lifetime = state.lifetime"]
    if windowed:
        lines.extend(unpack)
    for j in range(len(keys)):
        lines.append(f"    h{j} = bisect_right(x{j}_days, today)")
    lows: dict[tuple[int, int], str] = {}
    per_adjustment: list[str] = []
    sums: list[str] = []  # values that read a sum: after unknown-order returns are added
    for i, spec in enumerate(specs):
        name = spec.name
        if spec.within_days is None:
            namespace[f"K{i}"] = spec.key
            lines.append(f"    L{i} = lifetime[K{i}]")
            lines.append(f"    v{i} = {_lifetime_value(i, name, spec.lines)}")
            continue
        j = keys.index(spec.key)
        window = spec.within_days
        low = lows.get((j, window))
        if low is None:
            low = lows[(j, window)] = f"b{j}_{window}"
            lines.append(f"    {low} = bisect_left(x{j}_days, today - {window - 1})")
        value = f"    v{i} = {_window_value(i, name, j, low, spec.lines)}"
        if name not in ("spend", "avg_order_value"):
            lines.append(value)
            continue
        lines.append(f"    s{i} = sum(x{j}_amount[{low}:h{j}], ZERO)")
        sums.append(value)
        if spec.lines is None:
            conditions = [f"age < {window}"]
            if spec.channel is not None:
                conditions.append(f"a.channel == {spec.channel!r}")
            if spec.season is not None:
                conditions.append(_season_test(spec.season).replace("md", "month_day(a.day)"))
            per_adjustment.append(f"if {' and '.join(conditions)}:")
            per_adjustment.append(f"    s{i} += a.amount")
    if per_adjustment:
        lines.append("    for a in state.adjustments:")
        lines.append("        age = today - a.day")
        lines.append("        if age < 0:")
        lines.append("            continue")
        lines.extend("        " + line for line in per_adjustment)
    lines.extend(sums)
    values = ", ".join(f"v{i}" for i in range(len(specs)))
    result = f"({', '.join(flags)},), ({values}{',' if specs else ''})"

    def day_lines(after_evaluation: bool) -> list[str]:
        """Lines that set `best`: the first day after `today` on which time alone changes a
        metric value. After the evaluation's lines, they reuse its bisections and lookups."""
        out = ["    best = NO_DAY"]
        adjusted: list[str] = []
        for window, key, with_adjustments in window_filters:
            # the first counted matching order still inside the window leaves it first
            j = keys.index(key)
            if after_evaluation:
                # bisect_left(days, today - window + 1) == bisect_right(days, today - window)
                position = lows[(j, window)]
            else:
                position = "p"
                out.append(f"    p = bisect_right(x{j}_days, today - {window})")
            out.append(
                f"    if {position} < len(x{j}_days) and x{j}_days[{position}] + {window} < best:"
            )
            out.append(f"        best = x{j}_days[{position}] + {window}")
            if with_adjustments:
                channel, _, season = key
                conditions = ["day > today"]
                if channel is not None:
                    conditions.append(f"a.channel == {channel!r}")
                if season is not None:
                    conditions.append(_season_test(season).replace("md", "month_day(a.day)"))
                adjusted.append("for a in state.adjustments:")
                adjusted.append(f"    day = a.day + {window}")
                adjusted.append(f"    if {' and '.join(conditions)}:")
                adjusted.append("        if day < best:")
                adjusted.append("            best = day")
                adjusted.append("        break")
        if adjusted:
            out.append("    if state.adjustments:")
            out.extend("        " + line for line in adjusted)
        for index, number in day_thresholds:
            spec = specs[index]
            if spec.within_days is None:
                namespace[f"K{index}"] = spec.key
                field = "last_day" if spec.name == "days_since_last_purchase" else "first_day"
                lifetime = f"L{index}" if after_evaluation else f"state.lifetime[K{index}]"
                out.append(f"    base = {lifetime}.{field}")
                out.append(f"    if base is not None and today < base + {number} < best:")
                out.append(f"        best = base + {number}")
            else:
                # the first counted order (of any filter) whose day + number is still ahead
                out.append(f"    p = bisect_right(counted, today - {number})")
                out.append(f"    if p < len(counted) and counted[p] + {number} < best:")
                out.append(f"        best = counted[p] + {number}")
        if dynamic:
            out.extend(dynamic_day_lines())
        return out

    def dynamic_day_lines() -> list[str]:
        """next_day's candidates of days-since comparisons with an expression: its value
        needs only lifetime metrics (time does not change it), worked out here."""
        assert dynamic is not None
        code = _Values(specs, spec_index)
        out: list[str] = []
        defined: set[int] = set()
        for index, op, other in dynamic:
            used: list[int] = []
            value, _ = code.code(other, used)
            for k in dict.fromkeys(used):
                if k in defined:
                    continue
                defined.add(k)
                namespace[f"K{k}"] = specs[k].key
                out.append(f"    L{k} = state.lifetime[K{k}]")
                out.append(f"    v{k} = {_lifetime_value(k, specs[k].name, specs[k].lines)}")
            out.append(f"    t = {value}")
            out.append("    if t is not None:")
            out.extend(
                "        " + line
                for line in _dynamic_flip_lines(specs[index], index, op, "t", "best", after=False)
            )
        return out

    evaluate = [*lines, f"    return {result}"]
    # assess: evaluate and next_day at one `today` (step() always needs both)
    # assess: evaluate at `today` and the first day on which a flag can change (step()
    # needs both; next_day only when a segment is not settled, see membership.py)
    referenced = segment_references(segments) | read_by_traits
    position = {segment.name: k for k, segment in enumerate(segments)}
    flip = _FlipDays(
        specs, keys, fields, lows, day_thresholds, namespace, spec_index, position, segments
    )
    flip_lines = ["    flip = NO_DAY"]
    for n, condition in enumerate(flag_conditions):
        if condition is not None:  # a constant False flag never changes
            flip_lines.extend(flip.statements(condition, f"f{n}"))
            flip_lines.append(f"    if f{n}_day < flip:")
            flip_lines.append(f"        flip = f{n}_day")
        if n % 2 and n < 2 * len(segments) and segments[n // 2].name in referenced:
            flip_lines.extend(_membership_after(n // 2, segments[n // 2]))
    flag_names = [f"f{n}" if c is not None else "False" for n, c in enumerate(flag_conditions)]
    assess = ["def assess(state, today, at):", *lines[1:], *flip_lines]
    assess.append(
        f"    return ({', '.join(flag_names)},), ({values}{',' if specs else ''}), "
        "None if flip == NO_DAY else flip"
    )
    following = ["def next_day(state, today):"]
    if windowed:
        following.extend(unpack)
    following.extend(day_lines(False))
    following.append("    return None if best == NO_DAY else best")

    source = "\n".join([*build, "", *grow, "", *trim, "", *evaluate, "", *assess, "", *following])
    return source + "\n", namespace


# later than any day: next_day's starting point, so that the hot path compares ints only
_NO_DAY = 1 << 62


def _is_member(membership: Any) -> bool:
    return membership is not None and bool(membership.member)


def _membership_after(k: int, segment: Segment) -> list[str]:
    """Lines that set `m{k}`: whether the customer is a member of segment k once this
    evaluation has applied its flags (f{2k}, f{2k+1}), exactly as membership.py's
    _evaluate does, min_dwell and exit_when included; later segments read it."""
    leaving = f"f{2 * k + 1}" if segment.exit_when is not None else f"not f{2 * k}"
    stays = f"not {leaving}"
    if segment.min_dwell is not None:
        stays = f"{stays} or at < c.since + {segment.min_dwell}"
    return [
        f"    c = state.memberships.get({segment.name!r})",
        "    if c is not None and c.member:",
        f"        m{k} = {stays}",
        "    else:",
        f"        m{k} = f{2 * k}",
    ]


def _lines_total(lines: str | LineFilter | None, order: str) -> str | None:
    """Source of the CategoryTotal of `order`'s lines a filter selects (None: all lines)."""
    if lines is None:
        return None
    if isinstance(lines, tuple):
        return f"{order}.line_totals[{lines!r}]"
    return f"{order}.categories[{lines!r}]"


def _window_value(i: int, name: str, j: int, low: str, category: str | LineFilter | None) -> str:
    count = f"(h{j} - {low})"
    return {
        "orders": count,
        "spend": f"s{i}",
        "avg_order_value": f"(s{i} / {count} if h{j} > {low} else None)",
        "units": f"sum(x{j}_units[{low}:h{j}])",
        "discounted_orders": f"sum(x{j}_discounted[{low}:h{j}])",
        "distinct_categories": (
            f"DISTINCT_CATEGORIES(x{j}_items[{low}:h{j}], {category!r})"
            if isinstance(category, tuple)
            else f"(1 if h{j} > {low} else 0)"
            if category is not None
            else f"len(set().union(*x{j}_categories[{low}:h{j}]))"
        ),
        "days_since_last_purchase": f"(today - x{j}_days[h{j} - 1] if h{j} > {low} else None)",
        "days_since_first_purchase": f"(today - x{j}_days[{low}] if h{j} > {low} else None)",
        "distinct_skus": f"DISTINCT_SKUS(x{j}_items[{low}:h{j}], {category!r})",
        "distinct_products": f"DISTINCT_PRODUCTS(x{j}_items[{low}:h{j}], {category!r})",
        "max_skus_per_product": f"MAX_SKUS_PER_PRODUCT(x{j}_items[{low}:h{j}], {category!r})",
        "min_order_value": f"(min(x{j}_amount[{low}:h{j}]) if h{j} > {low} else None)",
        "max_order_value": f"(max(x{j}_amount[{low}:h{j}]) if h{j} > {low} else None)",
        "avg_days_between_orders": (
            f"(DIV(x{j}_days[h{j} - 1] - x{j}_days[{low}], {count} - 1) if {count} > 1 else None)"
        ),
    }[name]


def _lifetime_value(i: int, name: str, category: str | LineFilter | None) -> str:
    if name == "distinct_categories" and isinstance(category, tuple):
        return f"DISTINCT_CATEGORIES((L{i}.items,), {category!r})"
    if name == "distinct_categories" and category is not None:
        # the categories of that category's lines: 1 once such an order counts (the
        # accumulator's category set holds every category of those orders)
        return f"(1 if L{i}.orders else 0)"
    return {
        "distinct_skus": f"DISTINCT_SKUS((L{i}.items,), {category!r})",
        "distinct_products": f"DISTINCT_PRODUCTS((L{i}.items,), {category!r})",
        "max_skus_per_product": f"MAX_SKUS_PER_PRODUCT((L{i}.items,), {category!r})",
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
        # over all history: the retained orders (refunds may still lower them) and the
        # extreme of the pruned ones
        "min_order_value": f"EXTREME(state, K{i}, L{i}.pruned_least, False)",
        "max_order_value": f"EXTREME(state, K{i}, L{i}.pruned_most, True)",
        "avg_days_between_orders": (
            f"(DIV(L{i}.last_day - L{i}.first_day, L{i}.orders - 1) if L{i}.orders > 1 else None)"
        ),
    }[name]


_NON_INCREASING = frozenset({"orders", "units", "discounted_orders", "spend"})
# Up to this many lines of day code under an and/or, each side's day is worked out only
# in the branches that need it (copied into them); beyond, both are worked out first.
_LAZY_DAY_LINES = 80


class _FlipDays:
    """Generates, for a flag's expression, the first day after `today` on which its truth
    can change: time-driven deadlines only on days where a flag may really flip.

    Every day it gives is a lower bound of the real flip day (sound): a comparison keeps
    its truth until its metric's value changes, and for the windowed counts and sums the
    value on each day an order leaves the window is computed exactly from the index.
    `and` that is false stays false until each false side can turn (the latest of them),
    `or` that is true stays true until each true side can turn; otherwise the earliest.
    """

    def __init__(
        self,
        specs: list[MetricSpec],
        keys: list[FilterKey],
        fields: dict[FilterKey, list[str]],
        lows: dict[tuple[int, int], str],
        day_thresholds: tuple[tuple[int, int], ...],
        namespace: dict[str, Any],
        spec_index: Callable[[Metric], int],
        segment_position: dict[str, int] | None = None,
        segments: tuple[Segment, ...] = (),
    ) -> None:
        self.segment_position = segment_position or {}
        self.segments = segments
        self.values = _Values(specs, spec_index)
        self.specs = specs
        self.keys = keys
        self.fields = fields
        self.lows = lows
        self.day_thresholds = day_thresholds
        self.namespace = namespace
        self.spec_index = spec_index

    def statements(self, expr: Expr, name: str) -> list[str]:
        """Lines that set `name` (the truth) and `name_day` (NO_DAY: never by time alone)."""
        truths, days = self._node(expr, name)
        return truths + days

    def _node(self, expr: Expr, name: str) -> tuple[list[str], list[str]]:
        """The lines that set the truth of `expr` and of its parts, and those that set
        `name_day` once the truths are known: a part's day is worked out only where it
        decides (a false `and` needs only the days of its false sides)."""
        if isinstance(expr, And | Or):
            lhs, rhs = f"{name}l", f"{name}r"
            left_truths, left_days = self._node(expr.left, lhs)
            right_truths, right_days = self._node(expr.right, rhs)
            # an `and` (`or`) whose sides are all true (false) changes with the first
            # side that does (`both`: the earliest day); with one false (true) side, when
            # that side does; with two, not before both did (`either`: the latest day)
            both, either = "min", "max"
            agree = f"{name}" if isinstance(expr, And) else f"not {name}"
            truths = [
                *left_truths,
                *right_truths,
                f"    {name} = {lhs} {'and' if isinstance(expr, And) else 'or'} {rhs}",
            ]
            if len(left_days) + len(right_days) > _LAZY_DAY_LINES:
                # a large expression: both sides' days first, so the code stays linear in size
                return truths, [
                    *left_days,
                    *right_days,
                    f"    if {agree}:",
                    f"        {name}_day = {both}({lhs}_day, {rhs}_day)",
                    f"    elif {lhs} == {rhs}:",
                    f"        {name}_day = {either}({lhs}_day, {rhs}_day)",
                    "    else:",
                    f"        {name}_day = {lhs}_day if {'not ' if isinstance(expr, And) else ''}"
                    f"{lhs} else {rhs}_day",
                ]
            shifted_left = ["    " + line for line in left_days]
            shifted_right = ["    " + line for line in right_days]
            days = [
                f"    if {agree}:",
                *shifted_left,
                *shifted_right,
                f"        {name}_day = {both}({lhs}_day, {rhs}_day)",
                f"    elif {lhs} == {rhs}:",
                *shifted_left,
                *shifted_right,
                f"        {name}_day = {either}({lhs}_day, {rhs}_day)",
                f"    elif {'not ' if isinstance(expr, And) else ''}{lhs}:",
                *shifted_left,
                f"        {name}_day = {lhs}_day",
                "    else:",
                *shifted_right,
                f"        {name}_day = {rhs}_day",
            ]
            return truths, days
        if isinstance(expr, Not):
            truths, days = self._node(expr.operand, f"{name}n")
            return (
                [*truths, f"    {name} = not {name}n"],
                [*days, f"    {name}_day = {name}n_day"],
            )
        out: list[str] = []
        if isinstance(expr, InSegment):
            # a membership changes only when its segment's flags can, or when a min_dwell
            # runs out (an instant of its own, see membership._deadline)
            k = self.segment_position[expr.name]
            day = f"f{2 * k}_day"
            if self.segments[k].exit_when is not None:
                day = f"min({day}, f{2 * k + 1}_day)"
            return [f"    {name} = m{k}"], [f"    {name}_day = {day}"]
        if isinstance(expr, Compare | Between):
            dynamic = self._dynamic(expr, name)
            if dynamic is not None:
                return dynamic
        if isinstance(expr, Compare) and not (_simple(expr.left) and _simple(expr.right)):
            op = expr.op
            return self._arithmetic([expr.left, expr.right], lambda v: f"{v[0]} {op} {v[1]}", name)
        if isinstance(expr, Between) and not all(
            _simple(e) for e in (expr.operand, expr.low, expr.high)
        ):
            return self._arithmetic(
                [expr.operand, expr.low, expr.high], lambda v: f"{v[1]} <= {v[0]} <= {v[2]}", name
            )
        if isinstance(expr, Compare):
            left, right = expr.left, expr.right
            if isinstance(right, Metric) and not isinstance(left, Metric):
                left, right, op = right, left, _MIRRORED[expr.op]
            else:
                op = expr.op
            if isinstance(left, Metric) and isinstance(right, Number):
                number = _literal(right.value)
                self._single(
                    self.spec_index(left),
                    lambda value: f"{value} {op} {number}",
                    [(op, right.value)],
                    op,
                    name,
                    out,
                )
            else:
                self._generic([left, right], lambda v: f"{v[0]} {op} {v[1]}", name, out)
            return out[:1], out[1:]
        if isinstance(expr, Between):
            operand, low, high = expr.operand, expr.low, expr.high
            if isinstance(operand, Metric) and isinstance(low, Number) and isinstance(high, Number):
                low_text, high_text = _literal(low.value), _literal(high.value)
                self._single(
                    self.spec_index(operand),
                    lambda value: f"{low_text} <= {value} <= {high_text}",
                    [(">=", low.value), ("<=", high.value)],
                    "between",
                    name,
                    out,
                )
            else:
                self._generic(
                    [operand, low, high], lambda v: f"{v[1]} <= {v[0]} <= {v[2]}", name, out
                )
            return out[:1], out[1:]
        raise TypeError(f"unknown expression {expr!r}")

    def _dynamic(self, expr: Compare | Between, name: str) -> tuple[list[str], list[str]] | None:
        """A days-since metric against a value time does not change (SPEC section 3,
        language 2): the comparison changes on the day the metric crosses that value, which
        is worked out from the value now, exactly as for a number."""
        if isinstance(expr, Compare):
            left, right, op = expr.left, expr.right, expr.op
            if _days_since_metric(right) and not _days_since_metric(left):
                left, right, op = right, left, _MIRRORED[op]
            if not _days_since_metric(left) or isinstance(right, Number):
                return None
            metric = left
            bounds: list[tuple[str, Expr]] = [(op, right)]
            operands: list[Expr] = [expr.left, expr.right]
            cmp = expr.op

            def test(v: list[str]) -> str:
                return f"{v[0]} {cmp} {v[1]}"
        else:
            if not _days_since_metric(expr.operand) or (
                isinstance(expr.low, Number) and isinstance(expr.high, Number)
            ):
                return None
            metric, bounds = expr.operand, [(">=", expr.low), ("<=", expr.high)]
            operands = [expr.operand, expr.low, expr.high]

            def test(v: list[str]) -> str:
                return f"{v[1]} <= {v[0]} <= {v[2]}"

        assert isinstance(metric, Metric)
        i = self.spec_index(metric)
        used: list[int] = []
        truth = [f"    {name} = {self.values.test(operands, test, used)}"]
        days = [f"    {name}_day = NO_DAY"]
        if self.specs[i].within_days is not None:
            days.extend(self._metric_change_day(i, f"{name}_day"))  # orders leave the window
        for op, bound in bounds:
            value, _ = self.values.code(bound, [])
            self.values.temps += 1
            temp = f"t{self.values.temps}"
            days.append(f"    {temp} = {value}")
            days.append(f"    if {temp} is not None:")
            days.extend(
                "        " + line
                for line in _dynamic_flip_lines(
                    self.specs[i], i, op, temp, f"{name}_day", after=True
                )
            )
        return truth, days

    def _arithmetic(
        self, operands: list[Expr], test: Callable[[list[str]], str], name: str
    ) -> tuple[list[str], list[str]]:
        """A comparison with arithmetic: its truth holds until one of its metrics changes
        value (the parser lets no days-since metric into one, so each value is a step
        function of time whose steps _metric_change_day knows)."""
        used: list[int] = []
        truth = [f"    {name} = {self.values.test(operands, test, used)}"]
        days = [f"    {name}_day = NO_DAY"]
        for index in dict.fromkeys(used):
            days.extend(self._metric_change_day(index, f"{name}_day"))
        return truth, days

    def _operand(self, expr: Expr) -> tuple[str, int | None]:
        if isinstance(expr, Metric):
            index = self.spec_index(expr)
            return f"v{index}", index
        if isinstance(expr, Number):
            return _literal(expr.value), None
        raise ValueError(f"line {expr.line}: expected a metric or a number")

    def _truth(self, indexes: list[int], test: str) -> str:
        checks = [f"v{i} is not None" for i in indexes if self.specs[i].name not in ALWAYS_DEFINED]
        return f"({' and '.join([*checks, test])})"

    def _generic(
        self, operands: list[Expr], test: Callable[[list[str]], str], name: str, out: list[str]
    ) -> None:
        """Any comparison: its truth holds until one of its metrics changes value."""
        texts, indexes = [], []
        for operand in operands:
            text, index = self._operand(operand)
            texts.append(text)
            if index is not None:
                indexes.append(index)
        out.append(f"    {name} = {self._truth(indexes, test(texts))}")
        out.append(f"    {name}_day = NO_DAY")
        for index in dict.fromkeys(indexes):
            out.extend(self._metric_change_day(index, f"{name}_day"))

    def _single(
        self,
        i: int,
        test: Callable[[str], str],
        bounds: list[tuple[str, Decimal]],
        op: str,
        name: str,
        out: list[str],
    ) -> None:
        """`metric op number` or `metric between a and b`."""
        spec = self.specs[i]
        defined = spec.name in ALWAYS_DEFINED
        guarded: Callable[[str], str] = (
            test if defined else (lambda value: f"{value} is not None and {test(value)}")
        )
        out.append(f"    {name} = ({guarded(f'v{i}')})")
        out.append(f"    {name}_day = NO_DAY")
        if spec.within_days is None:
            if spec.name not in DAYS_SINCE:
                return  # lifetime totals do not move with time
            field = "last_day" if spec.name == "days_since_last_purchase" else "first_day"
            flips = sorted(
                {v for bound_op, number in bounds for v in _flip_values(bound_op, number)}
            )
            if not flips:
                return
            out.append(f"    base = L{i}.{field}")
            out.append("    if base is not None:")
            for flip_value in flips:
                out.append(f"        if today < base + {flip_value} < {name}_day:")
                out.append(f"            {name}_day = base + {flip_value}")
            return
        if spec.name not in _NON_INCREASING and spec.name != "avg_order_value":
            out.extend(self._metric_change_day(i, f"{name}_day"))
            return
        j = self.keys.index(spec.key)
        window = spec.within_days
        low = self.lows[(j, window)]
        days = f"x{j}_days"
        if spec.name == "orders" and op != "==" and op != "!=":
            out.append(f"    if h{j} == len({days}):")
            out.extend(self._orders_flip(j, window, bounds, op, name, f"v{i}"))
            out.append("    else:")
            out.extend("    " + line for line in self._metric_change_day(i, f"{name}_day"))
            return
        exact = [f"h{j} == len({days})"]  # no order dated after today (it would enter later)
        summed = spec.name in ("spend", "avg_order_value")
        if summed:
            if spec.lines is None:
                exact.append("not state.adjustments")  # unknown-order returns also leave
            # Below 1e16, every partial sum of amounts with at most 12 places fits Decimal's
            # 28 digits, so subtracting the leaving amounts one by one is exact.
            exact.append(f"s{i} < EXACT_SUM")
        out.append(f"    if {' and '.join(exact)}:")
        body = "        "
        if spec.name in _NON_INCREASING and op in (">", ">=", "<", "<="):
            # a non-increasing value: a false `>` or a true `<` stays so
            out.append(f"        if {'' if op in ('>', '>=') else 'not '}{name}:")
            body += "    "
        if spec.name == "avg_order_value" and op in (">", ">=", "<", "<="):
            # Every later average lies between the least and the greatest amount still in
            # the window (rounding keeps it there): when the comparison holds alike for both,
            # only the window running empty (undefined: false) can change it.
            amounts = f"x{j}_amount[{low}:h{j}]"
            out.append(f"{body}if h{j} > {low}:")
            out.append(f"{body}    least = min({amounts})")
            out.append(f"{body}    most = max({amounts})")
            out.append(f"{body}    if ({test('least')}) == ({test('most')}):")
            out.append(f"{body}        if {name}:")
            out.append(f"{body}            {name}_day = {days}[h{j} - 1] + {window}")
            out.append(f"{body}    else:")
            body += "        "
        if spec.name in ("units", "discounted_orders"):
            out.append(f"{body}rest = v{i}")
        elif summed:
            out.append(f"{body}rest = s{i}")
        out.append(f"{body}for k in range({low}, h{j}):")
        inner = body + "    "
        if spec.name == "orders":
            value = f"(h{j} - k - 1)"
        elif spec.name in ("units", "discounted_orders"):
            column = "units" if spec.name == "units" else "discounted"
            out.append(f"{inner}rest -= x{j}_{column}[k]")
            value = "rest"
        else:
            out.append(f"{inner}rest -= x{j}_amount[k]")
            value = "rest"
            if spec.name == "avg_order_value":
                out.append(f"{inner}left = h{j} - k - 1")
                out.append(f"{inner}value = rest / left if left else None")
                value = "value"
        out.append(f"{inner}if ({guarded(value)}) != {name}:")
        out.append(f"{inner}    {name}_day = {days}[k] + {window}")
        out.append(f"{inner}    break")
        out.append("    else:")
        out.extend("    " + line for line in self._metric_change_day(i, f"{name}_day"))

    def _orders_flip(
        self,
        j: int,
        window: int,
        bounds: list[tuple[str, Decimal]],
        op: str,
        name: str,
        value: str,
    ) -> list[str]:
        """The day a windowed order count crosses its bound: with no order after today the
        count on the day order k (in day order) leaves is h - k - 1, so the day is direct."""
        # the least count that satisfies the lower bound, the greatest for the upper one
        least = most = None
        for bound_op, number in bounds:
            if bound_op == ">=":
                least = math.ceil(number)
            elif bound_op == ">":
                least = math.floor(number) + 1
            elif bound_op == "<=":
                most = math.floor(number)
            else:  # "<"
                most = math.ceil(number) - 1
        days = f"x{j}_days"
        out: list[str] = []
        if most is not None:  # too many orders now: true once the count falls to `most`
            if most < 0:
                return ["        pass"]  # never true
            out.append(f"        if {value} > {most}:")
            out.append(f"            {name}_day = {days}[h{j} - {most + 1}] + {window}")
            if least is None or least <= 0:
                return out
            out.append(f"        elif {name}:")
        elif least is None or least <= 0:
            return ["        pass"]  # always true
        else:
            out.append(f"        if {name}:")
        # true now: false once the count falls below `least`
        out.append(f"            {name}_day = {days}[h{j} - {least}] + {window}")
        return out

    def _metric_change_day(self, i: int, target: str) -> list[str]:
        """Lines lowering `target` to the first day after today on which time alone changes
        the value of metric `i` (the candidates of next_day that belong to this metric)."""
        spec = self.specs[i]
        out: list[str] = []
        if spec.within_days is not None:
            j = self.keys.index(spec.key)
            window = spec.within_days
            low = self.lows[(j, window)]
            out.append(f"    if {low} < len(x{j}_days) and x{j}_days[{low}] + {window} < {target}:")
            out.append(f"        {target} = x{j}_days[{low}] + {window}")
            if spec.name in ("spend", "avg_order_value") and spec.lines is None:
                channel, _, season = spec.key
                conditions = ["day > today"]
                if channel is not None:
                    conditions.append(f"a.channel == {channel!r}")
                if season is not None:
                    conditions.append(_season_test(season).replace("md", "month_day(a.day)"))
                out.append("    for a in state.adjustments:")
                out.append(f"        day = a.day + {window}")
                out.append(f"        if {' and '.join(conditions)}:")
                out.append(f"            if day < {target}:")
                out.append(f"                {target} = day")
                out.append("            break")
        for index, number in self.day_thresholds:
            if index != i:
                continue
            if spec.within_days is None:
                field = "last_day" if spec.name == "days_since_last_purchase" else "first_day"
                out.append(f"    base = L{i}.{field}")
                out.append(f"    if base is not None and today < base + {number} < {target}:")
                out.append(f"        {target} = base + {number}")
            else:
                out.append(f"    p = bisect_right(counted, today - {number})")
                out.append(f"    if p < len(counted) and counted[p] + {number} < {target}:")
                out.append(f"        {target} = counted[p] + {number}")
        return out
