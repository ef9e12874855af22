"""Worker settings beyond SPEC's table (identity map, segment-changes retention); consumer lag."""

from __future__ import annotations

import re
import urllib.request
from pathlib import Path

import orjson
import pytest
from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import ConfigResource, ConfigResourceType

from tests.integration.worker_harness import read_published, running_workers, wait_drained

pytestmark = pytest.mark.slow

RULES = """\
version: 1
base_currency: EUR
segments:
  - name: buyer
    when: orders() >= 1
  - name: repeat_buyer
    when: orders() >= 2
"""


def _receipt(loyalty_id: str, number: str) -> bytes:
    return orjson.dumps(
        {
            "store": "s1",
            "receipt_no": number,
            "loyalty_id": loyalty_id,
            "ts": "2026-03-02T10:00:00Z",
            "currency": "EUR",
            "paid": "20.00",
            "items": [{"ean": "e1", "dept": "Books", "qty": 1, "price": "20.00"}],
        }
    )


def _order(shop_customer: int, number: int) -> bytes:
    return orjson.dumps(
        {
            "id": number,
            "customer": {"id": shop_customer},
            "created_at": "2026-03-03T10:00:00Z",
            "currency": "EUR",
            "total_price": "30.00",
            "total_discounts": "0.00",
            "line_items": [{"sku": "x", "product_type": "Books", "quantity": 1, "price": "30.00"}],
        }
    )


def _changes_retention(bootstrap: str, topic: str) -> str:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        [response] = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        admin.close()
    [(_, _, _, _, entries)] = response.resources  # error, message, type, name, configs
    return next(str(entry[1]) for entry in entries if entry[0] == "retention.ms")


def _lag_by_partition(port: int, topic: str) -> dict[int, float]:
    """segments_worker_consumer_lag of `topic` from the worker's /metrics, by partition."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    lag = {}
    for line in text.splitlines():
        match = re.fullmatch(
            r'segments_worker_consumer_lag\{partition="(\d+)",topic="([^"]+)"\} (\S+)', line
        )
        if match and match[2] == topic:
            lag[int(match[1])] = float(match[3])
    return lag


def test_identity_map_joins_till_and_shop_and_retention_is_applied(
    segments_env: dict[str, str], topics: object, tmp_path: Path
) -> None:
    """A loyalty card at the till and an online account, joined by SEGMENTS_IDENTITY_MAP,
    are one customer with two orders; a customer not in the file stays per native id."""
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES)
    identities = tmp_path / "identities.csv"
    identities.write_text("customer_id,loyalty_id,shopify_customer_id\nc-joined,L1,701\n")
    env = {
        **segments_env,
        "SEGMENTS_CLOCK": "event",
        "SEGMENTS_RULES": str(rules),
        "SEGMENTS_IDENTITY_MAP": str(identities),
        "SEGMENTS_CHANGES_RETENTION": "30d",
    }
    bootstrap = env["SEGMENTS_KAFKA_BOOTSTRAP"]
    with running_workers(env, tmp_path) as (worker,):
        worker.wait_ready()  # the worker creates the topics
        assert _changes_retention(bootstrap, topics.segment_changes) == str(30 * 86_400_000)
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
        producer.send(topics.purchases_pos, value=_receipt("L1", "r1"))
        producer.send(topics.purchases_online, value=_order(701, 9001))
        producer.send(topics.purchases_pos, value=_receipt("L2", "r2"))  # not in the file
        producer.flush()
        producer.close()
        group = env["SEGMENTS_APP_ID"]
        wait_drained(bootstrap, group, topics.purchases_pos, workers=(worker,))
        wait_drained(bootstrap, group, topics.purchases_online, workers=(worker,))
        wait_drained(bootstrap, group, topics.purchases, workers=(worker,))
        published = read_published(bootstrap, topics, ["buyer", "repeat_buyer"])
        lag = _lag_by_partition(worker.port, topics.purchases)
        assert worker.stop() == 0
    # drained: the worker reports every partition of `purchases` it owns, each with no lag
    assert lag == {p: 0.0 for p in range(int(env["SEGMENTS_PARTITIONS"]))}
    assert published.memberships["repeat_buyer"] == ["c-joined"]
    assert sorted(published.memberships["buyer"]) == ["c-joined", "loyalty-L2"]
