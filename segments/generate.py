"""Seeded synthetic POS and online purchase traffic in canonical form (`segments generate`)."""

from __future__ import annotations

import bisect
import heapq
import itertools
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

import orjson

from segments.changes import format_instant

DEFAULT_START = date(2025, 1, 1)
MICROS_PER_DAY = 86_400_000_000
MAX_CUSTOMERS = 1 << 24

# --------------------------------------------------------------------------
# The model. Every number below is a knob of the synthetic world; the
# docs/event-formats.md "Generator model" section explains them.

# How often a customer comes back: (share of customers, mean days between
# purchases; 0 = buys once). Most buy once or twice, a few very often.
FREQUENCY_CLASSES = ((0.50, 0.0), (0.28, 120.0), (0.15, 45.0), (0.06, 14.0), (0.01, 5.0))
MEAN_ACTIVE_DAYS = 300.0  # after the first purchase; then the customer lapses for good
# Customers may have started buying up to this long before the first day, so the
# window opens on a settled customer base rather than on an empty shop.
HISTORY_DAYS = 730
CURRENCY_SHARES = (("EUR", 0.88), ("USD", 0.07), ("GBP", 0.05))
RATES_TO_EUR = {"EUR": 1.0, "USD": 0.92, "GBP": 1.17}  # the example rule set's rates
STORES = {"EUR": [f"{n:04d}" for n in range(1, 10)], "GBP": ["0010", "0011"], "USD": ["0012"]}
# A customer's usual channel: (share, probability that a purchase is online).
CHANNEL_HABITS = ((0.40, 0.92), (0.35, 0.08), (0.25, 0.5))
RUNNER_SHARE = 0.25  # customers who favour running shoes
DEAL_SEEKER_SHARE = 0.20  # customers who mostly buy discounted
RETURN_RATE = {"online": 0.08, "pos": 0.03}  # about 5% of purchases overall
FULL_RETURN_SHARE = 0.4  # the rest return one line

# category: (weight, weight for runners, price points in EUR cents, max quantity)
CATALOG: dict[str, tuple[float, float, tuple[int, ...], int]] = {
    "Running Shoes": (10, 40, (8995, 10995, 12995, 14995, 17995), 1),
    "Trail Shoes": (5, 10, (9995, 13995, 15995), 1),
    "Apparel": (25, 15, (1995, 2995, 3995, 5995, 7995), 2),
    "Socks": (15, 15, (795, 995, 1495), 3),
    "Accessories": (15, 8, (495, 1295, 2495, 3495), 2),
    "Nutrition": (10, 8, (195, 249, 349, 2495), 4),
    "Outdoor": (12, 2, (4995, 8995, 19995), 1),
    "Watches": (3, 2, (14900, 24900, 39900), 1),
    "Swimwear": (5, 0, (2495, 3995), 1),
}
SKUS_PER_CATEGORY = 40
LINES_PER_ORDER = ((1, 0.55), (2, 0.28), (3, 0.12), (4, 0.03), (5, 0.02))

# Hour-of-day weights (UTC) per channel: stores open 8-20 UTC, online peaks in the evening.
POS_HOURS = {8: 2, 9: 4, 10: 6, 11: 8, 12: 9, 13: 8, 14: 7, 15: 8, 16: 9, 17: 10, 18: 8, 19: 4}
ONLINE_HOURS = dict(
    enumerate((2, 1, 1, 1, 1, 1, 2, 3, 4, 5, 5, 6, 6, 6, 6, 6, 6, 7, 8, 9, 9, 8, 6, 4))
)

# Dirty mode: shares of the clean events that get a twin.
DUPLICATE_RATE = 0.01  # re-sent, byte for byte, within 5 minutes
OUT_OF_ORDER_RATE = 0.02  # held back 10 minutes to 2 days
MALFORMED_RATE = 0.005  # an extra broken record, one of MALFORMED_KINDS in turn
MALFORMED_KINDS = (
    "invalid_json",
    "missing_field",
    "negative_amount",
    "naive_timestamp",
    "unknown_currency",
)


def season(day: date) -> float:
    """Relative purchase rate on a calendar day: January sales, the December peak, Saturdays."""
    month, dom = day.month, day.day
    if month == 1 or (month == 2 and dom <= 14):
        rate = 1.8 if (month == 1 and dom <= 14) else 1.5  # January sales, strongest early
    elif month == 12:
        rate = 2.4 if 10 <= dom <= 23 else (0.8 if dom >= 25 else 1.7)
    elif month == 11 and dom >= 24:
        rate = 1.6  # Black Friday week
    else:
        rate = 1.0
    if day.weekday() == 5:
        rate *= 1.15
    return rate


def discount_policy(day: date, deal_seeker: bool) -> tuple[float, tuple[int, ...]]:
    """(probability that an order is discounted, percentages to choose from) on a day."""
    if day.month == 1 or (day.month == 2 and day.day <= 14):
        return (0.85 if deal_seeker else 0.55), (20, 30, 40, 50)
    if day.month == 12 or (day.month == 11 and day.day >= 24):
        return (0.6 if deal_seeker else 0.3), (10, 15, 20, 25)
    return (0.45 if deal_seeker else 0.08), (10, 15)


# --------------------------------------------------------------------------
# Report


@dataclass
class GenerationReport:
    """What a generation produced; in dirty mode, what was injected (exact counts)."""

    customers: int = 0
    purchases: int = 0
    returns: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    malformed: Counter[str] = field(default_factory=Counter)
    records: int = 0  # lines written, every kind included

    @property
    def events(self) -> int:
        """Clean events (purchases and returns), each written once before any duplicate."""
        return self.purchases + self.returns

    def summary(self) -> str:
        text = (
            f"generated {self.records} records: {self.purchases} purchases and "
            f"{self.returns} returns of {self.customers} customers"
        )
        if self.duplicates or self.out_of_order or self.malformed:
            broken = ", ".join(f"{kind} {count}" for kind, count in sorted(self.malformed.items()))
            text += (
                f"\ninjected: {self.duplicates} exact duplicates, "
                f"{self.out_of_order} out-of-order events, "
                f"{sum(self.malformed.values())} malformed records ({broken or 'none'})"
            )
        return text


# --------------------------------------------------------------------------
# Generation


def generate_events(
    customers: int,
    days: int,
    seed: int,
    start: date = DEFAULT_START,
    dirty: bool = False,
    report: GenerationReport | None = None,
) -> Iterator[bytes]:
    """Canonical JSON events (no trailing newline), sorted by occurred_at unless `dirty`.

    Deterministic for (customers, days, seed, start, dirty). The clean events
    of a dirty run are exactly those of the clean run; dirty mode only adds
    duplicates and malformed records and holds some events back.
    """
    if not 0 < customers <= MAX_CUSTOMERS:
        raise ValueError(f"customers must be 1..{MAX_CUSTOMERS}, got {customers}")
    if days < 1:
        raise ValueError(f"days must be >= 1, got {days}")
    report = report if report is not None else GenerationReport()
    report.customers = customers
    clean = _World(customers, days, seed, start, report).events()
    if dirty:
        return _make_dirty(clean, random.Random(seed * 1_000_003 + 17), report)
    return _encode(clean, report)


def _encode(
    clean: Iterator[tuple[int, dict[str, Any]]], report: GenerationReport
) -> Iterator[bytes]:
    dumps = orjson.dumps
    for _, document in clean:
        report.records += 1
        yield dumps(document)


class _World:
    """The customers and their purchases; emits (occurred_at, canonical document) in time order."""

    def __init__(
        self, customers: int, days: int, seed: int, start: date, report: GenerationReport
    ) -> None:
        self.rng = random.Random(seed)
        self.customers = customers
        self.days = days
        self.report = report
        self.start_micros = (
            int(datetime(start.year, start.month, start.day, tzinfo=UTC).timestamp()) * 1_000_000
        )
        self.end_micros = self.start_micros + days * MICROS_PER_DAY
        ordinal = start.toordinal()
        self.calendar = [date.fromordinal(ordinal + offset) for offset in range(days)]
        # indexed by day + HISTORY_DAYS: the history before the window has seasons too
        self.season = [
            season(date.fromordinal(ordinal + offset)) for offset in range(-HISTORY_DAYS, days)
        ]
        self.peak = max(self.season)
        self.catalog = _catalog()
        categories = list(CATALOG)
        self.categories = categories
        self.category_weights = (
            list(itertools.accumulate(CATALOG[name][0] for name in categories)),
            list(itertools.accumulate(CATALOG[name][1] for name in categories)),
        )
        self.pos_hours = _cumulative(POS_HOURS)
        self.online_hours = _cumulative(ONLINE_HOURS)
        self.receipts: Counter[str] = Counter()
        self.online_orders = 0
        self.sequence = itertools.count()

    # -- phase 1: who buys when (a sortable key per purchase) ---------------

    def purchase_keys(self) -> list[int]:
        rng = self.rng
        random_ = rng.random
        expovariate = rng.expovariate
        frequency = _cumulative_shares(FREQUENCY_CLASSES)
        habits = _cumulative_shares(CHANNEL_HABITS)
        currencies = _cumulative_shares(tuple((share, code) for code, share in CURRENCY_SHARES))
        self.currency: list[str] = []
        self.store: list[str] = []
        self.runner: list[bool] = []
        self.deal_seeker: list[bool] = []
        keys: list[int] = []
        append = keys.append
        for customer in range(self.customers):
            currency = _pick(currencies, random_())
            self.currency.append(currency)
            self.store.append(rng.choice(STORES[currency]))
            self.runner.append(random_() < RUNNER_SHARE)
            self.deal_seeker.append(random_() < DEAL_SEEKER_SHARE)
            online_share = _pick(habits, random_())
            mean_gap = _pick(frequency, random_())
            moments = self._purchase_days(mean_gap, random_, expovariate)
            for moment in moments:
                online = random_() < online_share
                hour = _pick(self.online_hours if online else self.pos_hours, random_())
                millisecond = int(random_() * 3_600_000)
                micros = (
                    self.start_micros
                    + int(moment) * MICROS_PER_DAY
                    + hour * 3_600_000_000
                    + millisecond * 1000
                )
                append((micros << 25) | (customer << 1) | online)
        keys.sort()
        return keys

    def _purchase_days(self, mean_gap: float, random_: Any, expovariate: Any) -> list[float]:
        """Purchase moments (days from the first day) of one customer, at least one in the window.

        A customer starts buying at a seasonal moment in [-HISTORY_DAYS, days),
        buys again at seasonally thinned exponential gaps while active, and
        lapses after an exponential active period. Only moments inside the
        window are kept; a customer with none is drawn again, so every
        customer appears in the output.
        """
        days, history, season_by_day, peak = self.days, HISTORY_DAYS, self.season, self.peak
        span = days + history
        rate = peak / mean_gap if mean_gap else 0.0
        while True:
            while True:
                first = random_() * span - history
                if random_() * peak < season_by_day[int(first + history)]:
                    break
            if not mean_gap:
                if first >= 0:
                    return [first]
                continue
            moments = [first] if first >= 0 else []
            last = min(float(days), first + expovariate(1.0 / MEAN_ACTIVE_DAYS))
            moment = first
            while True:
                moment += expovariate(rate)
                if moment >= last:
                    break
                if moment >= 0 and random_() * peak < season_by_day[int(moment) + history]:
                    moments.append(moment)
            if moments:
                return moments

    # -- phase 2: what they buy, in time order ----------------------------

    def events(self) -> Iterator[tuple[int, dict[str, Any]]]:
        keys = self.purchase_keys()
        pending_returns: list[tuple[int, int, dict[str, Any]]] = []
        mask = MAX_CUSTOMERS - 1
        end = self.end_micros
        for key in keys:
            micros = key >> 25
            while pending_returns and pending_returns[0][0] <= micros:
                when, _, spec = heapq.heappop(pending_returns)
                yield when, self._return(when, spec)
            customer = (key >> 1) & mask
            document, lines = self._purchase(micros, customer, bool(key & 1))
            self.report.purchases += 1
            yield micros, document
            channel = document["channel"]
            if self.rng.random() < RETURN_RATE[channel]:
                delay_days = self.rng.uniform(1, 30 if channel == "online" else 14)
                when = micros + int(delay_days * MICROS_PER_DAY) // 1000 * 1000
                if when < end:
                    spec = {"purchase": document, "lines": lines, "customer": customer}
                    heapq.heappush(pending_returns, (when, next(self.sequence), spec))
        while pending_returns:
            when, _, spec = heapq.heappop(pending_returns)
            yield when, self._return(when, spec)

    def _purchase(
        self, micros: int, customer: int, online: bool
    ) -> tuple[dict[str, Any], list[tuple[str, str, int, int, int]]]:
        rng = self.rng
        random_ = rng.random
        day = self.calendar[(micros - self.start_micros) // MICROS_PER_DAY]
        currency = self.currency[customer]
        rate = RATES_TO_EUR[currency]
        weights = self.category_weights[self.runner[customer]]
        discount_chance, percents = discount_policy(day, self.deal_seeker[customer])
        discounted = random_() < discount_chance
        percent = percents[int(random_() * len(percents))] if discounted else 0
        count = _pick(_LINE_COUNTS, random_())
        lines: list[tuple[str, str, int, int, int]] = []
        subtotal = discount_total = 0
        for index in range(count):
            category = self.categories[
                bisect.bisect(weights, random_() * weights[-1], hi=len(weights) - 1)
            ]
            skus = self.catalog[category]
            sku, eur_cents = skus[int(random_() * len(skus))]
            price = eur_cents if rate == 1.0 else _local_price(eur_cents, rate)
            quantity = 1 + int(random_() * CATALOG[category][3] * random_())
            value = quantity * price
            line_discount = 0
            if percent and (index == 0 or random_() < 0.7):
                line_discount = value * percent // 100
            lines.append((sku, category, quantity, price, line_discount))
            subtotal += value
            discount_total += line_discount
        if online and discounted and subtotal - discount_total > 5000 and random_() < 0.1:
            discount_total += 500  # an order-level voucher: not on any line
        total = subtotal - discount_total
        if online and total < 5000:
            total += 495  # shipping
        document: dict[str, Any] = {
            "event_id": "",
            "customer_id": _customer_id(customer),
            "occurred_at": format_instant(micros),
            "channel": "online" if online else "pos",
            "type": "purchase",
            "currency": currency,
            "total": _cents(total),
            "discount_total": _cents(discount_total),
        }
        if online:
            self.online_orders += 1
            document["event_id"] = f"web-{self.online_orders:08d}"
            document["order_id"] = f"W{self.online_orders:08d}"
        else:
            stores = STORES[currency]
            store = (
                self.store[customer] if random_() < 0.9 else stores[int(random_() * len(stores))]
            )
            document["event_id"] = self._receipt(store)
            document["store_id"] = store
        document["lines"] = [_line(*line) for line in lines]
        return document, lines

    def _return(self, micros: int, spec: dict[str, Any]) -> dict[str, Any]:
        purchase: dict[str, Any] = spec["purchase"]
        lines: list[tuple[str, str, int, int, int]] = spec["lines"]
        if len(lines) == 1 or self.rng.random() < FULL_RETURN_SHARE:
            returned, total, discount = lines, purchase["total"], purchase["discount_total"]
        else:
            line = self.rng.choice(lines)
            returned, total, discount = [line], _cents(line[2] * line[3] - line[4]), _cents(line[4])
        document: dict[str, Any] = {
            "event_id": "",
            "customer_id": purchase["customer_id"],
            "occurred_at": format_instant(micros),
            "channel": purchase["channel"],
            "type": "return",
            "currency": purchase["currency"],
            "total": total,
            "discount_total": discount,
            "original_event_id": purchase["event_id"],
        }
        if purchase["channel"] == "online":
            document["event_id"] = f"{purchase['event_id']}-r"
            document["order_id"] = purchase["order_id"]
        else:
            store = purchase["store_id"]
            document["event_id"] = self._receipt(store)
            document["store_id"] = store
        document["lines"] = [_line(*line) for line in returned]
        self.report.returns += 1
        return document

    def _receipt(self, store: str) -> str:
        self.receipts[store] += 1
        return f"pos-{store}-{self.receipts[store]:07d}"


def _make_dirty(
    clean: Iterator[tuple[int, dict[str, Any]]], rng: random.Random, report: GenerationReport
) -> Iterator[bytes]:
    """Duplicates, late deliveries and malformed records around a clean, time-ordered stream."""
    held: list[tuple[int, int, int, bytes, str]] = []  # (release, seq, occurred_at, raw, kind)
    sequence = itertools.count()
    latest = -(1 << 62)  # the largest occurred_at written so far
    malformed_kinds = itertools.cycle(MALFORMED_KINDS)

    def release(until: int) -> Iterator[bytes]:
        nonlocal latest
        while held and held[0][0] <= until:
            _, _, occurred_at, raw, kind = heapq.heappop(held)
            if kind == "duplicate":
                report.duplicates += 1
            elif occurred_at < latest:
                report.out_of_order += 1
            latest = max(latest, occurred_at)
            report.records += 1
            yield raw

    for occurred_at, document in clean:
        yield from release(occurred_at)
        raw = orjson.dumps(document)
        delivered_at = occurred_at
        if rng.random() < OUT_OF_ORDER_RATE:
            delivered_at += rng.randrange(600, 2 * 86_400) * 1_000_000
            heapq.heappush(held, (delivered_at, next(sequence), occurred_at, raw, "late"))
        else:
            latest = max(latest, occurred_at)
            report.records += 1
            yield raw
        if rng.random() < DUPLICATE_RATE:  # re-sent after the first delivery, never before
            delay = rng.randrange(0, 300) * 1_000_000
            heapq.heappush(
                held, (delivered_at + delay, next(sequence), occurred_at, raw, "duplicate")
            )
        if rng.random() < MALFORMED_RATE:
            kind = next(malformed_kinds)
            report.malformed[kind] += 1
            report.records += 1
            yield _malformed(kind, document, raw, rng)
    yield from release(1 << 62)


def _malformed(kind: str, document: dict[str, Any], raw: bytes, rng: random.Random) -> bytes:
    broken = dict(document, event_id=f"{document['event_id']}-bad")
    if kind == "invalid_json":
        return raw[: rng.randrange(1, len(raw) - 1)]  # a cut object never closes
    if kind == "missing_field":
        del broken[rng.choice(("customer_id", "occurred_at", "total", "currency"))]
    elif kind == "negative_amount":
        broken["total"] = "-" + broken["total"] if broken["total"] != "0.00" else "-1.00"
    elif kind == "naive_timestamp":
        broken["occurred_at"] = broken["occurred_at"].rstrip("Z")
    elif kind == "unknown_currency":
        broken["currency"] = "JPY"
    return orjson.dumps(broken)


# --------------------------------------------------------------------------
# Small helpers


def _catalog() -> dict[str, list[tuple[str, int]]]:
    """A fixed catalog (the same for every seed): SKUs with their EUR price in cents."""
    rng = random.Random(20_261_120)
    catalog = {}
    for number, (category, (_, _, prices, _)) in enumerate(CATALOG.items()):
        code = "".join(word[0] for word in category.split()).upper() + str(number)
        catalog[category] = [
            (f"{code}-{index:04d}", rng.choice(prices)) for index in range(SKUS_PER_CATEGORY)
        ]
    return catalog


def _local_price(eur_cents: int, rate: float) -> int:
    """An EUR price point in another currency, ending in 5 cents like the EUR ones."""
    return max(95, round(eur_cents / rate / 10) * 10 - 5)


def _cumulative(weights: dict[int, int]) -> tuple[list[float], list[int]]:
    values = list(weights)
    total = sum(weights.values())
    return list(itertools.accumulate(weights[value] / total for value in values)), values


def _cumulative_shares(shares: tuple[tuple[float, Any], ...]) -> tuple[list[float], list[Any]]:
    total = sum(share for share, _ in shares)
    return (
        list(itertools.accumulate(share / total for share, _ in shares)),
        [value for _, value in shares],
    )


_LINE_COUNTS = _cumulative_shares(tuple((share, count) for count, share in LINES_PER_ORDER))


def _pick(table: tuple[list[float], list[Any]], draw: float) -> Any:
    bounds, values = table
    return values[min(bisect.bisect(bounds, draw), len(values) - 1)]


def _customer_id(customer: int) -> str:
    return f"c-{customer + 1:07d}"


def _cents(cents: int) -> str:
    text = _CENTS.get(cents)
    if text is None:
        text = _CENTS[cents] = f"{cents // 100}.{cents % 100:02d}"
    return text


_CENTS: dict[int, str] = {}  # amounts repeat (price points); formatting is a third of the cost


def _line(sku: str, category: str, quantity: int, price: int, discount: int) -> dict[str, Any]:
    return {
        "sku": sku,
        "category": category,
        "quantity": quantity,
        "unit_price": _cents(price),
        "discount": _cents(discount),
    }
