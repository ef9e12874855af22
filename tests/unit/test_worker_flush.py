"""The processor's flush (decision 0014): one table value per customer per flush, records
collapsed to the last per key, and the error path that reverts one customer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

import segments.engine
from segments.membership import step
from streams.worker.driver import CHANGELOG, Driver
from tests.unit.test_worker_driver import (
    AS_OF,
    EXAMPLE,
    assert_equals_replay,
    example_lines,
    feed,
)

pytestmark = pytest.mark.unit


def test_a_flush_writes_each_customer_once_and_the_last_membership_per_key() -> None:
    lines = example_lines(customers=20, events=400)
    driver = Driver(EXAMPLE, partitions=1)
    feed(driver, lines, as_of=None)
    driver.run()  # flushes once, when it is done
    changelog = [sent.key for sent in driver.pending if sent.topic == CHANGELOG]
    customers = {orjson.loads(line)["customer_id"].encode() for line in lines}
    assert sorted(key for key in changelog if key in customers) == sorted(customers)
    assert len(changelog) == len(customers) + 1  # and the partition's clock key, last
    memberships = [sent.key for sent in driver.pending if sent.topic.endswith("memberships")]
    assert len(memberships) == len(set(memberships))
    changes = [s for s in driver.pending if s.topic == driver.names.segment_changes]
    assert len(changes) > len(memberships)  # the interval's changes, each record once
    ats = [orjson.loads(sent.value or b"")["at"] for sent in changes]
    assert ats == sorted(ats)  # in the order made, over all customers


def test_an_unexpected_error_reverts_its_customer_and_dead_letters_its_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = example_lines(customers=30, events=300)
    driver = Driver(EXAMPLE, partitions=1)
    feed(driver, lines)
    driver.run(limit=100)
    driver.commit()
    customers = [orjson.loads(line)["customer_id"] for line in lines]
    # the first event from 130 on whose customer had events since the commit
    at = next(i for i in range(130, len(lines)) if customers[i] in customers[100:i])
    victim = customers[at]
    earlier = [lines[i] for i in range(100, at) if customers[i] == victim]
    failing = orjson.loads(lines[at])["event_id"]

    def failing_step(state: Any, item: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(item, "event_id", None) == failing:
            state.orders.clear()  # half updated, as a bug could leave it
            raise RuntimeError("boom")
        return step(state, item, *args, **kwargs)

    monkeypatch.setattr(segments.engine, "step", failing_step)
    driver.run(limit=at - 100 + 1)  # up to and including the failing event
    monkeypatch.setattr(segments.engine, "step", step)
    driver.run()
    driver.commit()
    dead = [d for d in driver.dead_letters if d.reason == "processing_error"]
    assert sorted(d.value or b"" for d in dead) == sorted([*earlier, lines[at]])
    # Every other event is applied, and everything published equals a replay of them.
    kept = [line for line in lines if line not in earlier and line != lines[at]]
    assert_equals_replay(driver, EXAMPLE, kept, tmp_path, AS_OF)
