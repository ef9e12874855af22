"""Segment membership: step(state, input) -> (state, changes), and the next time-driven deadline.

`segments replay` and the streaming worker both call step(); it owns every
rule of SPEC sections 2 to 4: dedupe, lateness, time-driven transitions due
before an event, event-driven transitions at max(event time, clock), change
sequence numbers, min_dwell and exit_when, and re-evaluation on a new version.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal

from segments.aggregates import (
    Adjustment,
    CategoryTotal,
    CustomerState,
    LineFilter,
    Membership,
    Order,
    RefundLine,
    add_adjustment,
    add_order,
    ensure_lifetime_keys,
    line_matches,
    note_return,
    prune,
    refund_order,
)
from segments.changes import ENTERED, EXITED, Change, TraitChange
from segments.clock import LAST_DAY, MICROS_PER_DAY
from segments.events import Purchase, Rejection, Return, _fast_constructor
from segments.money import to_base
from segments.rules.evaluator import CompiledRules

ZERO = Decimal(0)
_MAX_FLAG_SETS = 1 << 16
# Change is a frozen dataclass; about one is made per event (see events._fast_constructor).
_new_change = _fast_constructor(
    Change,
    (
        "customer_id",
        "segment",
        "change",
        "at",
        "cause",
        "event_id",
        "rules_version",
        "seq",
        "metrics",
    ),
)


@dataclass(frozen=True, slots=True)
class Tick:
    """The clock reached `at`: time-driven transitions due at or before it happen."""

    at: int


class DuplicateEvent(Exception):
    """The event id was already applied to this customer; applying it again changes nothing."""


Input = Purchase | Return | Tick
# What step() emits, in the order applied: segment changes and trait changes
AnyChange = Change | TraitChange


def new_state(customer_id: str, rules: CompiledRules) -> CustomerState:
    state = CustomerState(customer_id=customer_id, rules_version=rules.ruleset.version)
    ensure_lifetime_keys(
        state, rules.lifetime_keys, rules.lifetime_categories, rules.lifetime_items
    )
    return state


def step(
    state: CustomerState | None,
    item: Input,
    rules: CompiledRules,
    now: int,
    customer_id: str | None = None,
) -> tuple[CustomerState, list[AnyChange]]:
    """Apply one input at clock `now` (for an event: max(event time, clock)).

    Takes ownership of `state` (it is updated in place and returned). Raises
    DuplicateEvent or Rejection (reason too_late) without touching the state.
    """
    if state is None:
        if isinstance(item, Tick):
            raise ValueError("a tick needs an existing customer state")
        state = new_state(customer_id or item.customer_id, rules)
    changes: list[AnyChange] = []
    if isinstance(item, Tick):
        _advance(state, rules, item.at, changes)
        return state, changes

    if state.has_seen(item.event_id):
        raise DuplicateEvent(item.event_id)
    if item.occurred_at < now - rules.ruleset.max_lateness:
        raise Rejection(
            "too_late",
            f"occurred_at is older than max_lateness "
            f"({rules.ruleset.max_lateness // MICROS_PER_DAY}d) behind the clock",
        )
    # Convert money before anything changes: an unknown currency raises here.
    if isinstance(item, Purchase):
        order = _order_of(item, rules)
        _advance(state, rules, now, changes)
        index = state.index
        add_order(state, order)  # drops the index: update it instead of building it again
        if index is not None:
            state.index = rules.index_add(index, order)
        cause = "purchase"
    else:
        refund = _refund_of(item, rules)
        _advance(state, rules, now, changes)
        _apply_return(state, item, refund, rules)
        cause = "return"
    state.due = _evaluate(state, rules, now, cause, item.event_id, changes)
    today = rules.calendar.day_of(now)
    index = state.index
    prune(state, today - rules.horizon_days + 1, today - rules.seen_days, rules.lifetime_extremes)
    if index is not None and state.index is None:
        state.index = rules.index_prune(index, today - rules.horizon_days + 1)
    return state, changes


def _advance(
    state: CustomerState, rules: CompiledRules, now: int, changes: list[AnyChange]
) -> None:
    """Bring the state to `now`: a new rule version first, then every deadline due by `now`."""
    if state.rules_version != rules.ruleset.version:
        ensure_lifetime_keys(
            state, rules.lifetime_keys, rules.lifetime_categories, rules.lifetime_items
        )
        state.rules_version = rules.ruleset.version
        _exit_removed_segments(state, rules, now, changes)
        if state.traits:
            _clear_removed_traits(state, rules, now, changes)
        state.due = _evaluate(state, rules, now, "definition", None, changes)
    while state.due is not None and state.due <= now:
        due = state.due
        state.due = _evaluate(state, rules, due, "time", None, changes)


def _clear_removed_traits(
    state: CustomerState, rules: CompiledRules, at: int, changes: list[AnyChange]
) -> None:
    """A trait the new rule version no longer has: a customer with a value gets a last
    change to null (cause definition), as a member of a removed segment exits; its seq
    stays in the state so the trait's change ids never repeat if it comes back."""
    assert state.traits is not None
    current = {plan.name for plan in rules.trait_plan}
    for name, (value, seq) in sorted(state.traits.items()):
        if value is not None and name not in current:
            state.traits[name] = (None, seq + 1)
            changes.append(
                TraitChange(
                    state.customer_id,
                    name,
                    None,
                    at,
                    "definition",
                    None,
                    rules.ruleset.version,
                    seq + 1,
                )
            )


def _exit_removed_segments(
    state: CustomerState, rules: CompiledRules, at: int, changes: list[AnyChange]
) -> None:
    """A segment the new rule version no longer has: every member exits (cause definition).

    The exit keeps its seq in the state, so a segment of that name added back
    later continues the sequence and its change ids never repeat.
    """
    current = {name for _, name, _, _ in rules.segment_plan}
    for name, membership in sorted(state.memberships.items()):
        if membership.member and name not in current:
            seq = membership.seq + 1
            state.memberships[name] = Membership(False, seq, at)
            changes.append(
                Change(
                    customer_id=state.customer_id,
                    segment=name,
                    change=EXITED,
                    at=at,
                    cause="definition",
                    event_id=None,
                    rules_version=rules.ruleset.version,
                    seq=seq,
                )
            )


def _evaluate(
    state: CustomerState,
    rules: CompiledRules,
    at: int,
    cause: str,
    event_id: str | None,
    changes: list[AnyChange],
) -> int | None:
    """Evaluate the rules at `at` and apply what changed; returns the next deadline.

    The deadline is the first instant at which a flag can change (`flip`) when the
    memberships agree with the flags (settled); otherwise next_deadline(state, at),
    the next instant at which any metric can change (docs/decisions/0009).
    """
    today = rules.calendar.day_of(at)
    flags, values, flip = rules.assess(state, today, at)
    if rules.trait_plan:
        flip = _apply_traits(state, rules, flags, today, at, cause, event_id, changes, flip)
    # One shared tuple per distinct flags of these rules: a settled state keeps a
    # reference (8 bytes) instead of its own tuple, and identity means same rules too.
    flag_sets = rules.flag_sets
    flags = flag_sets.setdefault(flags, flags)
    settled = state.settled
    if settled is flags:
        return _deadline(state, rules, at, flip)  # the memberships agree with these flags
    plan = rules.segment_plan if settled is None else _changed_segments(rules, settled, flags)
    memberships = state.memberships
    get = memberships.get
    stable = True
    for index, name, has_exit_rule, min_dwell in plan:
        current = get(name)
        if current is None or not current.member:
            if not flags[2 * index]:
                continue
            seq = current.seq + 1 if current is not None else 1
            kind = ENTERED
            memberships[name] = Membership(True, seq, at)
            if has_exit_rule and flags[2 * index + 1]:
                stable = False  # the same flags make the new member leave
        else:
            leaving = flags[2 * index + 1] if has_exit_rule else not flags[2 * index]
            if not leaving:
                continue
            if min_dwell is not None and at < current.since + min_dwell:
                stable = False  # the same flags make it leave once the dwell is over
                continue  # the dwell expiry is a deadline of its own
            seq = current.seq + 1
            kind = EXITED
            memberships[name] = Membership(False, seq, at)
            if flags[2 * index]:
                stable = False  # the same flags make it enter again
        changes.append(
            _new_change(
                state.customer_id,
                name,
                kind,
                at,
                cause,
                event_id,
                rules.ruleset.version,
                seq,
                rules.metrics_of(index, values),
            )
        )
    # Flags equal to settled ones leave every segment as it is, whatever the instant:
    # entering reads only the flags, and leaving too unless a min_dwell holds it back.
    if stable:
        if len(flag_sets) > _MAX_FLAG_SETS:  # a bound for rule sets with very many segments
            flag_sets.clear()  # settled states then no longer match and are evaluated in full
            rules.flag_changes.clear()
            flag_sets[flags] = flags
        state.settled = flags
        return _deadline(state, rules, at, flip)
    state.settled = None
    return _deadline(state, rules, at, rules.next_day(state, today))


def _changed_segments(
    rules: CompiledRules, settled: tuple[bool, ...], flags: tuple[bool, ...]
) -> tuple[tuple[int, str, bool, int | None], ...]:
    """The segments whose flags differ between `settled` and `flags`, from segment_plan.

    The memberships agree with the settled flags (nothing would change, at any later
    instant), so a segment whose enter and exit flags are the same in both changes
    nothing now either: only the others need a look. One entry per pair of flag tuples
    seen, both shared tuples of these rules (flag_sets); an entry keeps both, so the
    identity checks hold only for the very tuples it was made for. A `settled` from
    other rules (a state evaluated before a rule reload) gets the whole plan.
    """
    changes = rules.flag_changes
    key = (settled, flags)
    entry = changes.get(key)
    if entry is not None and entry[0] is settled and entry[1] is flags:
        return entry[2]
    if rules.flag_sets.get(settled) is not settled:
        return rules.segment_plan
    plan = tuple(
        segment
        for segment in rules.segment_plan
        if settled[2 * segment[0]] != flags[2 * segment[0]]
        or settled[2 * segment[0] + 1] != flags[2 * segment[0] + 1]
    )
    if len(changes) > _MAX_FLAG_SETS:
        changes.clear()
    changes[key] = (settled, flags, plan)
    return plan


def _apply_traits(
    state: CustomerState,
    rules: CompiledRules,
    flags: tuple[bool, ...],
    today: int,
    at: int,
    cause: str,
    event_id: str | None,
    changes: list[AnyChange],
    flip: int | None,
) -> int | None:
    """Work out every trait from this evaluation and emit the changed ones; returns `flip`
    lowered to the first day a top_category can change (the cases' conditions are flags,
    so their days are already in it)."""
    traits = state.traits
    if traits is None:
        traits = state.traits = {}
    for plan in rules.trait_plan:
        if plan.days is None:
            value = plan.default
            first = plan.first
            for k, case_value in enumerate(plan.values):
                if flags[first + k]:
                    value = case_value
                    break
        else:
            value, day = top_category(state, today, plan.days)
            if day is not None and (flip is None or day < flip):
                flip = day
        current = traits.get(plan.name)
        if current is None:
            if value is None:
                continue  # no value yet and none now: nothing to say
            seq = 1
        elif current[0] == value:
            continue
        else:
            seq = current[1] + 1
        traits[plan.name] = (value, seq)
        changes.append(
            TraitChange(
                state.customer_id,
                plan.name,
                value,
                at,
                cause,
                event_id,
                rules.ruleset.version,
                seq,
            )
        )
    return flip


def top_category(state: CustomerState, today: int, days: int) -> tuple[str | None, int | None]:
    """The category with the most spend (the amounts of its lines, base currency, after
    refunds) in the counted orders of the last `days` days, ties by name, None when no
    category has spend above zero; and the first day after `today` on which that can
    change by time alone (an order leaves the window or an order dated later enters it)."""
    totals, change = category_spend(state, today, days)
    return top_of(totals), change


def category_spend(
    state: CustomerState, today: int, days: int
) -> tuple[dict[str, Decimal], int | None]:
    """Spend per category in the counted orders (net total > 0) of the last `days` days,
    and the first day after `today` on which time alone changes it; top_category's data,
    shared with explain so both read the same orders the same way."""
    oldest = today - days + 1
    totals: dict[str, Decimal] = {}
    change: int | None = None
    for order in state.orders:  # in day order
        if not order.net > ZERO:
            continue
        day = order.day
        if day > today:
            if change is None or day < change:
                change = day
            break
        if day < oldest:
            continue
        if change is None:
            change = day + days  # the oldest order in the window leaves it first
        if order.categories:
            for category, total in order.categories.items():
                totals[category] = totals.get(category, ZERO) + total.amount
    return totals, change


def top_of(totals: dict[str, Decimal]) -> str | None:
    """The category with the most spend above zero; a tie goes to the name that sorts first."""
    best: str | None = None
    most = ZERO
    for category, amount in totals.items():
        if amount > most or (amount == most and best is not None and category < best):
            best, most = category, amount
    return best


def _order_of(event: Purchase, rules: CompiledRules) -> Order:
    ruleset = rules.ruleset
    keep = rules.keep_categories
    categories: dict[str, CategoryTotal] | None = None
    discounted = event.discount_total > ZERO
    units = 0
    for line in event.lines:
        units += line.quantity
        if line.discount > ZERO:
            discounted = True
        if keep is None or line.category in keep:
            if categories is None:
                categories = {}
            amount = to_base(line.amount, event.currency, ruleset.base_currency, ruleset.rates)
            bucket = categories.get(line.category)
            if bucket is None:
                categories[line.category] = CategoryTotal(amount, line.quantity)
            else:
                bucket.amount += amount
                bucket.units += line.quantity
    line_totals: dict[LineFilter, CategoryTotal] | None = None
    if rules.keep_line_filters and event.lines:
        line_totals = _line_totals(event, rules)
    items = None
    if rules.keep_items and event.lines:
        items = tuple(
            dict.fromkeys((line.category, line.product, line.sku) for line in event.lines)
        )
    return Order(
        event_id=event.event_id,
        day=rules.calendar.day_of(event.occurred_at),
        channel=event.channel,
        net=to_base(event.total, event.currency, ruleset.base_currency, ruleset.rates),
        discounted=discounted,
        units=units,
        categories=categories,
        items=items,
        line_totals=line_totals,
    )


def _line_totals(event: Purchase, rules: CompiledRules) -> dict[LineFilter, CategoryTotal] | None:
    """Per product=/sku= filter of the rules, what the order's lines matching it cost."""
    ruleset = rules.ruleset
    totals: dict[LineFilter, CategoryTotal] = {}
    for line in event.lines:
        amount: Decimal | None = None
        for selector in rules.keep_line_filters:
            if not line_matches(line.category, line.product, line.sku, selector):
                continue
            if amount is None:
                amount = to_base(line.amount, event.currency, ruleset.base_currency, ruleset.rates)
            bucket = totals.get(selector)
            if bucket is None:
                totals[selector] = CategoryTotal(amount, line.quantity)
            else:
                bucket.amount += amount
                bucket.units += line.quantity
    return totals or None


Refund = tuple[Decimal, list[RefundLine]]  # amount, returned lines


def _refund_of(event: Return, rules: CompiledRules) -> Refund:
    ruleset = rules.ruleset
    amount = to_base(event.total, event.currency, ruleset.base_currency, ruleset.rates)
    lines = [
        (
            line.category,
            to_base(line.amount, event.currency, ruleset.base_currency, ruleset.rates),
            line.quantity,
            line.product,
            line.sku,
        )
        for line in event.lines
    ]
    return amount, lines


def _apply_return(
    state: CustomerState, event: Return, refund: Refund, rules: CompiledRules
) -> None:
    day = rules.calendar.day_of(event.occurred_at)
    amount, lines = refund
    original = state.find_order(event.original_event_id) if event.original_event_id else None
    if original is not None:
        refund_order(state, original, amount, lines)
    else:
        add_adjustment(state, Adjustment(event.event_id, day, event.channel, -amount))
    note_return(state, event.event_id, day)


def next_deadline(state: CustomerState, rules: CompiledRules, now: int) -> int | None:
    """The next instant after `now` at which time alone may change a segment, or None.

    Candidates are exact instants: 00:00 of the day a counted order leaves a
    window, 00:00 of the day a days-since value crosses a number it is compared
    with, and the instant a min_dwell expires. Between candidates no metric
    changes, so no transition can be missed; at a candidate step() evaluates
    and emits only what really changed.
    """
    return _deadline(state, rules, now, rules.next_day(state, rules.calendar.day_of(now)))


def _deadline(state: CustomerState, rules: CompiledRules, now: int, day: int | None) -> int | None:
    """next_deadline() once `day`, the first day on which time alone changes a metric, is known."""
    instant = rules.calendar.midnight(day) if day is not None and day <= LAST_DAY else None
    for _, name, _, min_dwell in rules.dwell_plan:
        current = state.memberships.get(name)
        if current is not None and current.member:
            expiry = current.since + min_dwell
            if expiry > now and (instant is None or expiry < instant):
                instant = expiry
    return instant
