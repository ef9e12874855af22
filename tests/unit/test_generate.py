"""The synthetic traffic generator: canonical, deterministic, realistic, and dirty on request."""

from __future__ import annotations

import gzip
from collections import Counter, defaultdict
from datetime import date
from functools import cache
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner

from segments.events import Purchase, Rejection, Return, decode_event, encode_event
from segments.generate import MALFORMED_KINDS, GenerationReport, generate_events
from streams.cli.generate import generate_command

pytestmark = pytest.mark.unit

CURRENCIES = frozenset({"EUR", "USD", "GBP"})  # the example rule set
DAY = 86_400_000_000
START = date(2025, 1, 1)
START_MICROS = 1_735_689_600_000_000  # 2025-01-01T00:00:00Z


@cache
def year() -> tuple[list[bytes], GenerationReport]:
    report = GenerationReport()
    return list(generate_events(6000, 365, seed=11, start=START, report=report)), report


@cache
def decoded_year() -> list[Purchase | Return]:
    events = []
    for raw in year()[0]:
        event = decode_event(raw, CURRENCIES)
        assert isinstance(event, Purchase | Return)
        events.append(event)
    return events


@cache
def dirty_run() -> tuple[list[bytes], GenerationReport]:
    report = GenerationReport()
    return list(generate_events(12000, 365, seed=5, dirty=True, report=report)), report


def purchases_by_customer() -> dict[str, list[Purchase]]:
    grouped: dict[str, list[Purchase]] = defaultdict(list)
    for event in decoded_year():
        if isinstance(event, Purchase):
            grouped[event.customer_id].append(event)
    return grouped


def day_of(event: Purchase | Return) -> int:
    return (event.occurred_at - START_MICROS) // DAY


# --- canonical and deterministic ---------------------------------------------


def test_the_same_seed_gives_the_same_bytes_and_another_seed_does_not() -> None:
    first = list(generate_events(300, 120, seed=3))
    assert first == list(generate_events(300, 120, seed=3))
    assert first != list(generate_events(300, 120, seed=4))
    assert list(generate_events(300, 120, seed=3, dirty=True)) == list(
        generate_events(300, 120, seed=3, dirty=True)
    )


def test_every_event_is_canonical_and_decodes_with_the_example_currencies() -> None:
    raws, _ = year()
    for raw, event in zip(raws, decoded_year(), strict=True):
        assert encode_event(event) == raw  # already in canonical form


def test_output_is_sorted_by_occurred_at_within_the_requested_days() -> None:
    instants = [event.occurred_at for event in decoded_year()]
    assert instants == sorted(instants)
    assert instants[0] >= START_MICROS and instants[-1] < START_MICROS + 365 * DAY


def test_event_ids_are_unique_and_returns_name_an_earlier_purchase_of_the_customer() -> None:
    events = decoded_year()
    assert len({event.event_id for event in events}) == len(events)
    purchases: dict[str, Purchase] = {}
    for event in events:
        if isinstance(event, Purchase):
            purchases[event.event_id] = event
            continue
        original = purchases[event.original_event_id or ""]
        assert original.customer_id == event.customer_id
        assert original.occurred_at < event.occurred_at
        assert original.channel == event.channel and original.currency == event.currency
        assert 0 < event.total <= original.total


def test_the_report_counts_what_was_generated() -> None:
    raws, report = year()
    events = decoded_year()
    assert report.records == len(raws) == report.events
    assert report.returns == sum(isinstance(event, Return) for event in events)
    assert report.customers == 6000
    assert "purchases" in report.summary() and "injected" not in report.summary()


def test_bad_arguments_are_refused_before_generating() -> None:
    with pytest.raises(ValueError, match="customers"):
        generate_events(0, 10, seed=1)
    with pytest.raises(ValueError, match="days"):
        generate_events(10, 0, seed=1)


# --- a realistic distribution ------------------------------------------------


def test_most_customers_buy_once_or_twice_and_a_few_buy_often() -> None:
    counts = [len(orders) for orders in purchases_by_customer().values()]
    assert len(counts) == 6000  # everyone buys at least once
    repeat = sum(count >= 2 for count in counts) / len(counts)
    once_or_twice = sum(count <= 2 for count in counts) / len(counts)
    frequent = sum(count >= 10 for count in counts) / len(counts)
    assert 0.30 <= repeat <= 0.60
    assert once_or_twice >= 0.65
    assert 0.01 <= frequent <= 0.10


def test_customers_lapse() -> None:
    early_regulars = [
        orders
        for orders in purchases_by_customer().values()
        if len(orders) >= 3 and day_of(orders[0]) < 90
    ]
    lapsed = [orders for orders in early_regulars if day_of(orders[-1]) < 365 - 90]
    assert len(early_regulars) >= 200
    assert len(lapsed) / len(early_regulars) >= 0.3


def test_january_sales_and_the_december_peak() -> None:
    per_day: Counter[int] = Counter(
        day_of(event) for event in decoded_year() if isinstance(event, Purchase)
    )
    jan_1, feb_15, mar_1, nov_1, dec_10, dec_24 = 0, 45, 59, 304, 343, 357

    def rate(first: int, last: int) -> float:
        return sum(per_day[day] for day in range(first, last)) / (last - first)

    ordinary = rate(mar_1, nov_1)
    assert rate(jan_1, feb_15) >= 1.3 * ordinary
    assert rate(dec_10, dec_24) >= 1.8 * ordinary


def test_discounts_are_common_in_the_sales_and_rarer_otherwise() -> None:
    def discounted_share(first: int, last: int) -> float:
        orders = [
            event
            for event in decoded_year()
            if isinstance(event, Purchase) and first <= day_of(event) < last
        ]
        return sum(event.discount_total > 0 for event in orders) / len(orders)

    assert discounted_share(0, 45) >= 0.4
    assert 0.05 <= discounted_share(59, 304) <= 0.25
    line_discounted = [
        line for event in decoded_year() for line in event.lines if line.discount > 0
    ]
    assert line_discounted and all(line.amount >= 0 for line in line_discounted)


def test_returns_are_about_five_percent_some_full_some_partial() -> None:
    events = decoded_year()
    purchases = {event.event_id: event for event in events if isinstance(event, Purchase)}
    returns = [event for event in events if isinstance(event, Return)]
    assert 0.035 <= len(returns) / len(purchases) <= 0.07
    full = [
        event for event in returns if event.total == purchases[event.original_event_id or ""].total
    ]
    assert 0.2 <= len(full) / len(returns) <= 0.9


def test_both_channels_currencies_and_running_shoes() -> None:
    events = decoded_year()
    channels = Counter(event.channel for event in events)
    currencies = Counter(event.currency for event in events)
    categories = Counter(line.category for event in events for line in event.lines)
    assert min(channels["pos"], channels["online"]) >= 0.25 * len(events)
    assert currencies["EUR"] >= 0.8 * len(events)
    assert currencies["USD"] >= 0.02 * len(events) and currencies["GBP"] >= 0.02 * len(events)
    assert categories["Running Shoes"] >= 0.1 * sum(categories.values())
    assert all(event.store_id for event in events if event.channel == "pos")


# --- dirty mode ----------------------------------------------------------------


def test_dirty_mode_injects_known_proportions_and_reports_them_exactly() -> None:
    raws, report = dirty_run()
    clean = report.events
    assert 0.007 <= report.duplicates / clean <= 0.013
    assert 0.015 <= report.out_of_order / clean <= 0.025
    malformed = sum(report.malformed.values())
    assert 0.003 <= malformed / clean <= 0.007
    assert set(report.malformed) == set(MALFORMED_KINDS)
    assert report.records == len(raws) == clean + report.duplicates + malformed

    seen: set[bytes] = set()
    duplicates = out_of_order = 0
    latest = None
    rejected: Counter[str] = Counter()
    for raw in raws:
        try:
            event = decode_event(raw, CURRENCIES)
        except Rejection as rejection:
            rejected[rejection.reason] += 1
            continue
        assert isinstance(event, Purchase | Return)
        if raw in seen:
            duplicates += 1
            continue
        seen.add(raw)
        if latest is not None and event.occurred_at < latest:
            out_of_order += 1
        latest = event.occurred_at if latest is None else max(latest, event.occurred_at)
    assert duplicates == report.duplicates
    assert out_of_order == report.out_of_order
    assert rejected == report.malformed  # each malformed kind is rejected for that reason


def test_dirty_mode_keeps_every_clean_event() -> None:
    clean = set(generate_events(12000, 365, seed=5))
    raws, _ = dirty_run()
    assert clean <= set(raws)


# --- the command ---------------------------------------------------------------


def test_the_command_writes_gzip_files_and_reports_on_stderr(tmp_path: Path) -> None:
    out = tmp_path / "events.jsonl.gz"
    args = ["--customers", "200", "--days", "60", "--seed", "9", "--start", "2025-12-01"]
    result = CliRunner().invoke(generate_command, [*args, "--out", str(out), "--dirty"])
    assert result.exit_code == 0, result.output
    assert "injected:" in result.stderr
    lines = gzip.decompress(out.read_bytes()).splitlines()
    expected = list(generate_events(200, 60, seed=9, start=date(2025, 12, 1), dirty=True))
    assert lines == expected


def test_the_command_writes_plain_jsonl_to_stdout() -> None:
    result = CliRunner().invoke(generate_command, ["--customers", "50", "--days", "30"])
    assert result.exit_code == 0
    lines = result.stdout_bytes.splitlines()
    assert lines == list(generate_events(50, 30, seed=1))
    first: dict[str, Any] = orjson.loads(lines[0])
    assert first["occurred_at"].startswith("2025-01")
    assert "generated" in result.stderr
