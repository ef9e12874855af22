"""The worker's readiness decision and the limiter on repeated log lines."""

from __future__ import annotations

import io
import logging
import threading

from streams.log_rate import RepeatedMessageLimiter, limit_repeated_messages
from streams.worker.broker_probe import Readiness


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_ready_needs_recovery_assignment_no_rebalance_and_a_broker_that_answers() -> None:
    ready = Readiness(recovered=True, rebalancing=False, assigned=True, broker_silence=0.5)
    assert ready.ready and ready.body()["broker"] == "reachable"
    assert not Readiness(recovered=False, rebalancing=False, assigned=True, broker_silence=0).ready
    assert not Readiness(recovered=True, rebalancing=True, assigned=True, broker_silence=0).ready
    assert not Readiness(recovered=True, rebalancing=False, assigned=False, broker_silence=0).ready


def test_a_broker_silent_longer_than_the_limit_makes_the_worker_unready() -> None:
    at_limit = Readiness(True, False, True, broker_silence=5.0, silence_limit=5.0)
    assert at_limit.ready
    silent = Readiness(True, False, True, broker_silence=5.1, silence_limit=5.0)
    assert not silent.ready
    assert silent.body() == {
        "ready": False,
        "recovered": True,
        "rebalancing": False,
        "assigned": True,
        "broker": "unreachable",
        "broker_silence_seconds": 5.1,
    }


def _logger(limiter: RepeatedMessageLimiter) -> tuple[logging.Logger, io.StringIO, io.StringIO]:
    """A logger with two handlers, both limited: a record must be counted once, not twice."""
    root = logging.Logger("test-root")
    first, second = io.StringIO(), io.StringIO()
    for stream in (first, second):
        root.addHandler(logging.StreamHandler(stream))
    limit_repeated_messages(root, limiter)
    child = logging.Logger("aiokafka.client")
    child.parent = root
    return child, first, second


def test_a_repeated_error_is_written_once_per_window_with_the_count_held_back() -> None:
    clock = Clock()
    log, first, second = _logger(RepeatedMessageLimiter(window=10.0, clock=clock))
    for _ in range(1000):
        log.error("Unable connect to node with id %s: %s", 1, "refused")
        clock.now += 0.001
    log.error("Unable to update metadata from %s", [1])  # another template: its own window
    clock.now += 10.0
    log.error("Unable connect to node with id %s: %s", 1, "refused")
    lines = first.getvalue().splitlines()
    assert lines == [
        "Unable connect to node with id 1: refused",
        "Unable to update metadata from [1]",
        "Unable connect to node with id 1: refused [999 more like this since the last one logged]",
    ]
    assert second.getvalue().splitlines() == lines


def test_info_lines_and_distinct_texts_are_not_limited() -> None:
    clock = Clock()
    log, first, _ = _logger(RepeatedMessageLimiter(window=10.0, clock=clock))
    log.setLevel(logging.INFO)
    for number in range(5):
        log.info("worker_counts ticks=%d", number)
    log.warning("first")
    log.warning("second")
    assert len(first.getvalue().splitlines()) == 7


def test_formatted_messages_that_differ_only_in_numbers_are_one_template() -> None:
    """Faust logs `f"producer buffer full size {size}"` about ten times a second while the
    broker is unreachable: one line per window, like a templated message."""
    clock = Clock()
    log, first, _ = _logger(RepeatedMessageLimiter(window=10.0, clock=clock))
    for size in range(100, 200):
        log.warning(f"producer buffer full size {size}")
        clock.now += 0.1
    log.warning("producer buffer full size 200")
    assert first.getvalue().splitlines() == [
        "producer buffer full size 100",
        "producer buffer full size 200 [99 more like this since the last one logged]",
    ]


def test_the_limiter_forgets_old_templates_when_it_has_too_many() -> None:
    clock = Clock()
    limiter = RepeatedMessageLimiter(window=10.0, clock=clock, max_templates=100)
    log, first, _ = _logger(limiter)
    for number in range(1000):
        word = "".join(chr(ord("a") + int(digit)) for digit in str(number))
        log.error(f"untemplated {word}")  # 1000 distinct texts, no arguments
        clock.now += 1.0
    assert len(first.getvalue().splitlines()) == 1000
    assert len(limiter._windows) <= 100


def test_the_limiter_counts_records_from_several_threads() -> None:
    log, first, _ = _logger(RepeatedMessageLimiter(window=3600.0))

    def flood() -> None:
        for _ in range(500):
            log.error("Failed fetch messages from %s: %s", 1, "NodeNotReadyError")

    threads = [threading.Thread(target=flood) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert first.getvalue().splitlines() == ["Failed fetch messages from 1: NodeNotReadyError"]
