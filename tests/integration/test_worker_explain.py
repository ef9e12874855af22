"""GET /customers/{id}/explain on real workers: the same document as the offline explain,
404 for a customer never seen, 401 without the token, and routed to the owning worker."""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.worker.explain_page import customer_partition
from tests.helpers import wait_until
from tests.integration.worker_harness import (
    WorkerProcess,
    produce,
    running_workers,
    segments_result,
    wait_drained,
    write_jsonl,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

TOKEN = "explain-test-token"
AS_OF = "2025-12-01T00:00:00Z"
RULES = """
version: 2
base_currency: EUR
rates: {USD: "0.92"}
segments:
  - name: vip
    when: orders(within="182d") >= 3
    exit_when: orders(within="182d") < 2
  - name: lapsed
    when: days_since_last_purchase() > 90
    min_dwell: 10d
  - name: online_share
    when: spend(channel="online", within="365d") / spend(within="365d") >= 0.6
  - name: overdue
    when: days_since_last_purchase() > 2 * avg_days_between_orders()
  - name: lapsed_vip
    when: in_segment("vip") and not in_segment("lapsed")
"""
PARTITIONS = 2


def _customers() -> list[str]:
    """Three customers in each of the two partitions, and one more."""
    by_partition: dict[int, list[str]] = {0: [], 1: []}
    number = 0
    while min(len(ids) for ids in by_partition.values()) < 3:
        customer_id = f"cust-{number}"
        ids = by_partition[customer_partition(customer_id, PARTITIONS)]
        if len(ids) < 3:
            ids.append(customer_id)
        number += 1
    # and one id that must be percent-encoded in a URL, forwarded as it is
    return [*by_partition[0], *by_partition[1], "ann #ü/7"]


def _events(customers: list[str]) -> list[dict[str, Any]]:
    events = []
    for index, customer_id in enumerate(customers):
        for order in range(index % 4 + 1):
            month = 3 + order * 2 + index % 3
            events.append(
                {
                    "event_id": f"{customer_id}-{order}",
                    "customer_id": customer_id,
                    "occurred_at": f"2025-{month:02d}-{10 + index:02d}T12:00:00Z",
                    "channel": "online" if (order + index) % 2 else "pos",
                    "type": "purchase",
                    "currency": "USD" if order % 2 else "EUR",
                    "total": f"{20 + 15 * order + index}.50",
                }
            )
    return events


def _get(port: int, customer_id: str, token: str | None = TOKEN) -> tuple[int, Any, str | None]:
    quoted = urllib.parse.quote(customer_id, safe="")
    request = urllib.request.Request(f"http://127.0.0.1:{port}/customers/{quoted}/explain")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=15) as response:
            served_by = response.headers.get("X-Segments-Served-By")
            return int(response.status), orjson.loads(response.read()), served_by
    except urllib.error.HTTPError as error:
        return int(error.code), orjson.loads(error.read()), None


def _setup(env: dict[str, str], tmp_path: Path) -> tuple[dict[str, str], Path, list[str]]:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    customers = _customers()
    events = write_jsonl(tmp_path / "events.jsonl", _events(customers))
    env = {
        **env,
        "SEGMENTS_RULES": str(rules),
        "SEGMENTS_CLOCK": "event",
        "SEGMENTS_API_TOKEN": TOKEN,
        "SEGMENTS_PARTITIONS": str(PARTITIONS),
    }
    produce(env, events, AS_OF)
    return env, events, customers


def _offline(env: dict[str, str], events: Path, customers: list[str]) -> dict[str, Any]:
    """`segments explain ID --input --as-of --json` of each customer: no broker involved."""
    documents = {}
    for customer_id in customers:
        result = segments_result(
            env, "explain", customer_id, "--input", str(events), "--as-of", AS_OF, "--json"
        )
        assert result.returncode == 0, result.stderr
        documents[customer_id] = orjson.loads(result.stdout)
    return documents


def test_one_worker_explains_like_the_offline_replay_with_404_and_401(
    segments_env: dict[str, str], topics: Any, tmp_path: Path
) -> None:
    env, events, customers = _setup(segments_env, tmp_path)
    with running_workers(env, tmp_path) as (worker,):
        worker.wait_ready()
        wait_drained(
            env["SEGMENTS_KAFKA_BOOTSTRAP"],
            env["SEGMENTS_APP_ID"],
            topics.purchases,
            workers=(worker,),
        )
        expected = _offline(env, events, customers)
        for customer_id in customers:
            status, document, _ = _get(worker.port, customer_id)
            assert status == 200, document
            assert document == expected[customer_id]
        # the documents say something: members, undefined values and both kinds of truth
        text = orjson.dumps(list(expected.values())).decode()
        assert '"member":true' in text and '"undefined":true' in text
        # the command asks the worker (token from SEGMENTS_API_TOKEN) and prints the same
        worker_url = f"http://127.0.0.1:{worker.port}"
        asked = segments_result(env, "explain", customers[0], "--worker", worker_url, "--json")
        assert asked.returncode == 0, asked.stderr
        assert orjson.loads(asked.stdout) == expected[customers[0]]
        unknown = segments_result(env, "explain", "never-seen", "--worker", worker_url)
        assert unknown.returncode == 1
        assert "the worker answered 404: customer 'never-seen' was never seen" in unknown.stderr
        status, document, _ = _get(worker.port, "never-seen")
        assert status == 404
        assert document["error"] == "not_found"
        assert _get(worker.port, customers[0], token=None)[0] == 401
        assert _get(worker.port, customers[0], token="wrong")[0] == 401
        assert worker.stop() == 0


def test_two_workers_route_each_request_to_the_owner_of_the_customer(
    segments_env: dict[str, str], topics: Any, tmp_path: Path
) -> None:
    env, events, customers = _setup(segments_env, tmp_path)
    expected = _offline(env, events, customers)
    first = WorkerProcess(env, tmp_path / "worker-first.log").start()
    other = {**env, "SEGMENTS_DATA_DIR": str(tmp_path / "second-data")}
    second = WorkerProcess(other, tmp_path / "worker-second.log").start()
    workers = (first, second)
    try:
        for worker in workers:
            worker.wait_ready(90)
        wait_drained(
            env["SEGMENTS_KAFKA_BOOTSTRAP"],
            env["SEGMENTS_APP_ID"],
            topics.purchases,
            workers=workers,
        )
        answers: dict[tuple[int, str], tuple[int, Any, str | None]] = {}

        def all_answered() -> bool:
            # each worker owns one partition once both are in the group and the
            # rebalance is over; until then a request may get 503 (retry)
            for worker in workers:
                for customer_id in customers:
                    answers[(worker.port, customer_id)] = _get(worker.port, customer_id)
            return all(status == 200 for status, _, _ in answers.values())

        wait_until(all_answered, 90, interval=0.5, what="every explain answered")
        served = {customer_id: answers[(first.port, customer_id)][2] for customer_id in customers}
        for (port, customer_id), (_, document, served_by) in answers.items():
            assert document == expected[customer_id], (port, customer_id)
            assert served_by == served[customer_id], "both workers reach the same owner"
        owners = {url for url in served.values()}
        assert owners == {f"http://127.0.0.1:{w.port}" for w in workers}, owners
        assert first.stop() == 0
        assert second.stop() == 0
    finally:
        first.kill()
        second.kill()
