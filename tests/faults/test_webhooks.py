"""Win-back webhooks against a receiver that is down for a minute and one slower than the timeout.

A receiver may expect every call at least once per change_id (the Idempotency-Key), and
no call is given up while it is merely down or slow for a while (issue 9 item 8). Both
receivers are called by one `serve`, one trigger each on the same win_back entries, so the
two faults run side by side (the dispatcher keeps per-webhook slots: neither waits on the
other).
"""

from __future__ import annotations

import itertools
import math
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from segments.data import EXAMPLE_RULES
from tests.faults.harness import (
    AS_OF,
    PARTITIONS,
    FaultReport,
    Outcome,
    Product,
    hold,
    make_backlog,
)
from tests.faults.proxy import TcpProxy
from tests.helpers import wait_until
from tests.integration.worker_harness import committed_offsets, read_topic

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.slow]

RECEIVER_DOWN = 60.0  # seconds one receiver refuses connections, and the other is slow
TIMEOUT = 2.0  # SEGMENTS_TRIGGER_TIMEOUT: one attempt's timeout
SLOW_ANSWER = 3.0  # the slow receiver answers after this long: later than the timeout
# SEGMENTS_TRIGGER_RETRY_MAX_DELAY. The default (5 min) lets a call wait up to 5 min after
# the receiver is back (docs/operations.md); a short cap keeps the scenario short and
# changes nothing else: the span (1 h) and the doubling from 1 s are the defaults.
MAX_DELAY = 5.0


class Receiver:
    """A webhook receiver in a thread: records each call's Idempotency-Key and start time."""

    def __init__(self) -> None:
        self.calls: dict[str, list[float]] = {}  # key -> monotonic start of each call
        self.answered: set[str] = set()  # keys answered 200 while not slow
        self.slow_until = 0.0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                started = time.monotonic()
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                key = self.headers.get("Idempotency-Key", "")
                with receiver.lock:
                    receiver.calls.setdefault(key, []).append(started)
                slow = started < receiver.slow_until
                if slow:
                    time.sleep(SLOW_ANSWER)  # the fault: slower than the caller waits
                try:
                    self.send_response(200)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                except ConnectionError:  # the caller gave up waiting: expected when slow
                    return
                if not slow:
                    with receiver.lock:
                        receiver.answered.add(key)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receivers() -> Iterator[tuple[Receiver, TcpProxy, Receiver]]:
    """The receiver that goes down (behind a proxy, to refuse connections) and the slow one."""
    with Receiver() as down, TcpProxy(("127.0.0.1", down.port)) as proxy, Receiver() as slow:
        yield down, proxy, slow


def _rules_calling(tmp_path: Path, ports: dict[str, int]) -> Path:
    """The example rules with one trigger per receiver: every win_back entry calls each."""
    rules = yaml.safe_load(EXAMPLE_RULES.read_text())
    rules["triggers"] = [
        {
            "name": name,
            "segment": "win_back",
            "on": "entered",
            "webhook": f"http://127.0.0.1:{port}/hooks/{name}",
        }
        for name, port in ports.items()
    ]
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rules, sort_keys=False))
    return path


def _no_dead_letters(product: Product, topic: str) -> None:
    dead = read_topic(product.direct_bootstrap, topic)
    if dead:
        reasons = Counter(dict(r.headers).get("reason", b"?").decode() for r in dead)
        raise AssertionError(
            f"{len(dead)} calls dead-lettered while the receiver was away: {reasons}"
        )


def _failed_attempts(product: Product) -> dict[tuple[str, str], float]:
    """segments_trigger_failed_attempts_total of serve's /metrics: (trigger, reason) -> n."""
    assert product.serve is not None
    url = f"http://127.0.0.1:{product.serve.port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as response:
        text = response.read().decode()
    return {
        (sample.labels["trigger"], sample.labels["reason"]): sample.value
        for family in text_string_to_metric_families(text)
        if family.name == "segments_trigger_failed_attempts"
        for sample in family.samples
        if sample.name.endswith("_total")
    }


def test_a_receiver_down_for_60_s_and_one_slower_than_the_timeout_get_every_call(
    product: Product,
    tmp_path: Path,
    receivers: tuple[Receiver, TcpProxy, Receiver],
    fault_report: FaultReport,
) -> None:
    down, proxy, slow = receivers
    rules = _rules_calling(tmp_path, {"winback-down": proxy.port, "winback-slow": slow.port})
    product.base_env.update(
        SEGMENTS_RULES=str(rules),
        SEGMENTS_TRIGGER_TIMEOUT=str(TIMEOUT),
        SEGMENTS_TRIGGER_RETRY_MAX_DELAY=str(MAX_DELAY),
    )
    backlog = make_backlog(tmp_path / "backlog", customers=150, seed=102, parts=1, rules=rules)
    expected = {
        c["change_id"]
        for c in backlog.reference.changes
        if c["segment"] == "win_back" and c["change"] == "entered"
    }
    assert expected
    dlq = f"{product.topics.prefix}triggers.dlq"
    outcomes = {
        "down": Outcome("webhook-down-60s", "receiver refusing connections", RECEIVER_DOWN),
        "slow": Outcome(
            "webhook-slow-60s",
            f"receiver answers in {SLOW_ANSWER:g} s > {TIMEOUT:g} s timeout",
            RECEIVER_DOWN,
        ),
    }
    proxy.refuse()
    slow.slow_until = math.inf
    product.start_worker()
    product.start_serve(triggers=True)
    group = f"{product.app_id}-triggers"
    # A new dispatcher group starts at the end of the topic: produce only once it is there.
    wait_until(
        lambda: (
            len(committed_offsets(product.direct_bootstrap, group, product.topics.segment_changes))
            == PARTITIONS
        ),
        60,
        interval=0.2,
        what="the trigger dispatcher to take its start positions",
    )
    product.produce(backlog.parts[0], AS_OF)
    slow_started = time.monotonic()
    fault_ended = hold(RECEIVER_DOWN, lambda: _no_dead_letters(product, dlq))
    reached_while_down = len(down.calls)
    proxy.restore()
    slow.slow_until = fault_ended
    # What the runbook says an operator sees (docs/operations.md): failed attempts by reason.
    failed = _failed_attempts(product)
    assert failed.get(("winback-down", "ClientConnectorError"), 0) > 0, failed
    assert failed.get(("winback-slow", "TimeoutError"), 0) > 0, failed
    assert reached_while_down == 0, "a call reached the receiver while it was down"

    done: dict[str, float] = {}

    def delivered() -> bool:
        _no_dead_letters(product, dlq)
        for name, receiver in (("down", down), ("slow", slow)):
            if name not in done and receiver.answered >= expected:
                done[name] = time.monotonic()
        return len(done) == 2

    wait_until(delivered, 120, interval=0.5, what="every win_back call delivered to both")
    _no_dead_letters(product, dlq)
    assert down.answered == slow.answered == expected

    # Not flooded: a call's attempts never overlap and, after a timeout, the next one waits
    # at least the timeout, so attempts of one change start at least 2 x TIMEOUT apart
    # (less a margin for scheduling); at most one attempt per 2 x TIMEOUT while slow.
    gaps = [
        later - earlier
        for starts in slow.calls.values()
        for earlier, later in itertools.pairwise(starts)
        if earlier < fault_ended
    ]
    assert min(gaps, default=2 * TIMEOUT) >= 1.5 * TIMEOUT, sorted(gaps)[:5]
    bound = math.ceil((fault_ended - slow_started) / (1.5 * TIMEOUT)) + 2
    most = max(len(starts) for starts in slow.calls.values())
    assert most <= bound, f"one change called {most} times in {RECEIVER_DOWN:g} s"

    outcomes["slow"].notes["most_calls_of_one_change"] = most
    outcomes["down"].notes["failed_attempts"] = failed[("winback-down", "ClientConnectorError")]
    outcomes["slow"].notes["failed_attempts"] = failed[("winback-slow", "TimeoutError")]
    for name, receiver in (("down", down), ("slow", slow)):
        outcome = outcomes[name]
        outcome.recovery_seconds = round(done[name] - fault_ended, 1)
        outcome.changes = len(expected)
        outcome.copies = sum(len(starts) for starts in receiver.calls.values())  # calls
        outcome.compared = "every change_id delivered"
        fault_report.add(outcome)
