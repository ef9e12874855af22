"""The serving cache lost while nothing flows: serve must notice and rebuild it by itself."""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.faults.harness import (
    AS_OF,
    FaultReport,
    Outcome,
    Product,
    expected_redis,
    http_status,
    make_backlog,
)
from tests.helpers import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.slow]


def test_redis_restarted_empty_while_idle(
    product: Product, tmp_path: Path, fault_report: FaultReport
) -> None:
    """After the restart no lookup may say "no segments" for a member, and the cache comes
    back equal to replay without any new change flowing."""
    backlog = make_backlog(tmp_path / "backlog", customers=1000, seed=100)
    outcome = Outcome("redis-restarted-empty", "Redis restarted empty while idle", 0)
    product.start_worker()
    product.start_serve()
    product.produce(backlog.parts[0])
    product.produce(backlog.parts[1], AS_OF)
    product.settle(backlog, Outcome("before", "", 0), time.monotonic())
    expected = expected_redis(backlog.reference)
    members = sorted(expected, key=lambda c: (-len(expected[c]), c))[:5]

    product.redis_server.stop(save=False)
    product.redis_server.start()
    fault_ended = time.monotonic()
    wrong: list[tuple[str, bool, object]] = []

    def rebuilt_or_wrong() -> bool:
        for customer_id in members:
            for fast in (False, True):
                try:
                    answer = product.lookup(customer_id, fast=fast)
                except urllib.error.HTTPError as error:
                    assert error.code == 503, error  # "cache unavailable" is honest
                    continue
                if not answer["segments"]:
                    wrong.append((customer_id, fast, answer))
        return bool(wrong) or product.redis_members() == expected

    wait_until(rebuilt_or_wrong, 60, interval=0.2, what="the cache rebuilt after the restart")
    assert not wrong, f"a member looked up as in no segment: {wrong[0]}"
    product.settle(backlog, outcome, fault_ended)
    fault_report.add(outcome)


def test_metrics_answer_while_redis_is_down(product: Product) -> None:
    """Prometheus must read the cache gauges during the outage its alert is about; the data
    routes say the cache is unavailable (503), a malformed cursor is the client's 400."""
    serve = product.start_serve()
    base = f"http://127.0.0.1:{serve.port}"
    assert http_status(base + "/segments/vip/members?cursor=not-a-cursor") == 400
    product.redis_server.stop(save=True)
    answers = {path: http_status(base + path) for path in ("/metrics", "/segments")}
    answers["members"] = http_status(base + "/segments/vip/members")
    with urllib.request.urlopen(base + "/metrics", timeout=10) as response:
        metrics = response.read().decode()
    product.redis_server.start()
    assert answers == {"/metrics": 200, "/segments": 503, "members": 503}
    assert "segments_cache_redis_up 0.0" in metrics.splitlines()
    assert "segments_size{" not in metrics
