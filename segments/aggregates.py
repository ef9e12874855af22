"""Per-customer purchase aggregates: order records inside the horizon, lifetime totals, seen ids.

The state keeps one compact record per order (not one bucket per day) for
orders inside the rule set's longest window: a return must find the order it
refunds, and an order counts only while its net total is above zero, which a
per-day sum cannot tell. Unwindowed metrics read lifetime accumulators that
survive the pruning of old records. See docs/decisions/0002-customer-state.md.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from operator import attrgetter, itemgetter
from typing import Any

import orjson

from segments.clock import month_day

ZERO = Decimal(0)
_EVENT_ID = attrgetter("event_id")
_FIRST = itemgetter(0)
_SCAN_IDS = 8

# (category, product, sku) of the lines a product= or sku= filter reads (language 2);
# None means "any". A filter of the category alone stays a plain category name.
LineFilter = tuple[str | None, str | None, str | None]
# (channel, lines, season) of a metric's filters, lines being a category name or a
# LineFilter; None means "any".
FilterKey = tuple[str | None, str | LineFilter | None, tuple[int, int, int, int] | None]
# (category, product, sku) of an order's lines: kept only when the rules read SKUs or
# products (distinct_skus, distinct_products, max_skus_per_product)
Item = tuple[str, str | None, str]


@dataclass(slots=True)
class CategoryTotal:
    """What one order bought in one category, base currency."""

    amount: Decimal
    units: int


@dataclass(slots=True)
class Order:
    """One purchase, amounts in base currency; `net` falls as returns refund it."""

    event_id: str
    day: int
    channel: str
    net: Decimal
    discounted: bool
    units: int
    # only the categories the rule set needs (None: none kept)
    categories: dict[str, CategoryTotal] | None = None
    items: tuple[Item, ...] | None = None  # distinct line items, when the rules need them
    # what the order bought per product=/sku= filter the rule set reads (its lines matching
    # it); None: none kept
    line_totals: dict[LineFilter, CategoryTotal] | None = None

    def __lt__(self, other: Order) -> bool:  # insort keeps records ordered by day
        return self.day < other.day


@dataclass(slots=True)
class Adjustment:
    """A return whose purchase is unknown: it lowers spend on its own day only (SPEC section 1)."""

    event_id: str
    day: int
    channel: str
    amount: Decimal  # negative

    def __lt__(self, other: Adjustment) -> bool:
        return self.day < other.day


@dataclass(slots=True)
class Lifetime:
    """All-history totals for one filter key, kept while old order records are pruned."""

    orders: int = 0
    spend: Decimal = ZERO
    units: int = 0
    discounted: int = 0
    first_day: int | None = None
    last_day: int | None = None
    categories: dict[str, int] | None = None  # category -> number of counted orders
    pruned_last_day: int | None = None  # newest counted order already pruned from records
    # the least and greatest value of the counted orders already pruned from records; kept
    # only when the rules read min_order_value() or max_order_value() over all history
    pruned_least: Decimal | None = None
    pruned_most: Decimal | None = None
    items: dict[Item, int] | None = None  # line item -> number of counted orders with it


@dataclass(slots=True)
class Membership:
    member: bool
    seq: int
    since: int  # instant of the last transition (entry while a member, exit otherwise)


@dataclass(slots=True)
class CustomerState:
    customer_id: str
    rules_version: int = 0  # 0: never evaluated
    orders: list[Order] = field(default_factory=list)
    adjustments: list[Adjustment] = field(default_factory=list)
    returns_seen: list[tuple[str, int]] = field(default_factory=list)  # (event_id, day)
    lifetime: dict[FilterKey, Lifetime] = field(default_factory=dict)
    memberships: dict[str, Membership] = field(default_factory=dict)
    due: int | None = None  # next instant at which time alone may change a segment
    # trait name -> (current value, seq of its last change); a trait not here has no value.
    # None until the customer has a trait (no dict per state for rule sets without traits)
    traits: dict[str, tuple[str | None, int]] | None = None
    # Derived from `orders` by the compiled rules (evaluator.py), never serialized:
    # every change to the records sets it back to None.
    index: tuple[Any, ...] | None = field(default=None, compare=False, repr=False)
    # The flags of the last evaluation (shared with the compiled rules, membership.py)
    # when evaluating the same flags again would change nothing at any later instant.
    settled: tuple[bool, ...] | None = field(default=None, compare=False, repr=False)
    # The ids of `orders` and `returns_seen`, sorted, for has_seen() to bisect: built once
    # a customer keeps more than _SCAN_IDS records and then kept up to date by add_order,
    # note_return and prune; not serialized either. Below that a scan is about as fast.
    # A sorted list costs 8 bytes per id where a set cost 30 to 60 (its table).
    seen_ids: list[str] | None = field(default=None, compare=False, repr=False)

    def has_seen(self, event_id: str) -> bool:
        ids = self.seen_ids
        if ids is None:
            if len(self.orders) + len(self.returns_seen) <= _SCAN_IDS:
                for order in self.orders:
                    if order.event_id == event_id:
                        return True
                return any(seen == event_id for seen, _ in self.returns_seen)
            ids = self.seen_ids = sorted(
                [*map(_EVENT_ID, self.orders), *map(_FIRST, self.returns_seen)]
            )
        at = bisect_left(ids, event_id)
        return at < len(ids) and ids[at] == event_id

    def find_order(self, event_id: str) -> Order | None:
        for order in self.orders:
            if order.event_id == event_id:
                return order
        return None


def matches(order: Order, key: FilterKey) -> bool:
    channel, lines, season = key
    if channel is not None and order.channel != channel:
        return False
    if lines is not None and lines_total(order, lines) is None:
        return False
    return season is None or in_season(order.day, season)


def lines_total(order: Order, lines: str | LineFilter) -> CategoryTotal | None:
    """What the order bought in the lines a filter selects (None: no line matches)."""
    if isinstance(lines, str):
        return None if order.categories is None else order.categories.get(lines)
    return None if order.line_totals is None else order.line_totals.get(lines)


def line_matches(category: str, product: str | None, sku: str, lines: LineFilter) -> bool:
    """Whether one line has every field a LineFilter names."""
    want_category, want_product, want_sku = lines
    return (
        (want_category is None or category == want_category)
        and (want_product is None or product == want_product)
        and (want_sku is None or sku == want_sku)
    )


def order_value(order: Order, key: FilterKey) -> Decimal:
    """The value of a counted order under a filter key: its net total, or with a line
    filter the amount of the lines it selects (as avg_order_value and spend count it)."""
    lines = key[1]
    if lines is None:
        return order.net
    total = lines_total(order, lines)
    assert total is not None
    return total.amount


def extreme_order_value(
    state: CustomerState, key: FilterKey, pruned: Decimal | None, most: bool
) -> Decimal | None:
    """min_order_value() (most False) or max_order_value() over all history: the retained
    counted orders (a refund may still lower them) and the pruned ones' extreme."""
    values = [order_value(o, key) for o in state.orders if o.net > ZERO and matches(o, key)]
    if pruned is not None:
        values.append(pruned)
    if not values:
        return None
    return max(values) if most else min(values)


def _selected(item: Item, lines: str | LineFilter | None) -> bool:
    if lines is None:
        return True
    if isinstance(lines, str):
        return item[0] == lines
    return line_matches(item[0], item[1], item[2], lines)


def _skus_by_product(groups: Iterable[Iterable[Item]], lines: str | LineFilter | None) -> set[Item]:
    return {item for items in groups for item in items if _selected(item, lines)}


def distinct_item_categories(groups: Iterable[Iterable[Item]], lines: LineFilter) -> int:
    """distinct_categories() under a product= or sku= filter: the categories of the lines
    it selects."""
    return len({item[0] for item in _skus_by_product(groups, lines)})


def distinct_skus(groups: Iterable[Iterable[Item]], lines: str | LineFilter | None) -> int:
    """How many distinct SKUs the line items of some orders hold (of the selected lines)."""
    return len({item[2] for item in _skus_by_product(groups, lines)})


def distinct_products(groups: Iterable[Iterable[Item]], lines: str | LineFilter | None) -> int:
    """How many distinct products; lines without a product count for none."""
    return len({item[1] for item in _skus_by_product(groups, lines) if item[1] is not None})


def max_skus_per_product(groups: Iterable[Iterable[Item]], lines: str | LineFilter | None) -> int:
    """The most distinct SKUs bought of any one product (0 with no product)."""
    skus: dict[str, set[str]] = {}
    for _, product, sku in _skus_by_product(groups, lines):
        if product is not None:
            skus.setdefault(product, set()).add(sku)
    return max(map(len, skus.values()), default=0)


def in_season(day: int, season: tuple[int, int, int, int]) -> bool:
    start = season[0] * 100 + season[1]
    end = season[2] * 100 + season[3]
    md = month_day(day)
    if start <= end:
        return start <= md <= end
    return md >= start or md <= end  # wraps the new year


def _contribute(lifetime: Lifetime, key: FilterKey, order: Order, sign: int) -> None:
    """Add (sign=1) or remove (sign=-1) a counted order's share of one lifetime key."""
    lines = key[1]
    if lines is not None:
        bucket = lines_total(order, lines)
        assert bucket is not None
        amount = bucket.amount
        units = bucket.units
    else:
        amount = order.net
        units = order.units
    # add or subtract: the same Decimal as adding sign * amount, without the product
    if sign > 0:
        lifetime.spend += amount
        lifetime.units += units
    else:
        lifetime.spend -= amount
        lifetime.units -= units
    lifetime.orders += sign
    if order.discounted:
        lifetime.discounted += sign
    if lifetime.categories is not None and order.categories:
        for name in order.categories:
            count = lifetime.categories.get(name, 0) + sign
            if count:
                lifetime.categories[name] = count
            else:
                lifetime.categories.pop(name, None)
    if lifetime.items is not None and order.items:
        for item in order.items:
            count = lifetime.items.get(item, 0) + sign
            if count:
                lifetime.items[item] = count
            else:
                lifetime.items.pop(item, None)
    if sign > 0:
        if lifetime.first_day is None or order.day < lifetime.first_day:
            lifetime.first_day = order.day
        if lifetime.last_day is None or order.day > lifetime.last_day:
            lifetime.last_day = order.day


def add_order(state: CustomerState, order: Order) -> None:
    state.index = None
    orders = state.orders
    if not orders or orders[-1].day <= order.day:
        orders.append(order)  # the usual case, and where insort would put it
    else:
        insort(orders, order)
    if state.seen_ids is not None:
        insort(state.seen_ids, order.event_id)
    if order.net > ZERO:
        for key, lifetime in state.lifetime.items():
            if matches(order, key):
                _contribute(lifetime, key, order, 1)


# a returned line: (category, amount in base currency, quantity, product, sku)
RefundLine = tuple[str, Decimal, int, str | None, str]


def refund_order(
    state: CustomerState, order: Order, amount: Decimal, lines: list[RefundLine]
) -> None:
    """Lower a known order's net by `amount` (base currency) and its categories and line
    filter totals by `lines`."""
    state.index = None
    counted_keys = [key for key in state.lifetime if order.net > ZERO and matches(order, key)]
    for key in counted_keys:
        _contribute(state.lifetime[key], key, order, -1)
    order.net = max(ZERO, order.net - amount)
    order.units = max(0, order.units - sum(line[2] for line in lines))
    if order.categories:
        for category, line_amount, line_units, _, _ in lines:
            bucket = order.categories.get(category)
            if bucket is not None:
                bucket.amount = max(ZERO, bucket.amount - line_amount)
                bucket.units = max(0, bucket.units - line_units)
    if order.line_totals:
        for category, line_amount, line_units, product, sku in lines:
            for selector, bucket in order.line_totals.items():
                if line_matches(category, product, sku, selector):
                    bucket.amount = max(ZERO, bucket.amount - line_amount)
                    bucket.units = max(0, bucket.units - line_units)
    if order.net > ZERO:
        for key in counted_keys:
            _contribute(state.lifetime[key], key, order, 1)
    else:
        for key in counted_keys:
            _recompute_first_last(state, key, order.day)


def _recompute_first_last(state: CustomerState, key: FilterKey, refunded_day: int) -> None:
    # Pruned orders can no longer be refunded (a return of one is an adjustment),
    # so they stay counted: the newest of them bounds the last day from below,
    # and any of them is older than the refunded order, which therefore was the
    # first order only when nothing was pruned.
    lifetime = state.lifetime[key]
    if lifetime.orders == 0:
        lifetime.first_day = lifetime.last_day = None
        return
    days = [o.day for o in state.orders if o.net > ZERO and matches(o, key)]
    if lifetime.last_day == refunded_day:
        candidates = days if lifetime.pruned_last_day is None else [*days, lifetime.pruned_last_day]
        lifetime.last_day = max(candidates) if candidates else None
    if lifetime.first_day == refunded_day and lifetime.pruned_last_day is None:
        lifetime.first_day = min(days) if days else None


def ensure_lifetime_keys(
    state: CustomerState,
    keys: tuple[FilterKey, ...],
    with_categories: bool,
    with_items: bool = False,
) -> None:
    """Give the state an accumulator per key the rule set needs, built from retained orders."""
    for key in keys:
        existing = state.lifetime.get(key)
        if existing is not None:
            if with_items and existing.items is None:
                # a new rule version reads line items: count those of the retained orders
                existing.items = {}
                for order in state.orders:
                    if order.net > ZERO and order.items and matches(order, key):
                        for item in order.items:
                            existing.items[item] = existing.items.get(item, 0) + 1
            continue
        lifetime = Lifetime(
            categories={} if with_categories else None, items={} if with_items else None
        )
        for order in state.orders:
            if order.net > ZERO and matches(order, key):
                _contribute(lifetime, key, order, 1)
        for adjustment in state.adjustments:
            if adjustment_matches(adjustment, key):
                lifetime.spend += adjustment.amount
        state.lifetime[key] = lifetime


def note_return(state: CustomerState, event_id: str, day: int) -> None:
    """Remember a return's id (dedupe) until it is older than max_lateness."""
    state.returns_seen.append((event_id, day))
    if state.seen_ids is not None:
        insort(state.seen_ids, event_id)


def add_adjustment(state: CustomerState, adjustment: Adjustment) -> None:
    state.index = None
    insort(state.adjustments, adjustment)
    for key, lifetime in state.lifetime.items():
        if adjustment_matches(adjustment, key):
            lifetime.spend += adjustment.amount


def adjustment_matches(adjustment: Adjustment, key: FilterKey) -> bool:
    # An adjustment has no lines, so a spend filtered by lines never sees it.
    channel, lines, season = key
    return (
        lines is None
        and (channel is None or channel == adjustment.channel)
        and (season is None or in_season(adjustment.day, season))
    )


def prune(
    state: CustomerState, oldest_order_day: int, oldest_seen_day: int, extremes: bool = False
) -> None:
    """Drop records no window can see any more; lifetime totals already hold them.

    extremes: keep the least and greatest pruned order value per lifetime key (the
    rules read min_order_value() or max_order_value() over all history).
    """
    if state.orders and state.orders[0].day < oldest_order_day:
        for order in state.orders:
            if order.day >= oldest_order_day:
                break
            if order.net > ZERO:
                for key, lifetime in state.lifetime.items():
                    if not matches(order, key):
                        continue
                    if lifetime.pruned_last_day is None or order.day > lifetime.pruned_last_day:
                        lifetime.pruned_last_day = order.day
                    if extremes:
                        value = order_value(order, key)
                        if lifetime.pruned_least is None or value < lifetime.pruned_least:
                            lifetime.pruned_least = value
                        if lifetime.pruned_most is None or value > lifetime.pruned_most:
                            lifetime.pruned_most = value
        if state.seen_ids is not None:
            _forget(state.seen_ids, [o.event_id for o in state.orders if o.day < oldest_order_day])
        state.orders = [o for o in state.orders if o.day >= oldest_order_day]
        state.index = None
    if state.adjustments and state.adjustments[0].day < oldest_order_day:
        state.adjustments = [a for a in state.adjustments if a.day >= oldest_order_day]
        state.index = None
    if state.returns_seen:
        gone = [r[0] for r in state.returns_seen if r[1] < oldest_seen_day]
        if gone:
            if state.seen_ids is not None:
                _forget(state.seen_ids, gone)
            state.returns_seen = [r for r in state.returns_seen if r[1] >= oldest_seen_day]


def _forget(ids: list[str], gone: list[str]) -> None:
    """Take pruned records' ids out of a sorted seen_ids list."""
    for event_id in gone:
        at = bisect_left(ids, event_id)
        if at < len(ids) and ids[at] == event_id:
            del ids[at]


# Serialized form (the streaming table's value): compact positional JSON arrays,
# amounts as decimal strings, so a customer with a handful of orders fits in a
# few hundred bytes. FORMAT bumps when the layout changes.
FORMAT = 1
_CHANNEL_CODE = {"pos": 0, "online": 1}
_CHANNELS = ("pos", "online")


def _key_text(key: FilterKey) -> str:
    channel, lines, season = key
    season_text = "".join(f"{part:02d}" for part in season) if season is not None else ""
    if isinstance(lines, tuple):  # a product= or sku= filter: a JSON array of the parts
        return orjson.dumps([channel, season_text, *lines]).decode()
    return f"{channel or ''}|{season_text}|{lines or ''}"


def _key_of(text: str) -> FilterKey:
    selector: str | LineFilter | None
    if text.startswith("["):  # never a channel: version-1 keys start with one or with '|'
        channel, season_text, category, product, sku = orjson.loads(text)
        selector = (category, product, sku)
    else:
        channel, season_text, category = text.split("|", 2)
        selector = category or None
    season = None
    if season_text:
        season = (
            int(season_text[0:2]),
            int(season_text[2:4]),
            int(season_text[4:6]),
            int(season_text[6:8]),
        )
    return (channel or None, selector, season)


def _categories_out(categories: dict[str, CategoryTotal] | None) -> Any:
    if not categories:
        return None
    return {name: [str(total.amount), total.units] for name, total in categories.items()}


def _categories_in(data: Any) -> dict[str, CategoryTotal] | None:
    if not data:
        return None
    return {name: CategoryTotal(Decimal(amount), units) for name, (amount, units) in data.items()}


def _trimmed(row: list[Any]) -> list[Any]:
    """Drop trailing None fields: most records leave their last fields unused."""
    while row and row[-1] is None:
        row.pop()
    return row


def _padded(row: list[Any], size: int) -> list[Any]:
    return row + [None] * (size - len(row))


def _order_row(o: Order) -> list[Any]:
    row = [o.event_id, o.day, _CHANNEL_CODE[o.channel], str(o.net), int(o.discounted), o.units]
    if o.categories or o.items is not None or o.line_totals is not None:
        row.append(_categories_out(o.categories))
        row.append(None if o.items is None else [list(item) for item in o.items])
        row.append(
            None
            if o.line_totals is None
            else [
                [*selector, str(total.amount), total.units]
                for selector, total in o.line_totals.items()
            ]
        )
        _trimmed(row)
    return row  # `units` is never None: six fields at least, as _trimmed leaves them


def state_to_bytes(state: CustomerState) -> bytes:
    orders = list(map(_order_row, state.orders))
    adjustments = [
        [a.event_id, a.day, _CHANNEL_CODE[a.channel], str(a.amount)] for a in state.adjustments
    ]
    lifetime = [
        _trimmed(
            [
                _key_text(key),
                lt.orders,
                str(lt.spend),
                lt.units,
                lt.discounted,
                lt.first_day,
                lt.last_day,
                lt.pruned_last_day,
                lt.categories,
                None if lt.pruned_least is None else str(lt.pruned_least),
                None if lt.pruned_most is None else str(lt.pruned_most),
                None if lt.items is None else [[*item, n] for item, n in lt.items.items()],
            ]
        )
        for key, lt in state.lifetime.items()
    ]
    memberships = {name: [int(m.member), m.seq, m.since] for name, m in state.memberships.items()}
    row: list[Any] = [
        FORMAT,
        state.rules_version,
        state.due,
        orders,
        adjustments,
        state.returns_seen,
        lifetime,
        memberships,
    ]
    if state.traits:  # a ninth field only with traits: other states encode as before
        row.append({name: [value, seq] for name, (value, seq) in state.traits.items()})
    return orjson.dumps(row)


def stored_rules_version(data: bytes) -> int:
    """The rule version of an encoded state, read from its prefix `[format,version,`
    without decoding the rest (a worker reads every stored customer at a rollout)."""
    start = data.index(b",") + 1
    return int(data[start : data.index(b",", start)])


def _order_of_row(row: list[Any]) -> Order:
    if len(row) == 6:  # the usual order: no categories, items or line totals kept
        event_id, day, channel, net, discounted, units = row
        return Order(event_id, day, _CHANNELS[channel], Decimal(net), bool(discounted), units)
    event_id, day, channel, net, discounted, units, cats, items, line_totals = _padded(row, 9)
    return Order(
        event_id,
        day,
        _CHANNELS[channel],
        Decimal(net),
        bool(discounted),
        units,
        _categories_in(cats),
        None if items is None else tuple((c, p, s) for c, p, s in items),
        None
        if line_totals is None
        else {(c, p, s): CategoryTotal(Decimal(a), n) for c, p, s, a, n in line_totals},
    )


def state_from_bytes(customer_id: str, data: bytes) -> CustomerState:
    fields = orjson.loads(data)
    (fmt, rules_version, due, orders, adjustments, returns_seen, lifetime, memberships) = fields[:8]
    traits = fields[8] if len(fields) > 8 else None
    if fmt != FORMAT:
        raise ValueError(f"customer state format {fmt} is not {FORMAT}")
    state = CustomerState(customer_id=customer_id, rules_version=rules_version, due=due)
    lifetime = [_padded(row, 12) for row in lifetime]
    state.orders = list(map(_order_of_row, orders))
    state.adjustments = [
        Adjustment(event_id, day, _CHANNELS[channel], Decimal(amount))
        for event_id, day, channel, amount in adjustments
    ]
    state.returns_seen = [(event_id, day) for event_id, day in returns_seen]
    state.lifetime = {
        _key_of(key): Lifetime(
            n,
            Decimal(spend),
            units,
            discounted,
            first,
            last,
            cats,
            pruned,
            None if least is None else Decimal(least),
            None if most is None else Decimal(most),
            None if items is None else {(c, p, s): count for c, p, s, count in items},
        )
        for (
            key,
            n,
            spend,
            units,
            discounted,
            first,
            last,
            pruned,
            cats,
            least,
            most,
            items,
        ) in lifetime
    }
    state.memberships = {
        name: Membership(bool(member), seq, since)
        for name, (member, seq, since) in memberships.items()
    }
    if traits:
        state.traits = {name: (value, seq) for name, (value, seq) in traits.items()}
    return state
