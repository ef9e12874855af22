"""The worker's consumer-lag gauge over Faust's consumer bookkeeping (a fake consumer)."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from faust.types import TP
from prometheus_client import CollectorRegistry, generate_latest

from streams.worker.metrics import ConsumerLag


class FakeConsumer:
    def __init__(self, ends: dict[TP, int | None], committed: dict[TP, int]) -> None:
        self.ends = ends
        self._committed_offset: defaultdict[TP, int | None] = defaultdict(lambda: None, committed)

    def assignment(self) -> set[TP]:
        return set(self.ends)

    def highwater(self, tp: TP) -> Any:
        end = self.ends[tp]
        if end == -1:
            raise AssertionError("partition is not assigned")  # aiokafka's complaint
        return end


def scrape(consumer: FakeConsumer) -> str:
    registry = CollectorRegistry()
    registry.register(ConsumerLag(lambda: consumer, ["purchases", "purchases.pos"]))
    return generate_latest(registry).decode()


def test_lag_is_the_high_watermark_minus_the_committed_offset() -> None:
    consumer = FakeConsumer(
        {
            TP("purchases", 0): 120,
            TP("purchases", 1): 40,
            TP("purchases.pos", 0): 7,
            TP("ticks", 0): 999,  # not an input: no lag reported
            TP("purchases", 2): None,  # nothing fetched yet: unknown, not 0
            TP("purchases", 3): -1,  # revoked while scraping
        },
        {TP("purchases", 0): 100, TP("purchases", 1): 40},
    )
    text = scrape(consumer)
    assert 'segments_worker_consumer_lag{partition="0",topic="purchases"} 20.0' in text
    assert 'segments_worker_consumer_lag{partition="1",topic="purchases"} 0.0' in text
    # never committed: everything up to the high watermark is lag
    assert 'segments_worker_consumer_lag{partition="0",topic="purchases.pos"} 7.0' in text
    assert "ticks" not in text
    assert 'partition="2"' not in text and 'partition="3"' not in text
