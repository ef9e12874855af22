"""step() and next_deadline(): window edges, deadlines, returns, dedupe, guards, versions."""

from __future__ import annotations

from decimal import Decimal

import pytest

from segments.aggregates import state_from_bytes, state_to_bytes
from segments.changes import Change
from segments.clock import parse_instant
from segments.engine import Engine, MemoryStates
from segments.events import Line, Purchase, Rejection, Return
from segments.membership import DuplicateEvent, Tick, next_deadline, step
from segments.rules.evaluator import CompiledRules, compile_rules
from segments.rules.ruleset import load_ruleset, parse_ruleset

pytestmark = pytest.mark.unit


def t(text: str) -> int:
    return parse_instant(text.replace("Z", "+00:00"))


def rules_of(segments_yaml: str, **extra: str) -> CompiledRules:
    head = "".join(f"{k}: {v}\n" for k, v in extra.items())
    text = (
        f"version: 1\nbase_currency: EUR\nrates: {{USD: '0.5'}}\n{head}segments:\n{segments_yaml}"
    )
    return compile_rules(parse_ruleset(text, "test.yaml"))


def buy(
    event_id: str,
    at: str,
    total: str = "10.00",
    *,
    customer: str = "c1",
    channel: str = "pos",
    currency: str = "EUR",
    discount: str = "0",
    lines: tuple[Line, ...] = (),
) -> Purchase:
    return Purchase(
        event_id, customer, t(at), channel, currency, Decimal(total), Decimal(discount), lines
    )


def refund(
    event_id: str, at: str, total: str, original: str | None, lines: tuple[Line, ...] = ()
) -> Return:
    return Return(event_id, "c1", t(at), "pos", "EUR", Decimal(total), Decimal(0), original, lines)


def run(rules: CompiledRules, events: list[Purchase | Return], as_of: str) -> list[Change]:
    out: list[Change] = []
    engine = Engine(rules, MemoryStates(out.extend))
    for event in sorted(events, key=lambda e: e.occurred_at):
        engine.apply(event)
    engine.advance(t(as_of))
    return out


def brief(changes: list[Change]) -> list[tuple[str, str, str, str]]:
    from segments.changes import format_instant

    return [(c.segment, c.change, format_instant(c.at), c.cause) for c in changes]


WINDOW = rules_of('  - name: recent\n    when: orders(within="7d") >= 1\n')


def test_an_order_counts_on_the_last_day_of_its_window_and_leaves_at_the_next_midnight() -> None:
    changes = run(WINDOW, [buy("e1", "2024-03-01T23:59:59Z")], "2024-03-20T00:00:00Z")
    assert brief(changes) == [
        ("recent", "entered", "2024-03-01T23:59:59Z", "purchase"),
        # covered days 03-01 .. 03-07; 03-08 is the first day without it
        ("recent", "exited", "2024-03-08T00:00:00Z", "time"),
    ]


def test_as_of_is_inclusive_and_one_microsecond_earlier_is_not() -> None:
    events = [buy("e1", "2024-03-01T12:00:00Z")]
    assert len(run(WINDOW, events, "2024-03-08T00:00:00Z")) == 2
    assert len(run(WINDOW, events, "2024-03-07T23:59:59.999999Z")) == 1


def test_next_deadline_is_the_exact_window_edge() -> None:
    state, _ = step(None, buy("e1", "2024-03-01T12:00:00Z"), WINDOW, t("2024-03-01T12:00:00Z"))
    assert next_deadline(state, WINDOW, t("2024-03-01T12:00:00Z")) == t("2024-03-08T00:00:00Z")
    assert state.due == t("2024-03-08T00:00:00Z")


def test_a_tick_before_the_deadline_changes_nothing_and_at_it_exits() -> None:
    state, _ = step(None, buy("e1", "2024-03-01T12:00:00Z"), WINDOW, t("2024-03-01T12:00:00Z"))
    state, early = step(state, Tick(t("2024-03-07T23:59:59Z")), WINDOW, t("2024-03-07T23:59:59Z"))
    assert early == []
    state, due = step(state, Tick(t("2024-03-09T05:00:00Z")), WINDOW, t("2024-03-09T05:00:00Z"))
    # the change carries the due instant, not the moment the tick noticed it
    assert brief(due) == [("recent", "exited", "2024-03-08T00:00:00Z", "time")]


def test_season_filter_wraps_the_new_year() -> None:
    rules = rules_of(
        '  - name: winter\n    when: orders(season="12-20..01-05", within="400d") >= 1\n'
    )
    inside = run(rules, [buy("e1", "2023-01-05T10:00:00Z")], "2023-01-06T00:00:00Z")
    also_inside = run(rules, [buy("e1", "2023-12-20T10:00:00Z")], "2023-12-21T00:00:00Z")
    outside = run(rules, [buy("e1", "2023-01-06T10:00:00Z")], "2023-01-07T00:00:00Z")
    assert [c.change for c in inside] == ["entered"]
    assert [c.change for c in also_inside] == ["entered"]
    assert outside == []


def test_a_return_that_zeroes_an_order_makes_it_stop_counting() -> None:
    rules = rules_of("  - name: buyer\n    when: orders() >= 1\n")
    changes = run(
        rules,
        [
            buy("e1", "2024-01-01T10:00:00Z", "30.00"),
            refund("r1", "2024-01-03T10:00:00Z", "30.00", "e1"),
        ],
        "2024-01-04T00:00:00Z",
    )
    assert brief(changes) == [
        ("buyer", "entered", "2024-01-01T10:00:00Z", "purchase"),
        ("buyer", "exited", "2024-01-03T10:00:00Z", "return"),
    ]
    assert changes[1].event_id == "r1"


def test_a_partial_return_lowers_spend_and_keeps_the_order() -> None:
    rules = rules_of(
        "  - name: big\n    when: spend() >= 50\n  - name: buyer\n    when: orders() >= 1\n"
    )
    changes = run(
        rules,
        [
            buy("e1", "2024-01-01T10:00:00Z", "60.00"),
            refund("r1", "2024-01-02T10:00:00Z", "20.00", "e1"),
        ],
        "2024-01-03T00:00:00Z",
    )
    assert [(c.segment, c.change) for c in changes] == [
        ("big", "entered"),
        ("buyer", "entered"),
        ("big", "exited"),
    ]


def test_a_return_of_an_unknown_order_lowers_spend_on_its_own_day_only() -> None:
    rules = rules_of('  - name: big\n    when: spend(within="2d") >= 50\n')
    changes = run(
        rules,
        [
            buy("e1", "2024-01-01T10:00:00Z", "60.00"),
            refund("r1", "2024-01-05T10:00:00Z", "20.00", "nope"),
            buy("e2", "2024-01-06T10:00:00Z", "60.00"),
        ],
        "2024-01-10T00:00:00Z",
    )
    # day 05: -20; day 06: +60 -> 40 over 05..06 (not big); day 07 covers 06..07 -> 60
    assert brief(changes) == [
        ("big", "entered", "2024-01-01T10:00:00Z", "purchase"),
        ("big", "exited", "2024-01-03T00:00:00Z", "time"),
        ("big", "entered", "2024-01-07T00:00:00Z", "time"),
        ("big", "exited", "2024-01-08T00:00:00Z", "time"),
    ]


def test_category_spend_and_units_count_only_that_categorys_lines_and_returns_lower_them() -> None:
    rules = rules_of(
        '  - name: runner\n    when: spend(category="Running Shoes") >= 100\n'
        "  - name: many\n    when: units() >= 3\n"
    )
    shoes = Line("s1", "Running Shoes", 1, Decimal("120.00"), Decimal("0"))
    socks = Line("s2", "Socks", 2, Decimal("5.00"), Decimal("0"))
    changes = run(
        rules,
        [
            buy("e1", "2024-01-01T10:00:00Z", "130.00", lines=(shoes, socks)),
            refund("r1", "2024-01-02T10:00:00Z", "120.00", "e1", lines=(shoes,)),
        ],
        "2024-01-03T00:00:00Z",
    )
    assert [(c.segment, c.change, c.cause) for c in changes] == [
        ("runner", "entered", "purchase"),
        ("many", "entered", "purchase"),
        ("runner", "exited", "return"),
        ("many", "exited", "return"),
    ]


def test_currency_is_converted_with_the_rate_table() -> None:
    rules = rules_of("  - name: big\n    when: spend() >= 50\n")
    assert (
        run(
            rules,
            [buy("e1", "2024-01-01T10:00:00Z", "99.98", currency="USD")],
            "2024-01-02T00:00:00Z",
        )
        == []
    )
    assert (
        len(
            run(
                rules,
                [buy("e1", "2024-01-01T10:00:00Z", "100.00", currency="USD")],
                "2024-01-02T00:00:00Z",
            )
        )
        == 1
    )


def test_a_duplicate_event_id_raises_and_changes_nothing() -> None:
    rules = rules_of("  - name: two\n    when: orders() >= 2\n")
    now = t("2024-01-01T10:00:00Z")
    state, _ = step(None, buy("e1", "2024-01-01T10:00:00Z"), rules, now)
    before = state_to_bytes(state)
    with pytest.raises(DuplicateEvent):
        step(state, buy("e1", "2024-01-01T10:00:00Z", channel="online"), rules, now)
    assert state_to_bytes(state) == before
    state, _changes = step(state, refund("r1", "2024-01-01T11:00:00Z", "1.00", "e1"), rules, now)
    with pytest.raises(DuplicateEvent):
        step(state, refund("r1", "2024-01-01T11:00:00Z", "1.00", "e1"), rules, now)


def test_an_event_older_than_max_lateness_is_rejected() -> None:
    rules = rules_of("  - name: buyer\n    when: orders() >= 1\n", max_lateness="2d")
    with pytest.raises(Rejection) as raised:
        step(None, buy("e1", "2024-01-01T10:00:00Z"), rules, t("2024-01-03T10:00:01Z"))
    assert raised.value.reason == "too_late"


def test_a_late_event_is_applied_to_its_own_day_and_evaluated_at_the_clock() -> None:
    now = t("2024-03-10T12:00:00Z")
    state, changes = step(None, buy("e1", "2024-03-05T12:00:00Z"), WINDOW, now)
    assert brief(changes) == [("recent", "entered", "2024-03-10T12:00:00Z", "purchase")]
    assert state.due == t("2024-03-12T00:00:00Z")  # 03-05 leaves the 7-day window
    state, changes = step(state, buy("e0", "2024-03-02T12:00:00Z"), WINDOW, now)
    assert changes == []  # already outside the window at the clock


def test_min_dwell_holds_an_exit_until_it_expires() -> None:
    rules = rules_of('  - name: recent\n    when: orders(within="2d") >= 1\n    min_dwell: 5d\n')
    changes = run(rules, [buy("e1", "2024-01-01T10:00:00Z")], "2024-01-10T00:00:00Z")
    assert brief(changes) == [
        ("recent", "entered", "2024-01-01T10:00:00Z", "purchase"),
        ("recent", "exited", "2024-01-06T10:00:00Z", "time"),
    ]


def test_exit_when_gives_hysteresis() -> None:
    rules = rules_of(
        '  - name: vip\n    when: orders(within="10d") >= 2\n'
        '    exit_when: orders(within="10d") == 0\n'
    )
    changes = run(
        rules,
        [buy("e1", "2024-01-01T10:00:00Z"), buy("e2", "2024-01-05T10:00:00Z")],
        "2024-02-01T00:00:00Z",
    )
    # with a plain rule it would leave on 01-11 (one order left); it stays until none
    assert brief(changes) == [
        ("vip", "entered", "2024-01-05T10:00:00Z", "purchase"),
        ("vip", "exited", "2024-01-15T00:00:00Z", "time"),
    ]


def test_days_since_uses_local_midnights_of_the_rule_sets_timezone() -> None:
    rules = rules_of(
        "  - name: quiet\n    when: days_since_last_purchase() > 1\n", timezone="Europe/Berlin"
    )
    # 23:30Z on 01-01 is 00:30 on 01-02 in Berlin: quiet from Berlin 01-04 00:00 = 01-03T23:00Z
    changes = run(rules, [buy("e1", "2024-01-01T23:30:00Z")], "2024-01-05T00:00:00Z")
    assert brief(changes) == [("quiet", "entered", "2024-01-03T23:00:00Z", "time")]


def test_a_new_rule_version_re_evaluates_with_cause_definition() -> None:
    v1 = rules_of("  - name: buyer\n    when: orders() >= 2\n")
    state, changes = step(None, buy("e1", "2024-01-01T10:00:00Z"), v1, t("2024-01-01T10:00:00Z"))
    assert changes == []
    v2_text = (
        "version: 2\nbase_currency: EUR\nsegments:\n  - name: buyer\n    when: orders() >= 1\n"
    )
    v2 = compile_rules(parse_ruleset(v2_text, "v2.yaml"))
    now = t("2024-01-02T09:00:00Z")
    state, changes = step(state, Tick(now), v2, now)
    assert [(c.change, c.cause, c.rules_version, c.at) for c in changes] == [
        ("entered", "definition", 2, now)
    ]


def test_seq_and_change_id_count_transitions_per_customer_and_segment() -> None:
    changes = run(
        WINDOW,
        [buy("e1", "2024-01-01T10:00:00Z"), buy("e2", "2024-02-01T10:00:00Z")],
        "2024-03-01T00:00:00Z",
    )
    assert [c.change_id for c in changes] == [
        "c1:recent:1",
        "c1:recent:2",
        "c1:recent:3",
        "c1:recent:4",
    ]


EXAMPLE = compile_rules(load_ruleset("segments/data/example_rules.yaml"))


def _five_order_customer() -> tuple[object, int]:
    state = None
    now = 0
    for n, (day, category) in enumerate(
        [
            ("01", "Running Shoes"),
            ("09", "Books"),
            ("17", "Music"),
            ("20", "Books"),
            ("28", "Music"),
        ]
    ):
        event = buy(
            f"pos-0001-{n:06d}",
            f"2024-01-{day}T12:00:00Z",
            "54.99",
            customer="cust-000042",
            discount="5.00" if n == 2 else "0",
            lines=(Line(f"sku-{n}", category, 1, Decimal("54.99"), Decimal("0")),),
        )
        now = event.occurred_at
        state, _ = step(state, event, EXAMPLE, now)
    return state, now


def test_state_round_trips_through_bytes() -> None:
    state, now = _five_order_customer()
    data = state_to_bytes(state)  # type: ignore[arg-type]
    again = state_from_bytes("cust-000042", data)
    assert again == state
    assert state_to_bytes(again) == data
    assert next_deadline(again, EXAMPLE, now) == next_deadline(state, EXAMPLE, now)  # type: ignore[arg-type]


# A state as the worker's table stores it (format 1, written by the code before the
# encoder's fast path for plain orders): orders with and without categories, items and
# line totals, a trimmed lifetime row, memberships and a trait.
STORED_FORMAT_1 = (
    b'[1,3,1718236800000000,[["e1",19800,0,"54.99",1,2,{"Running Shoes":["49.99",1]}],'
    b'["e2",19810,1,"10.1200",0,1],["e3",19811,1,"7",0,1,null,[["Tees","tee-1","tee-1-red"]],'
    b'[[null,"tee-1",null,"7.00",1]]]],[["r9",19805,0,"-3.5000"]],[["r9",19805]],'
    b'[["||",3,"72.11",4,1,19700,19811,19700,null,"1.5","99.99"],'
    b'["online||",2,"17.12",2,0,19810,19811]],'
    b'{"vip":[1,1,1710000000000000],"win_back":[0,2,1711000000000000]},'
    b'{"lifecycle":["active",2]}]'
)


def test_a_stored_format_1_state_decodes_and_encodes_to_the_same_bytes() -> None:
    state = state_from_bytes("c1", STORED_FORMAT_1)
    first, plain, with_lines = state.orders
    assert (plain.event_id, plain.day, plain.channel, plain.net) == (
        "e2",
        19810,
        "online",
        Decimal("10.1200"),
    )
    assert str(plain.net) == "10.1200"  # the exponent survives: outputs print it
    assert plain.categories is None and plain.items is None and plain.line_totals is None
    assert first.discounted and first.categories is not None
    assert first.categories["Running Shoes"].amount == Decimal("49.99")
    assert with_lines.items == (("Tees", "tee-1", "tee-1-red"),)
    assert with_lines.line_totals is not None
    assert with_lines.line_totals[(None, "tee-1", None)].amount == Decimal("7.00")
    lifetime = state.lifetime[(None, None, None)]
    assert (lifetime.pruned_least, lifetime.pruned_most) == (Decimal("1.5"), Decimal("99.99"))
    assert state.lifetime[("online", None, None)].pruned_least is None
    assert state.adjustments[0].amount == Decimal("-3.5000")
    assert state.memberships["vip"].member and not state.memberships["win_back"].member
    assert state.traits == {"lifecycle": ("active", 2)}
    assert state_to_bytes(state) == STORED_FORMAT_1


def test_five_order_customer_fits_in_512_bytes_under_the_example_rules() -> None:
    state, _ = _five_order_customer()
    size = len(state_to_bytes(state))  # type: ignore[arg-type]
    assert size <= 512, size


def test_an_unknown_currency_is_rejected_before_the_state_changes() -> None:
    rules = rules_of('  - name: recent\n    when: orders(within="7d") >= 1\n')
    now = t("2024-03-01T12:00:00Z")
    state, _ = step(None, buy("e1", "2024-03-01T12:00:00Z"), rules, now)
    before = state_to_bytes(state)
    later = t("2024-03-09T12:00:00Z")  # the exit is due at 03-08: not applied on a rejection
    with pytest.raises(Rejection) as raised:
        step(state, buy("e2", "2024-03-09T12:00:00Z", currency="JPY"), rules, later)
    assert raised.value.reason == "unknown_currency"
    assert state_to_bytes(state) == before


def test_a_state_evaluated_under_other_compiled_rules_is_not_misread() -> None:
    # The order index a state keeps between steps belongs to the rules that built it.
    spend = rules_of('  - name: spender\n    when: spend(within="30d") >= 15\n')
    state, _ = step(
        None, buy("e1", "2024-03-01T12:00:00Z", "10.00"), WINDOW, t("2024-03-01T12:00:00Z")
    )
    state, _ = step(
        state, buy("e2", "2024-03-02T12:00:00Z", "10.00"), WINDOW, t("2024-03-02T12:00:00Z")
    )
    flags, values = spend.evaluate(state, spend.calendar.day_of(t("2024-03-03T00:00:00Z")))
    assert values == (Decimal("20.00"),)
    assert flags == (True, False)


def test_a_refund_and_pruning_are_seen_by_the_next_evaluation() -> None:
    spend = rules_of('  - name: spender\n    when: spend(within="30d") >= 15\n')
    day = spend.calendar.day_of
    state, _ = step(
        None, buy("e1", "2024-03-01T12:00:00Z", "10.00"), spend, t("2024-03-01T12:00:00Z")
    )
    state, _ = step(
        state, buy("e2", "2024-03-02T12:00:00Z", "10.00"), spend, t("2024-03-02T12:00:00Z")
    )
    assert spend.evaluate(state, day(t("2024-03-03T00:00:00Z")))[1] == (Decimal("20.00"),)
    state, changes = step(
        state, refund("r1", "2024-03-03T12:00:00Z", "4.00", "e2"), spend, t("2024-03-03T12:00:00Z")
    )
    assert [c.change for c in changes] == []
    assert spend.evaluate(state, day(t("2024-03-03T12:00:00Z")))[1] == (Decimal("16.00"),)
    later = t("2024-05-01T12:00:00Z")
    state, _ = step(state, buy("e3", "2024-05-01T12:00:00Z", "1.00"), spend, later)
    assert [o.event_id for o in state.orders] == ["e3"]
    assert spend.evaluate(state, day(later))[1] == (Decimal("1.00"),)
    assert next_deadline(state, spend, later) == t("2024-05-31T00:00:00Z")


def test_flags_that_both_enter_and_exit_toggle_the_segment_at_each_evaluation() -> None:
    # Re-evaluating unchanged flags may still change a segment: here entering and
    # leaving hold together, so each evaluation flips the membership.
    toggle = rules_of(
        '  - name: toggle\n    when: orders(within="30d") >= 1\n'
        '    exit_when: orders(within="30d") >= 1\n'
    )
    changes = run(
        toggle,
        [buy("e1", "2024-03-01T12:00:00Z"), buy("e2", "2024-03-02T12:00:00Z"),
         buy("e3", "2024-03-03T12:00:00Z")],
        "2024-03-04T00:00:00Z",
    )  # fmt: skip
    assert [(c.change, c.event_id) for c in changes] == [
        ("entered", "e1"),
        ("exited", "e2"),
        ("entered", "e3"),
    ]


@pytest.mark.parametrize(
    ("text", "micros"),
    [
        ("2026-11-20T00:00:00Z", 1_795_132_800_000_000),
        ("2026-11-20T14:03:11Z", 1_795_183_391_000_000),
        ("2026-11-20T14:03:11.120Z", 1_795_183_391_120_000),
        ("2026-11-20T14:03:11.000001Z", 1_795_183_391_000_001),
        ("1969-12-31T23:59:59.999Z", -1_000),
    ],
)
def test_format_instant_shows_milliseconds_only_when_needed(text: str, micros: int) -> None:
    from segments.changes import format_instant

    assert t(text) == micros
    assert format_instant(micros) == text


def test_an_or_of_two_false_sides_changes_with_the_first_that_turns() -> None:
    # a version-1 rule: the `or` holds from 01-12 (11 days after the last purchase), not
    # from 02-01 when its other side turns too (the flip day of a false `or` was the
    # latest of its sides' days instead of the earliest)
    rules = rules_of(
        "  - name: x\n"
        "    when: days_since_last_purchase() > 10 or days_since_first_purchase() > 30\n"
        "  - name: y\n"
        "    when: not (days_since_last_purchase() <= 10 and days_since_first_purchase() <= 30)\n"
    )
    assert brief(run(rules, [buy("e1", "2024-01-01T10:00:00Z")], "2024-03-01T00:00:00Z")) == [
        ("x", "entered", "2024-01-12T00:00:00Z", "time"),
        ("y", "entered", "2024-01-12T00:00:00Z", "time"),
    ]


def test_a_customer_with_many_records_finds_duplicates_in_its_sorted_ids() -> None:
    rules = rules_of('  - name: recent\n    when: orders(within="30d") >= 1\n')
    state = None
    ids = [f"e{n:02d}" for n in (7, 3, 11, 1, 9, 5, 12, 2, 10, 4, 8, 6)]  # ids not in time order
    for day, event_id in enumerate(ids, start=1):
        event = buy(event_id, f"2024-01-{day:02d}T12:00:00Z")
        state, _ = step(state, event, rules, event.occurred_at)
    state, _ = step(
        state, refund("r1", "2024-01-13T12:00:00Z", "1.00", "e03"), rules, t("2024-01-13T12:00:00Z")
    )
    assert state.seen_ids == sorted([*ids, "r1"])  # built past 8 records, kept up to date
    for event_id in ("e03", "e06", "r1"):
        with pytest.raises(DuplicateEvent):
            step(state, buy(event_id, "2024-01-14T12:00:00Z"), rules, t("2024-01-14T12:00:00Z"))
    # 40 days later the first orders are pruned (a 30-day horizon): their ids go too
    later = buy("e99", "2024-02-22T12:00:00Z")
    state, _ = step(state, later, rules, later.occurred_at)
    kept = {o.event_id for o in state.orders} | {r[0] for r in state.returns_seen}
    assert len(kept) < len(ids) + 2
    assert state.seen_ids == sorted(kept)
