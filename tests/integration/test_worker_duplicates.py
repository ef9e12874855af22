"""(e) An event id delivered more than once counts once, like replay's dedupe."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from segments.data import EXAMPLE_RULES
from tests.helpers import wait_until
from tests.integration.worker_harness import (
    assert_equals_replay,
    produce,
    read_published,
    replay_reference,
    running_workers,
    synthetic_events,
    wait_drained,
    write_jsonl,
)

pytestmark = pytest.mark.slow

AS_OF = "2026-09-01T00:00:00Z"


def test_duplicate_event_ids_count_once(
    segments_env: dict[str, str], topics: object, tmp_path: Path
) -> None:
    originals = synthetic_events(customers=200, events=2_000, seed=17)
    # The same purchase again (a retrying producer), some of them with another
    # channel, as if the same order came through POS and online.
    duplicates = [
        {**event, "channel": "online" if index % 2 else event["channel"]}
        for index, event in enumerate(originals[::10])
        if event["type"] == "purchase"
    ]
    events = write_jsonl(tmp_path / "events.jsonl", originals + duplicates)
    env = {**segments_env, "SEGMENTS_CLOCK": "event", "SEGMENTS_RULES": str(EXAMPLE_RULES)}
    reference = replay_reference(EXAMPLE_RULES, events, tmp_path / "replay", AS_OF)
    assert reference.summary["duplicates"] == len(duplicates)
    produce(env, events, AS_OF)
    with running_workers(env, tmp_path) as (worker,):
        worker.wait_ready()
        wait_drained(env["SEGMENTS_KAFKA_BOOTSTRAP"], env["SEGMENTS_APP_ID"], topics.purchases)
        published = read_published(
            env["SEGMENTS_KAFKA_BOOTSTRAP"], topics, list(reference.memberships)
        )
        # The worker logs its counters every few seconds.
        wait_until(lambda: f" duplicates={len(duplicates)} " in worker.log_text(), 30)
        assert worker.stop() == 0
    assert_equals_replay(published, reference)


ONCE_RULES = """\
version: 1
base_currency: EUR
segments:
  - name: buyer
    when: orders() >= 1
  - name: repeat_buyer
    when: orders() >= 2
  - name: heavy
    when: spend(within="365d") >= 200
"""


def test_duplicates_across_native_topics_and_purchases_count_once(
    segments_env: dict[str, str], topics: object, tmp_path: Path
) -> None:
    """Each POS receipt twice on purchases.pos; each online order twice on purchases.online
    and once more in canonical form on `purchases`: every customer bought once, for 150."""
    from kafka import KafkaProducer

    from segments.adapters import IdentityMap, from_pos_receipt, from_shopify_order
    from segments.events import encode_event

    rules = tmp_path / "rules.yaml"
    rules.write_text(ONCE_RULES)
    at = "2026-03-02T10:00:00Z"  # one instant for all: the result cannot depend on order
    receipts = [
        orjson.dumps(
            {
                "store": "s1",
                "receipt_no": f"r{n}",
                "loyalty_id": f"L{n}",
                "ts": at,
                "currency": "EUR",
                "paid": "150.00",
                "items": [{"ean": "e1", "dept": "Books", "qty": 1, "price": "150.00"}],
            }
        )
        for n in range(40)
    ]
    orders = [
        orjson.dumps(
            {
                "id": 9000 + n,
                "customer": {"id": 700 + n},
                "created_at": at,
                "currency": "EUR",
                "total_price": "150.00",
                "total_discounts": "0.00",
                "line_items": [
                    {"sku": "x", "product_type": "Books", "quantity": 1, "price": "150.00"}
                ],
            }
        )
        for n in range(40)
    ]
    currencies = frozenset({"EUR"})
    identities = IdentityMap()
    canonical = [from_pos_receipt(raw, identities, currencies) for raw in receipts] + [
        from_shopify_order(raw, identities, currencies) for raw in orders
    ]
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"".join(encode_event(event) + b"\n" for event in canonical))
    reference = replay_reference(rules, events, tmp_path / "replay", None)
    assert len(reference.memberships["buyer"]) == 80
    assert reference.memberships["repeat_buyer"] == reference.memberships["heavy"] == []

    env = {**segments_env, "SEGMENTS_CLOCK": "event", "SEGMENTS_RULES": str(rules)}
    bootstrap = env["SEGMENTS_KAFKA_BOOTSTRAP"]
    with running_workers(env, tmp_path) as (worker,):
        worker.wait_ready()  # the worker creates the topics
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
        for raw in receipts * 2:
            producer.send(topics.purchases_pos, value=raw)
        for raw in orders * 2:
            producer.send(topics.purchases_online, value=raw)
        for event in canonical[40:]:
            producer.send(
                topics.purchases, key=event.customer_id.encode(), value=encode_event(event)
            )
        producer.flush()
        producer.close()
        group = env["SEGMENTS_APP_ID"]
        wait_drained(bootstrap, group, topics.purchases_pos)
        wait_drained(bootstrap, group, topics.purchases_online)
        wait_drained(bootstrap, group, topics.purchases)
        published = read_published(bootstrap, topics, list(reference.memberships))
        wait_until(lambda: " duplicates=120 " in worker.log_text(), 30)
        assert worker.stop() == 0
    assert_equals_replay(published, reference)
