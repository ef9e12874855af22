"""A deliberately naive reference of SPEC sections 2 to 4 for property tests.

It shares nothing with segments/ but the input types and the AST: at every
instant where anything can change (every event, every local midnight, every
min_dwell expiry) it recomputes every metric from the customer's full history
by brute force. Slow and obviously right is the point.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

from segments.events import Event, Purchase, Return
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
from segments.rules.ruleset import RuleSet, Trait

MICROS_PER_DAY = 86_400_000_000
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _local_date(instant: int, zone: ZoneInfo) -> Any:
    return (EPOCH + timedelta(microseconds=instant)).astimezone(zone).date()


def _midnight_after(instant: int, zone: ZoneInfo) -> int:
    day = _local_date(instant, zone) + timedelta(days=1)
    local = datetime(day.year, day.month, day.day, tzinfo=zone)
    delta = local - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _rate(currency: str, ruleset: RuleSet) -> Decimal:
    return Decimal(1) if currency == ruleset.base_currency else ruleset.rates[currency]


def _base(amount: Decimal, currency: str, ruleset: RuleSet) -> Decimal:
    if currency == ruleset.base_currency:
        return amount
    return (amount * _rate(currency, ruleset)).quantize(Decimal("0.0001"))


@dataclass
class _Order:
    event_id: str
    date: Any
    channel: str
    net: Decimal
    discounted: bool
    units: int
    lines: list[list[Any]]  # [category, amount, units]
    items: set[tuple[str, str | None, str]] = field(default_factory=set)  # category, product, sku
    # every line as bought and as returned: (category, product, sku, amount, units)
    bought: list[tuple[str, str | None, str, Decimal, int]] = field(default_factory=list)
    returned: list[tuple[str, str | None, str, Decimal, int]] = field(default_factory=list)


@dataclass
class _History:
    orders: dict[str, _Order] = field(default_factory=dict)
    adjustments: list[tuple[Any, str, Decimal]] = field(default_factory=list)
    seen: set[str] = field(default_factory=set)


def _apply(history: _History, event: Event, ruleset: RuleSet, zone: ZoneInfo) -> None:
    date = _local_date(event.occurred_at, zone)
    if isinstance(event, Purchase):
        history.orders[event.event_id] = _Order(
            event.event_id,
            date,
            event.channel,
            _base(event.total, event.currency, ruleset),
            event.discount_total > 0 or any(line.discount > 0 for line in event.lines),
            sum(line.quantity for line in event.lines),
            _merge_lines(
                (line.category, _base(line.amount, event.currency, ruleset), line.quantity)
                for line in event.lines
            ),
            {(line.category, line.product, line.sku) for line in event.lines},
            [_raw(line, event.currency, ruleset) for line in event.lines],
        )
        return
    assert isinstance(event, Return)
    original = history.orders.get(event.original_event_id or "")
    amount = _base(event.total, event.currency, ruleset)
    if original is None:
        history.adjustments.append((date, event.channel, -amount))
        return
    original.returned.extend(_raw(line, event.currency, ruleset) for line in event.lines)
    original.net = max(Decimal(0), original.net - amount)
    original.units = max(0, original.units - sum(line.quantity for line in event.lines))
    for line in event.lines:
        for entry in original.lines:
            if entry[0] == line.category:
                entry[1] = max(Decimal(0), entry[1] - _base(line.amount, event.currency, ruleset))
                entry[2] = max(0, entry[2] - line.quantity)
                break


def _raw(line: Any, currency: str, ruleset: RuleSet) -> tuple[str, str | None, str, Decimal, int]:
    return (
        line.category,
        line.product,
        line.sku,
        _base(line.amount, currency, ruleset),
        line.quantity,
    )


def _selects(metric: Metric, category: str, product: str | None, sku: str) -> bool:
    """Whether a line has every field a metric's category=, product= and sku= name."""
    return (
        (metric.category is None or category == metric.category)
        and (metric.product is None or product == metric.product)
        and (metric.sku is None or sku == metric.sku)
    )


def _selected_total(metric: Metric, order: _Order) -> tuple[Decimal, int] | None:
    """What the order's lines matching a product= or sku= filter cost, and their units,
    lowered by each returned line that matches (never below 0); None if none matches."""
    chosen = [line for line in order.bought if _selects(metric, *line[:3])]
    if not chosen:
        return None
    amount = sum((line[3] for line in chosen), Decimal(0))
    units = sum(line[4] for line in chosen)
    for line in order.returned:
        if _selects(metric, *line[:3]):
            amount = max(Decimal(0), amount - line[3])
            units = max(0, units - line[4])
    return amount, units


def _merge_lines(lines: Any) -> list[list[Any]]:
    merged: dict[str, list[Any]] = {}
    for category, amount, units in lines:
        entry = merged.setdefault(category, [category, Decimal(0), 0])
        entry[1] += amount
        entry[2] += units
    return list(merged.values())


def _in_season(date: Any, season: tuple[int, int, int, int] | None) -> bool:
    if season is None:
        return True
    md = (date.month, date.day)
    start, end = (season[0], season[1]), (season[2], season[3])
    return start <= md <= end if start <= end else (md >= start or md <= end)


def _metric(metric: Metric, history: _History, today: Any) -> Any:
    def in_window(date: Any) -> bool:
        if date > today:
            return False
        return metric.within_days is None or (today - date).days < metric.within_days

    by_lines = metric.product is not None or metric.sku is not None
    orders = [
        o
        for o in history.orders.values()
        if o.net > 0
        and in_window(o.date)
        and (metric.channel is None or o.channel == metric.channel)
        and (
            _selected_total(metric, o) is not None
            if by_lines
            else metric.category is None or any(line[0] == metric.category for line in o.lines)
        )
        and _in_season(o.date, metric.season)
    ]
    selected: dict[str, tuple[Decimal, int]] = {}
    if by_lines:
        for o in orders:
            total = _selected_total(metric, o)
            assert total is not None
            selected[o.event_id] = total
    if by_lines:
        spend = sum((selected[o.event_id][0] for o in orders), Decimal(0))
        units = sum(selected[o.event_id][1] for o in orders)
    elif metric.category is None:
        spend = sum((o.net for o in orders), Decimal(0))
        spend += sum(
            (
                amount
                for date, channel, amount in history.adjustments
                if in_window(date)
                and (metric.channel is None or channel == metric.channel)
                and _in_season(date, metric.season)
            ),
            Decimal(0),
        )
        units = sum(o.units for o in orders)
    else:
        chosen = [line for o in orders for line in o.lines if line[0] == metric.category]
        spend = sum((line[1] for line in chosen), Decimal(0))
        units = sum(line[2] for line in chosen)
    name = metric.name
    if name == "orders":
        return len(orders)
    if name == "spend":
        return spend
    if name == "avg_order_value":
        return spend / len(orders) if orders else None
    if name == "units":
        return units
    if name == "discounted_orders":
        return sum(1 for o in orders if o.discounted)
    if name == "distinct_categories":
        if by_lines:
            return len({c for o in orders for c, p, sku in o.items if _selects(metric, c, p, sku)})
        names = {line[0] for o in orders for line in o.lines}
        if metric.category is not None:
            names &= {metric.category}
        return len(names)
    if name == "days_since_last_purchase":
        return (today - max(o.date for o in orders)).days if orders else None
    if name == "days_since_first_purchase":
        return (today - min(o.date for o in orders)).days if orders else None
    if name in ("min_order_value", "max_order_value"):
        if by_lines:
            amounts = [selected[o.event_id][0] for o in orders]
        elif metric.category is None:
            amounts = [o.net for o in orders]
        else:
            amounts = [
                sum((line[1] for line in o.lines if line[0] == metric.category), Decimal(0))
                for o in orders
            ]
        if not amounts:
            return None
        return min(amounts) if name == "min_order_value" else max(amounts)
    if name in ("distinct_skus", "distinct_products", "max_skus_per_product"):
        items = {item for o in orders for item in o.items if _selects(metric, *item)}
        if name == "distinct_skus":
            return len({sku for _, _, sku in items})
        if name == "distinct_products":
            return len({product for _, product, _ in items if product is not None})
        per_product: dict[str, set[str]] = {}
        for _, product, sku in items:
            if product is not None:
                per_product.setdefault(product, set()).add(sku)
        return max((len(skus) for skus in per_product.values()), default=0)
    if name == "avg_days_between_orders":
        if len(orders) < 2:
            return None
        dates = [o.date for o in orders]
        return Fraction((max(dates) - min(dates)).days, len(orders) - 1)
    raise ValueError(name)


def _value(expr: Expr, history: _History, today: Any) -> Any:
    """A metric, a number or arithmetic; arithmetic is done in exact fractions (the
    engine's 100-digit decimals must agree with them), None when undefined."""
    if isinstance(expr, Metric):
        return _metric(expr, history, today)
    if isinstance(expr, Number):
        return expr.value
    if isinstance(expr, Negate):
        operand = _value(expr.operand, history, today)
        return None if operand is None else -Fraction(operand)
    if isinstance(expr, Arithmetic):
        left, right = _value(expr.left, history, today), _value(expr.right, history, today)
        if left is None or right is None:
            return None
        a, b = Fraction(left), Fraction(right)
        if expr.op == "+":
            return a + b
        if expr.op == "-":
            return a - b
        if expr.op == "*":
            return a * b
        return a / b if b else None
    raise TypeError(expr)


def holds(
    expr: Expr, history: _History, today: Any, members: dict[str, tuple[bool, int, int]]
) -> bool:
    """Whether a rule holds; in_segment reads `members`, the memberships as this very
    evaluation has left them so far (earlier segments are already updated)."""
    if isinstance(expr, InSegment):
        return members.get(expr.name, (False, 0, 0))[0]
    if isinstance(expr, And):
        return holds(expr.left, history, today, members) and holds(
            expr.right, history, today, members
        )
    if isinstance(expr, Or):
        return holds(expr.left, history, today, members) or holds(
            expr.right, history, today, members
        )
    if isinstance(expr, Not):
        return not holds(expr.operand, history, today, members)
    if isinstance(expr, Between):
        value = _value(expr.operand, history, today)
        low, high = _value(expr.low, history, today), _value(expr.high, history, today)
        if value is None or low is None or high is None:
            return False
        return bool(Fraction(low) <= Fraction(value) <= Fraction(high))
    if isinstance(expr, Compare):
        left, right = _value(expr.left, history, today), _value(expr.right, history, today)
        if left is None or right is None:
            return False
        left, right = Fraction(left), Fraction(right)
        return {
            "<": left < right,
            "<=": left <= right,
            ">": left > right,
            ">=": left >= right,
            "==": left == right,
            "!=": left != right,
        }[expr.op]
    raise TypeError(expr)


def top_category(history: _History, today: Any, days: int) -> str | None:
    """The category with the most spend in the counted orders of the last `days` days,
    ties by name; None when no category has spend above zero."""
    totals: dict[str, Decimal] = {}
    for order in history.orders.values():
        if order.net > 0 and 0 <= (today - order.date).days < days:
            for category, amount, _ in order.lines:
                totals[category] = totals.get(category, Decimal(0)) + amount
    ranked = sorted((-amount, category) for category, amount in totals.items() if amount > 0)
    return ranked[0][1] if ranked else None


def trait_value(
    trait: Trait, history: _History, today: Any, members: dict[str, tuple[bool, int, int]]
) -> str | None:
    """A trait's value: the first case that holds (segments already evaluated), else
    its default; or its top category."""
    if trait.top_category_days is not None:
        return top_category(history, today, trait.top_category_days)
    for case in trait.cases:
        if holds(case.when, history, today, members):
            return case.value
    return trait.default


def reference_replay(
    events: list[Event],
    ruleset: RuleSet,
    as_of: int | None,
    trait_changes: list[dict[str, Any]] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, list[str]]]:
    """Changes (as dicts without metrics) and memberships, customer by customer; the trait
    changes (as dicts without metrics and change_id) are added to `trait_changes`."""
    zone = ZoneInfo(ruleset.timezone)
    ordered = sorted(enumerate(events), key=lambda pair: (pair[1].occurred_at, pair[0]))
    end = max([e.occurred_at for _, e in ordered] + ([as_of] if as_of is not None else []))
    by_customer: dict[str, list[Event]] = {}
    for _, event in ordered:
        by_customer.setdefault(event.customer_id, []).append(event)
    changes: list[dict[str, Any]] = []
    memberships: dict[str, list[str]] = {s.name: [] for s in ruleset.segments}
    for customer_id, customer_events in by_customer.items():
        state: dict[str, tuple[bool, int, int]] = {}
        traits: dict[str, tuple[str | None, int]] = {}
        history = _History()
        # (instant, kind, order, payload): checks (kind 0) come before events (kind 1)
        queue: list[tuple[int, int, int, Any]] = []
        for n, event in enumerate(customer_events):
            queue.append((event.occurred_at, 1, n, event))
        midnight = _midnight_after(customer_events[0].occurred_at, zone)
        while midnight <= end:
            queue.append((midnight, 0, 0, None))
            midnight = _midnight_after(midnight, zone)
        heapq.heapify(queue)

        def evaluate(
            at: int,
            cause: str,
            event_id: str | None,
            customer_id: str = customer_id,
            state: dict[str, tuple[bool, int, int]] = state,
            history: _History = history,
            queue: list[tuple[int, int, int, Any]] = queue,
            traits: dict[str, tuple[str | None, int]] = traits,
        ) -> None:
            today = _local_date(at, zone)
            for segment in ruleset.segments:
                member, seq, since = state.get(segment.name, (False, 0, 0))
                if not member:
                    if not holds(segment.when, history, today, state):
                        continue
                    state[segment.name] = (True, seq + 1, at)
                    kind = "entered"
                    if segment.min_dwell is not None:
                        heapq.heappush(queue, (at + segment.min_dwell, 0, 0, None))
                else:
                    if segment.exit_when is not None:
                        leaving = holds(segment.exit_when, history, today, state)
                    else:
                        leaving = not holds(segment.when, history, today, state)
                    if not leaving:
                        continue
                    if segment.min_dwell is not None and at < since + segment.min_dwell:
                        continue
                    state[segment.name] = (False, seq + 1, at)
                    kind = "exited"
                changes.append(
                    {
                        "customer_id": customer_id,
                        "segment": segment.name,
                        "change": kind,
                        "at": at,
                        "cause": cause,
                        "event_id": event_id,
                        "seq": state[segment.name][1],
                    }
                )
            for trait in ruleset.traits:
                value = trait_value(trait, history, today, state)
                old, seq = traits.get(trait.name, (None, 0))
                if value == old:
                    continue
                traits[trait.name] = (value, seq + 1)
                if trait_changes is not None:
                    trait_changes.append(
                        {
                            "customer_id": customer_id,
                            "trait": trait.name,
                            "value": value,
                            "at": at,
                            "cause": cause,
                            "event_id": event_id,
                            "seq": seq + 1,
                        }
                    )

        while queue:
            at, kind, _, payload = heapq.heappop(queue)
            if at > end:
                break
            if kind == 0:
                evaluate(at, "time", None)
                continue
            if payload.event_id in history.seen:
                continue
            history.seen.add(payload.event_id)
            _apply(history, payload, ruleset, zone)
            evaluate(
                at, "purchase" if isinstance(payload, Purchase) else "return", payload.event_id
            )
        for name, (member, _, _) in state.items():
            if member:
                memberships[name].append(customer_id)
    for members in memberships.values():
        members.sort()
    return changes, memberships
