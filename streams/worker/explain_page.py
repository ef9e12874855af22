"""GET /customers/{id}/explain on the worker: segments.explain over the worker's own state.

With several workers, the customer's state lives only on the worker that owns its
partition. A request to another worker is forwarded there once: the owner is
looked up in Faust's assignment (`app.router.table_metadata`, the same map
`app.table_route` uses) for the partition Kafka's default partitioner gives the
customer id, which is where `purchases` put the customer's events. Faust's own
`route_req` is not used: it asks the producer for the partition, which fails
for a topic the producer has not written yet (faust #499), copies every header
of the request, and forwards again from the next worker when ownership moved
while the request was under way. Here the token is added from this worker's
settings, and a forwarded request that does not reach the owner is answered
with 503 (retry), never forwarded twice. docs/decisions/0012-explain-routing.md.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
import orjson
from aiokafka.partitioner import DefaultPartitioner
from yarl import URL

from segments.aggregates import state_from_bytes
from segments.explain import explain
from segments.rules.evaluator import CompiledRules
from streams.worker.app import SegmentsApp
from streams.worker.processor import CLOCK_KEY, CustomerRecord, SegmentProcessor
from streams.worker.timers import wall_now

log = logging.getLogger(__name__)

ROUTED_HEADER = "X-Segments-Routed"  # set on a request one worker forwards to another
SERVED_BY_HEADER = "X-Segments-Served-By"  # the worker that read the state
FORWARD_TIMEOUT_S = 10.0
_PARTITIONER = DefaultPartitioner()


def customer_partition(customer_id: str, partitions: int) -> int:
    """The partition of `purchases` (and of the customers table) holding the customer."""
    every = list(range(partitions))
    partition: int = _PARTITIONER(customer_id.encode(), every, every)
    return partition


def owner_of(
    assignment: Mapping[Any, Mapping[str, Sequence[int]]], topic: str, partition: int
) -> URL | None:
    """The URL of the worker that owns `partition` of `topic` in Faust's host -> partitions map."""
    for url, topics in assignment.items():
        if partition in topics.get(topic, ()):
            return URL(str(url))
    return None


def same_worker(a: URL, b: URL) -> bool:
    return (a.host, a.port) == (b.host, b.port)


def register_explain_page(
    segments_app: SegmentsApp, processor: SegmentProcessor, rules: CompiledRules
) -> None:
    """Attach GET /customers/{customer_id}/explain (behind the token like every data route)."""
    app = segments_app.app
    table = segments_app.customers
    settings = segments_app.settings
    token = settings.api_token_value

    @app.page("/customers/{customer_id}/explain")
    async def explain_customer(web: Any, request: Any, customer_id: str) -> Any:
        partition = customer_partition(customer_id, settings.partitions)
        topic = table.changelog_topic.get_topic_name()
        owner = owner_of(app.router.table_metadata(table.name), topic, partition)
        here = URL(str(app.conf.canonical_url))
        if owner is None or not same_worker(owner, here):
            if owner is None or request.headers.get(ROUTED_HEADER):
                # No owner yet, or the sender thought this worker owns it: a rebalance.
                return web.json(
                    {
                        "error": "unavailable",
                        "message": "the customer's partition is being reassigned; retry",
                    },
                    status=503,
                    headers={"Retry-After": "1"},
                )
            return await _forward(app, web, owner, request, token)
        data = table.get(customer_id.encode())
        if data is None:
            return web.json(
                {"error": "not_found", "message": f"customer {customer_id!r} was never seen"},
                status=404,
            )
        record = CustomerRecord.from_bytes(data)
        state = state_from_bytes(customer_id, record.state)
        now = wall_now()
        if processor.event_clock:
            now = _event_clock(processor, table, partition, record) or now
        # which worker answered: a forwarded answer keeps the owner's (tests, debugging)
        return web.json(explain(state, rules, now), headers={SERVED_BY_HEADER: str(here)})


async def _forward(app: Any, web: Any, owner: URL, request: Any, token: str | None) -> Any:
    """Send the request to the owning worker once; its answer is this worker's answer."""
    # the path as it came, still percent-encoded: a customer id is sent on unchanged
    url = URL(f"{owner.scheme}://{owner.host}:{owner.port}{request.raw_path}", encoded=True)
    headers = {ROUTED_HEADER: "1", "Accept": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    try:
        async with app.http_client.get(
            url, headers=headers, timeout=aiohttp.ClientTimeout(total=FORWARD_TIMEOUT_S)
        ) as response:
            body = await response.read()
            served_by = response.headers.get(SERVED_BY_HEADER)
            return web.bytes(
                body,
                content_type=response.content_type,
                status=response.status,
                headers={SERVED_BY_HEADER: served_by} if served_by else None,
            )
    except (aiohttp.ClientError, TimeoutError) as error:
        log.warning("explain_forward_failed owner=%s error=%s", owner, type(error).__name__)
        return web.json(
            {"error": "unavailable", "message": f"the owning worker did not answer: {owner}"},
            status=503,
            headers={"Retry-After": "1"},
        )


def _event_clock(
    processor: SegmentProcessor, table: Any, partition: int, record: CustomerRecord
) -> int | None:
    """The partition's event clock: the processor's, or the newest one stored."""
    part = processor.partitions.get(partition)
    if part is not None and part.clock is not None:
        return part.clock
    clocks = [record.clock]
    stored = table.get(CLOCK_KEY + str(partition).encode())
    if stored is not None:
        clocks.append(orjson.loads(stored)[0])
    known = [clock for clock in clocks if clock is not None]
    return max(known) if known else None
