"""The per-slot cache sentinels of a Redis Cluster: one tag per slot, co-located keys."""

from __future__ import annotations

import time

import pytest
from redis.crc import key_slot

from streams.serving.cache import Keys
from streams.serving.slot_tags import SLOTS, slot_tags, tag_slot


def test_the_tag_table_covers_every_slot_and_each_tag_maps_to_its_slot() -> None:
    tags = slot_tags()
    assert len(tags) == SLOTS == 16384
    assert len(set(tags)) == SLOTS
    for slot, tag in enumerate(tags):
        assert key_slot(f"{{{tag}}}".encode()) == slot, (slot, tag)  # redis-py's own CRC16
        assert tag_slot(tag) == slot
        assert 1 <= len(tag) <= 4 and tag.isalnum() and tag == tag.lower()


def test_the_tag_table_is_deterministic_and_cheap_to_compute() -> None:
    slot_tags.cache_clear()
    started = time.perf_counter()
    first = slot_tags()
    elapsed = time.perf_counter() - started
    slot_tags.cache_clear()
    assert slot_tags() == first
    assert slot_tags() is slot_tags()  # computed once per process
    assert elapsed < 2.0, elapsed  # about 0.03 s; generous for a loaded machine


@pytest.mark.parametrize("prefix", ["", "p:", "test-ab12cd34:"])
@pytest.mark.parametrize("customer_id", ["c-0", "c-1", "9001", "ä-kunde", "a{b}c", "{}", "x}{y"])
def test_a_customers_sentinel_is_in_the_slot_of_its_hash(prefix: str, customer_id: str) -> None:
    keys = Keys(prefix)
    sentinel = keys.sentinel_of(customer_id, cluster=True)
    assert sentinel.startswith(f"{prefix}meta:cache:{{")
    assert key_slot(sentinel.encode()) == key_slot(keys.customer(customer_id).encode())
    assert sentinel in keys.sentinels(cluster=True)


def test_one_node_keeps_the_single_sentinel() -> None:
    keys = Keys("p:")
    assert keys.sentinel() == "p:meta:cache"
    assert keys.sentinel_of("c-1", cluster=False) == "p:meta:cache"
    assert keys.sentinels(cluster=False) == ["p:meta:cache"]


def test_every_slot_has_exactly_one_sentinel_and_the_flush_patterns_cover_them() -> None:
    keys = Keys("p:")
    sentinels = keys.sentinels(cluster=True)
    assert len(sentinels) == SLOTS
    assert sorted(key_slot(s.encode()) for s in sentinels) == list(range(SLOTS))
    assert "p:meta:*" in keys.patterns()  # delete_all removes them with the rest
