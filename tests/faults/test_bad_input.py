"""Bad records in the backlog: each is dead-lettered with replay's reason, nothing else moves."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import orjson
import pytest

from tests.faults.harness import AS_OF, FaultReport, Outcome, Product, make_backlog
from tests.integration.worker_harness import Record, read_topic

pytestmark = [pytest.mark.faults, pytest.mark.integration, pytest.mark.slow]


def _event(event_id: str, **fields: object) -> dict[str, object]:
    return {
        "event_id": event_id,
        "customer_id": "c-0000007",
        "occurred_at": "2025-06-01T12:00:00Z",
        "channel": "pos",
        "currency": "EUR",
        "total": "10.00",
        **fields,
    }


# One record per way of being wrong that SPEC section 1 names; replay rejects each.
MALFORMED = (
    b'\xff\xfe{"event_id": "bad-utf8"}',
    b'{"event_id": "not json", ',
    b'["an", "array"]',
    orjson.dumps(_event("bad-nan")).replace(b'"10.00"', b"NaN"),
    orjson.dumps(_event("bad-negative", total="-5.00")),
    orjson.dumps(_event("bad-naive-time", occurred_at="2025-06-01T12:00:00")),
    orjson.dumps(_event("bad-currency", currency="XXX")),
    orjson.dumps({k: v for k, v in _event("bad-missing").items() if k != "customer_id"}),
    orjson.dumps(_event("bad-channel", channel="fax")),
    orjson.dumps(_event("bad-exponent", total="1e99")),
)


def _reasons(dead: list[Record]) -> Counter[str]:
    return Counter(dict(record.headers).get("reason", b"?").decode() for record in dead)


# An invalid message just under the broker's default limit (1,048,588 bytes): before issue 9
# its dead letter (the same bytes plus headers) was refused and the record was lost. Now the
# original is kept whole up to 1 MiB - 4 KiB (decision 0005).
OVERSIZE = b"{" + b"x" * 1_039_999


# Decision 0007: an event more than max_future_skew ahead of the wall clock is rejected
# `too_far_ahead` in either clock mode (replay too, against the wall clock of its run); in
# event mode it moved its partition's clock to 9999 before, and every later event of the
# partition was then rejected `too_late`.
FAR_FUTURE = orjson.dumps(_event("far-future", occurred_at="9999-01-01T00:00:00Z"))


def test_malformed_oversize_and_far_future_records_are_dead_lettered_and_change_nothing(
    product: Product, tmp_path: Path, fault_report: FaultReport
) -> None:
    """`generate --dirty` (duplicates, late and malformed records), one record of each
    malformed kind, one invalid record of 1,040,000 bytes and one event dated 9999, in the
    middle of the stream (event mode): each is dead-lettered with replay's reason, the
    oversize one whole, and nothing else changes; no later event is `too_late`."""
    bad = (*MALFORMED, OVERSIZE, FAR_FUTURE)
    backlog = make_backlog(
        tmp_path / "backlog", customers=1000, seed=97, dirty=True, extra_lines=bad, extra_part=0
    )
    rejected = backlog.reference.summary["rejected_by_reason"]
    assert sum(rejected.values()) >= len(bad), rejected
    assert rejected["too_far_ahead"] == 1 and "too_late" not in rejected, rejected
    outcome = Outcome(
        "bad-records",
        f"{sum(rejected.values()) - 2} malformed records, one of 1,040,000 bytes,"
        " one dated 9999-01-01",
        0,
    )
    product.start_worker()
    product.start_serve()
    product.produce(backlog.parts[0])  # the bad records are the last of this part
    product.produce(backlog.parts[1], AS_OF)
    fault_ended = time.monotonic()
    product.settle(backlog, outcome, fault_ended, dead_letters=sum(rejected.values()))
    dead = read_topic(product.direct_bootstrap, product.topics.purchases_dlq)
    assert _reasons(dead) == Counter(rejected)
    (oversize,) = [record for record in dead if len(record.value or b"") > 65536]
    headers = dict(oversize.headers)
    assert (headers["reason"], "truncated" in headers) == (b"invalid_json", False), headers
    assert oversize.value == OVERSIZE
    outcome.notes["rejected_by_reason"] = rejected
    fault_report.add(outcome)
