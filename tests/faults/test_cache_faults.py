"""The serving cache down or lost: lookups never say "no segments", and serve recovers by itself."""

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
    alive,
    expected_redis,
    hold,
    http_status,
    make_backlog,
)
from tests.helpers import wait_until

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.slow]


OUTAGE = 30.0  # seconds Redis is down


def test_redis_down_for_30_s_under_load_then_restarted_empty_while_idle(
    product: Product, tmp_path: Path, fault_report: FaultReport
) -> None:
    """Two cache faults on one product, each ending equal to replay.

    1. Redis stopped (SHUTDOWN SAVE) for 30 s while changes keep flowing into serve's
       sink: every lookup says the cache is unavailable (503), never "no segments".
    2. Then, with nothing flowing, Redis restarted empty: no lookup may say "no segments"
       for a member, and the cache comes back without any new change (decision 0004).
    """
    backlog = make_backlog(tmp_path / "backlog", customers=1000, seed=93)
    down = Outcome("redis-down-30s", "Redis stopped, then started with its data", OUTAGE)
    worker = product.start_worker()
    serve = product.start_serve()
    product.produce(backlog.parts[0])
    wait_until(product.redis_members, 120, what="serve's sink to write the first memberships")
    member = next(iter(product.redis_members()))
    product.redis_server.stop(save=True)
    product.produce(backlog.parts[1], AS_OF)
    statuses: set[int] = set()

    def check() -> None:
        alive(worker, serve)()
        for port in (serve.port, product.lookup_port):
            statuses.add(http_status(f"http://127.0.0.1:{port}/customers/{member}/segments"))

    fault_ended = hold(OUTAGE, check)
    # While the cache is down a lookup says so; it never answers "no segments".
    assert statuses == {503}, f"lookups during the outage answered {sorted(statuses)}"
    product.redis_server.start()
    product.settle(backlog, down, fault_ended)
    fault_report.add(down)

    empty = Outcome("redis-restarted-empty", "Redis restarted empty while idle", 0)
    expected = expected_redis(backlog.reference)
    members = sorted(expected, key=lambda c: (-len(expected[c]), c))[:5]
    rebuilds = serve.log_text().count("cache_sink_resynced")
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
                    if error.code != 503:  # "cache unavailable/rebuilding" is honest
                        wrong.append((customer_id, fast, error.code))
                    continue
                if not answer["segments"]:
                    wrong.append((customer_id, fast, answer))
        rebuilt = serve.log_text().count("cache_sink_resynced") > rebuilds
        return bool(wrong) or (rebuilt and product.redis_members() == expected)

    wait_until(rebuilt_or_wrong, 60, interval=0.2, what="the cache rebuilt after the restart")
    assert not wrong, f"a member looked up as in no segment: {wrong[0]}"
    product.settle(backlog, empty, fault_ended)
    fault_report.add(empty)


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
