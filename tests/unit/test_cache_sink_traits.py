"""The cache sink's batch with trait changes, over a fake cache: retries and counting."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client import REGISTRY
from redis.exceptions import ConnectionError as RedisConnectionError

from segments.changes import Change
from streams.kafka.retry import Backoff
from streams.serving.cache import Applied, CacheWrite, TraitWrite
from streams.serving.cache_sink import CacheSink

pytestmark = pytest.mark.unit


class FlakyTraitsCache:
    """Seq-checked like Redis; the first trait pipeline fails as if Redis went away."""

    def __init__(self) -> None:
        self.seqs: dict[tuple[str, str], int] = {}
        self.segment_calls = 0
        self.trait_calls = 0

    def _newer(self, key: tuple[str, str], seq: int) -> bool:
        if self.seqs.get(key, 0) >= seq:
            return False
        self.seqs[key] = seq
        return True

    async def apply(self, writes: list[CacheWrite]) -> list[Applied]:
        self.segment_calls += 1
        return [
            Applied(w, applied, None)
            for w in writes
            for applied in [self._newer((w.customer_id, w.segment), w.seq)]
        ]

    async def apply_traits(self, writes: list[TraitWrite]) -> list[bool]:
        self.trait_calls += 1
        if self.trait_calls == 1:
            raise RedisConnectionError("Redis went away")
        return [self._newer((w.customer_id, "trait:" + w.trait), w.seq) for w in writes]


def entered(customer: str, segment: str) -> Change:
    return Change.from_dict(
        {
            "customer_id": customer,
            "segment": segment,
            "change": "entered",
            "at": "2026-11-20T14:03:11.120Z",
            "cause": "purchase",
            "seq": 1,
        }
    )


def test_a_batch_whose_traits_failed_is_retried_whole_and_its_entries_counted_once():
    cache = FlakyTraitsCache()
    sink = CacheSink(
        cache,  # type: ignore[arg-type]
        kafka=None,  # type: ignore[arg-type]
        topic="segment-changes",
        group_id="g",
        backoff=Backoff(0.001, 0.001),
    )
    segment = "sink_trait_retry"  # a label no other test uses
    labels = {"segment": segment, "change": "entered", "cause": "purchase"}

    async def main() -> bool:
        changes = [entered("c-1", segment), entered("c-2", segment)]
        traits = [TraitWrite("c-1", "lifecycle", 1, "new")]
        return await sink._apply_until_done(changes, asyncio.Event(), traits)

    assert asyncio.run(main())
    assert (cache.segment_calls, cache.trait_calls) == (2, 2)  # re-applied after the failure
    assert sink.stats.changes_applied == 2 and sink.stats.changes_ignored == 0
    assert sink.stats.traits_applied == 1 and sink.stats.failed_attempts == 1
    assert REGISTRY.get_sample_value("segments_changes_total", labels) == 2
