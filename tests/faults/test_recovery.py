"""Faults while the worker works through a backlog; each ends equal to `segments replay`."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.faults.harness import AS_OF, FaultReport, Outcome, Product, make_backlog
from tests.helpers import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.slow]


def _working(product: Product, timeout: float = 120) -> None:
    """Until the worker commits offsets beyond what it had: it is busy with the backlog."""
    before = product.committed_total()
    wait_until(
        lambda: product.committed_total() > before,
        timeout,
        interval=0.1,
        what="the worker to commit progress on the backlog",
    )


def test_sigkill_three_times_during_a_backlog(
    product: Product, tmp_path: Path, fault_report: FaultReport
) -> None:
    backlog = make_backlog(tmp_path / "backlog", customers=1000, seed=91, parts=4)
    outcome = Outcome("sigkill-x3", "SIGKILL of the worker, 3 times during the backlog", 0)
    product.start_worker()
    product.start_serve()
    started = time.monotonic()
    kills = []
    for part in backlog.parts[:3]:
        product.produce(part)
        _working(product)
        product.worker.kill()
        kills.append(round(product.progress(), 2))
        fault_ended = time.monotonic()
        product.start_worker()
    product.produce(backlog.parts[3], AS_OF)
    outcome.fault_seconds = round(fault_ended - started, 1)
    outcome.notes["progress_at_kills"] = kills
    product.settle(backlog, outcome, fault_ended)
    assert all("unclean_stop_detected" in w.log_text() for w in product.workers[1:])
    fault_report.add(outcome)
