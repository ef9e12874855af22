"""`segments produce`: replay's order on every partition, murmur2 keys, clock marks everywhere."""

from __future__ import annotations

from pathlib import Path

import orjson
from kafka.partitioner import murmur2

from tests.integration.worker_harness import free_port, produce, read_topic, segments_result


def _event(event_id: str, customer_id: str, at: str) -> bytes:
    return orjson.dumps(
        {
            "event_id": event_id,
            "customer_id": customer_id,
            "occurred_at": at,
            "channel": "pos",
            "currency": "EUR",
            "total": "10.00",
        }
    )


def test_produce_orders_keys_and_marks(
    segments_env: dict[str, str], topics: object, tmp_path: Path
) -> None:
    lines = [
        _event("e3", "c-1", "2025-03-03T00:00:00Z"),
        _event("e1", "c-1", "2025-03-01T00:00:00+01:00"),  # 2025-02-28T23:00Z: first
        b'{"event_id": "bad", "customer_id": "c-2", "occurred_at": 5}',  # stays after e1
        _event("e2a", "c-2", "2025-03-02T00:00:00Z"),
        _event("e2b", "c-2", "2025-03-02T00:00:00Z"),  # a tie keeps input order
        b'{"type": "clock", "at": "2025-03-02T12:00:00Z"}',
    ]
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(lines) + b"\n")
    produce(segments_env, events, "2025-04-01T00:00:00Z")
    records = read_topic(segments_env["SEGMENTS_KAFKA_BOOTSTRAP"], topics.purchases)
    partitions = int(segments_env["SEGMENTS_PARTITIONS"])
    for record in records:
        if record.key is not None:
            assert record.partition == (murmur2(record.key) & 0x7FFFFFFF) % partitions
    by_partition: dict[int, list[bytes]] = {}
    for record in records:
        by_partition.setdefault(record.partition, []).append(record.value or b"")
    mark = b'{"type":"clock","at":"2025-04-01T00:00:00Z"}'
    input_mark = lines[5]
    for partition in range(partitions):
        values = by_partition[partition]
        assert values[-1] == mark, "the --as-of mark closes every partition"
        assert values.count(input_mark) == 1, "a clock mark of the input reaches every partition"
    order = [record.value for record in records if record.key == b"c-1"]
    assert order == [lines[1], lines[0]]
    c2 = [record.value for record in records if record.key == b"c-2"]
    assert c2 == [lines[2], lines[3], lines[4]]


def test_produce_names_a_line_kafka_refused_and_exits_non_zero(
    segments_env: dict[str, str], topics: object, tmp_path: Path
) -> None:
    """Issue 9: one 2 MiB line among 10 printed "produced 11 messages", exit 0; 10 landed."""
    lines = [_event(f"e{n}", f"c-{n}", "2025-03-01T10:00:00Z") for n in range(10)]
    oversize = b'{"event_id": "big", "customer_id": "c-big", "pad": "' + b"x" * (2 << 20) + b'"}'
    lines.insert(4, oversize)  # line 5 of the file
    events = tmp_path / "events.jsonl"
    events.write_bytes(b"\n".join(lines) + b"\n")
    result = segments_result(
        segments_env, "produce", "--input", str(events), "--as-of", "2025-04-01T00:00:00Z"
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert "line 5: not produced: " in result.stderr
    assert "2097" in result.stderr  # the size Kafka's client refused
    assert "produced 10 messages" in result.stderr
    assert "1 of 11 input lines could not be produced (clock marks not sent)" in result.stderr
    records = read_topic(segments_env["SEGMENTS_KAFKA_BOOTSTRAP"], topics.purchases)
    assert sorted(record.value for record in records) == sorted(lines[:4] + lines[5:])


def test_produce_with_no_broker_says_so_in_one_line(
    segments_env: dict[str, str], tmp_path: Path
) -> None:
    """Issue 9: with the broker down `produce` printed a 33-line traceback."""
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    events = tmp_path / "events.jsonl"
    events.write_bytes(_event("e1", "c-1", "2025-03-01T10:00:00Z") + b"\n")
    result = segments_result(
        {**segments_env, "SEGMENTS_KAFKA_BOOTSTRAP": address}, "produce", "--input", str(events)
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(error_lines) == 1, result.stderr
    assert error_lines[0].startswith("Error: cannot reach Kafka at " + address)
