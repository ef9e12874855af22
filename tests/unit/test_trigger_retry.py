"""Trigger retries: the backoff schedule, Retry-After, the offset tracker and their settings."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import format_datetime
from itertools import pairwise

import pytest

from streams.serving.triggers import DispatchConfig, OffsetTracker, RetrySchedule, parse_retry_after
from streams.settings import SettingsError, load_settings

pytestmark = pytest.mark.unit


def test_the_bound_doubles_from_the_first_delay_up_to_the_cap() -> None:
    schedule = RetrySchedule(first_s=0.5, max_delay_s=300.0, span_s=3600.0)
    assert [schedule.bound(n) for n in range(4)] == [0.5, 1.0, 2.0, 4.0]
    assert schedule.bound(9) == 256.0
    assert schedule.bound(10) == 300.0
    assert schedule.bound(10_000) == 300.0  # no overflow however long a call is retried


def test_full_jitter_spreads_each_delay_over_zero_to_its_bound() -> None:
    schedule = RetrySchedule(first_s=1.0, max_delay_s=60.0)
    rng = random.Random(7)
    for retry in (0, 3, 20):
        bound = schedule.bound(retry)
        delays = [schedule.delay(retry, rng) for _ in range(2000)]
        assert all(0.0 <= delay <= bound for delay in delays)
        # full jitter: the whole range is used, not a band near the bound
        assert min(delays) < 0.05 * bound and max(delays) > 0.95 * bound
        assert 0.45 * bound < sum(delays) / len(delays) < 0.55 * bound


def simulate(schedule: RetrySchedule, seed: int, attempt_s: float = 0.0) -> list[float]:
    """Start times of the attempts of a call that always fails, each taking `attempt_s`."""
    rng, now, starts = random.Random(seed), 0.0, []
    retry = 0
    while True:
        starts.append(now)
        now += attempt_s
        delay = schedule.next_delay(retry, remaining=schedule.span_s - now, rng=rng)
        if delay is None:
            return starts
        now += delay
        retry += 1


@pytest.mark.parametrize("seed", range(20))
def test_a_failing_call_is_retried_over_the_whole_span_and_no_longer(seed: int) -> None:
    schedule = RetrySchedule(first_s=1.0, max_delay_s=300.0, span_s=3600.0)
    starts = simulate(schedule, seed, attempt_s=0.01)
    assert starts[-1] == pytest.approx(3600.0)  # the last attempt is at the end of the span
    assert all(b - a <= 300.0 + 0.01 + 1e-9 for a, b in pairwise(starts))
    # roughly 10 doubling steps, then one attempt per 150 s on average: 20 to 50 in an hour
    assert 20 <= len(starts) <= 60


def test_a_receiver_down_for_minutes_is_still_tried_after_it_is_back() -> None:
    schedule = RetrySchedule(first_s=1.0, max_delay_s=300.0, span_s=3600.0)
    for seed in range(50):
        starts = simulate(schedule, seed)
        later = [start for start in starts if start >= 600.0]  # down for the first 10 min
        assert later and later[0] <= 600.0 + 300.0


def test_after_a_timeout_the_next_attempt_waits_at_least_the_timeout() -> None:
    schedule = RetrySchedule(first_s=0.05, max_delay_s=1.0, span_s=30.0)
    rng = random.Random(1)
    for _ in range(500):
        delay = schedule.next_delay(0, remaining=30.0, timed_out=True, timeout_s=0.4, rng=rng)
        assert delay is not None and 0.4 <= delay <= 1.0


def test_retry_after_is_a_lower_bound_and_ends_the_retries_past_the_span() -> None:
    schedule = RetrySchedule(first_s=0.05, max_delay_s=1.0, span_s=30.0)
    assert schedule.next_delay(0, remaining=30.0, retry_after=7.0) == 7.0
    assert schedule.next_delay(0, remaining=5.0, retry_after=7.0) is None
    assert schedule.next_delay(0, remaining=0.0) is None
    assert schedule.next_delay(20, remaining=0.25) <= 0.25  # clamped to the span's end


def test_retry_after_in_seconds_or_as_an_http_date() -> None:
    now = datetime(2026, 12, 2, 18, 0, 0, tzinfo=UTC).timestamp()
    assert parse_retry_after("120", now) == 120.0
    later = format_datetime(datetime(2026, 12, 2, 18, 0, 30, tzinfo=UTC), usegmt=True)
    assert parse_retry_after(later, now) == 30.0
    past = format_datetime(datetime(2026, 12, 2, 17, 0, 0, tzinfo=UTC), usegmt=True)
    assert parse_retry_after(past, now) == 0.0
    assert parse_retry_after(None, now) is None
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after("-5", now) is None


def test_offsets_are_committed_up_to_the_oldest_unfinished_record() -> None:
    tracker: OffsetTracker[str] = OffsetTracker()
    tracker.start("p0", 10)  # a call that keeps failing
    tracker.seen("p0", 11)  # no trigger for it
    tracker.start("p0", 12)
    tracker.start("p1", 5)
    tracker.finish("p0", 12)  # later changes finish first
    tracker.finish("p1", 5)
    assert tracker.committable() == {"p0": 10, "p1": 6}
    assert tracker.unfinished == 1
    tracker.committed({"p0": 10, "p1": 6})
    assert tracker.committable() == {}  # nothing moved
    tracker.finish("p0", 10)
    assert tracker.committable() == {"p0": 13}
    assert tracker.committable(["p1"]) == {}
    tracker.forget(["p0"])
    assert tracker.committable() == {} and tracker.unfinished == 0


def test_trigger_settings_take_durations(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SPAN", "DELAY", "MAX_DELAY"):
        monkeypatch.delenv(f"SEGMENTS_TRIGGER_RETRY_{name}", raising=False)
    monkeypatch.delenv("SEGMENTS_TRIGGER_CONCURRENCY", raising=False)
    monkeypatch.setenv("SEGMENTS_TRIGGER_TIMEOUT", "2.5")
    defaults = DispatchConfig.from_settings(load_settings(env_file=None))
    assert (defaults.retry_span_s, defaults.retry_first_s) == (3600.0, 1.0)
    assert (defaults.retry_max_delay_s, defaults.timeout_s) == (300.0, 2.5)
    assert defaults.concurrency == 16

    monkeypatch.setenv("SEGMENTS_TRIGGER_RETRY_SPAN", "30s")
    monkeypatch.setenv("SEGMENTS_TRIGGER_RETRY_DELAY", "50ms")
    monkeypatch.setenv("SEGMENTS_TRIGGER_RETRY_MAX_DELAY", "5m")
    monkeypatch.setenv("SEGMENTS_TRIGGER_TIMEOUT", "1h")
    monkeypatch.setenv("SEGMENTS_TRIGGER_CONCURRENCY", "4")
    config = DispatchConfig.from_settings(load_settings(env_file=None), max_age_s=60.0)
    assert config.schedule == RetrySchedule(first_s=0.05, max_delay_s=300.0, span_s=30.0)
    assert (config.timeout_s, config.concurrency, config.max_age_s) == (3600.0, 4, 60.0)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SEGMENTS_TRIGGER_RETRY_SPAN", "an hour"),
        ("SEGMENTS_TRIGGER_RETRY_SPAN", "0s"),
        ("SEGMENTS_TRIGGER_TIMEOUT", "-1"),
        ("SEGMENTS_TRIGGER_CONCURRENCY", "0"),
    ],
)
def test_bad_trigger_settings_are_named(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(SettingsError) as error:
        load_settings(env_file=None)
    (problem,) = error.value.problems
    assert problem.startswith(f"{variable}: must be a positive")
    assert repr(value) in problem


def test_serve_hands_the_trigger_settings_to_its_dispatcher(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from streams.serving.process import dispatch_config

    monkeypatch.setenv("SEGMENTS_TRIGGER_RETRY_SPAN", "2h")
    monkeypatch.setenv("SEGMENTS_TRIGGER_TIMEOUT", "3s")
    dispatch = dispatch_config(load_settings(env_file=None), 60.0)
    assert (dispatch.retry_span_s, dispatch.timeout_s, dispatch.max_age_s) == (7200.0, 3.0, 60.0)
    monkeypatch.delenv("SEGMENTS_TRIGGER_RETRY_SPAN")
    monkeypatch.delenv("SEGMENTS_TRIGGER_TIMEOUT")
    # Built by hand, the dispatcher has the settings' defaults, not defaults of its own.
    assert dispatch_config(load_settings(env_file=None)) == DispatchConfig()
