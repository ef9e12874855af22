"""Real `segments worker` subprocesses for integration tests: start, wait ready, kill, drain, read.

Everything waits on a condition with a deadline (tests.helpers.wait_until); no sleeps.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from segments.clock import parse_instant
from segments.replay import read_lines, replay
from segments.rules.evaluator import compile_rules
from segments.rules.ruleset import load_ruleset
from streams.kafka.connection import KafkaConnection
from tests.helpers import wait_until

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class WorkerProcess:
    """One `segments worker` subprocess with its own web port; its log goes to a file.

    `arguments` follow the Python interpreter; the smoke tests run a bare Faust app with it.
    """

    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    port: int = field(default_factory=free_port)
    arguments: tuple[str, ...] = ("-m", "streams", "worker")

    def start(self) -> WorkerProcess:
        env = {**os.environ, **self.env, "SEGMENTS_WEB_PORT": str(self.port)}
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, *self.arguments],
            env=env,
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def ready(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"worker exited with {self.process.returncode}:\n{self.tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/readyz", timeout=1) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            return False

    def wait_ready(self, timeout: float = 60) -> None:
        try:
            wait_until(self.ready, timeout, interval=0.2, what="worker /readyz")
        except AssertionError as error:
            raise AssertionError(f"{error}\n{self.tail()}") from None

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs, like a crashed machine."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(30)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM and wait for a clean exit; returns the exit code."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(30)
                raise AssertionError(f"worker ignored SIGTERM for {timeout}s") from None
        return int(self.process.returncode)

    def tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def dump_tasks(self, timeout: float = 10) -> str:
        """The stacks of every thread and asyncio task, from mode's SIGUSR1 handler.

        For a failing test: what a worker that stopped making progress waits on.
        """
        if self.process is None or self.process.poll() is not None:
            return "(worker not running)"
        before = len(self.log_text())
        self.process.send_signal(signal.SIGUSR1)
        try:
            wait_until(lambda: "THREAD" in self.log_text()[before:], timeout, interval=0.2)
        except AssertionError:
            return f"(no task dump within {timeout:g}s)"
        return self.log_text()[before:]


@contextlib.contextmanager
def running_workers(env: Mapping[str, str], log_dir: Path, count: int = 1) -> Iterator[list[Any]]:
    """Start `count` workers and yield them; whatever is still running at the end is killed."""
    workers = [
        WorkerProcess(dict(env), log_dir / f"worker-{index}.log").start() for index in range(count)
    ]
    try:
        yield workers
    finally:
        for worker in workers:
            worker.kill()


def segments_result(
    env: Mapping[str, str], *args: str, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run `segments ARGS` as a subprocess and return how it ended, whatever its exit."""
    return subprocess.run(
        [sys.executable, "-m", "streams", *args],
        env={**os.environ, **env},
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_cli(env: Mapping[str, str], *args: str, timeout: float = 300) -> str:
    """Run `segments ARGS` as a subprocess; fail with its output when it fails."""
    result = subprocess.run(
        [sys.executable, "-m", "streams", *args],
        env={**os.environ, **env},
        cwd=REPO_ROOT,
        capture_output=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(
            f"segments {' '.join(args)} exited {result.returncode}:\n"
            f"{result.stdout.decode(errors='replace')}{result.stderr.decode(errors='replace')}"
        )
    return result.stderr.decode(errors="replace")


def produce(env: Mapping[str, str], events: Path, as_of: str | None = None) -> str:
    args = ["produce", "--input", str(events)]
    if as_of is not None:
        args += ["--as-of", as_of]
    return run_cli(env, *args)


# Where a helper reads from: `host:port` of a plaintext broker, or a secured connection.
Kafka = str | KafkaConnection


def kafka_args(kafka: Kafka, **extra: Any) -> dict[str, Any]:
    """kafka-python's arguments for `kafka`, through the product's own mapping."""
    connection = kafka if isinstance(kafka, KafkaConnection) else KafkaConnection(kafka)
    return connection.kafka_python_args(**extra)


def end_offsets(bootstrap: Kafka, topic: str) -> dict[int, int]:
    consumer = KafkaConsumer(**kafka_args(bootstrap))
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        ends = consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
        return {tp.partition: offset for tp, offset in ends.items()}
    finally:
        consumer.close()


def committed_offsets(bootstrap: Kafka, group: str, topic: str) -> dict[int, int]:
    admin = KafkaAdminClient(**kafka_args(bootstrap))
    try:
        offsets = admin.list_consumer_group_offsets(group)
    finally:
        admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if tp.topic == topic}


def wait_drained(
    bootstrap: Kafka,
    group: str,
    topic: str,
    timeout: float = 240,
    workers: tuple[WorkerProcess, ...] = (),
) -> None:
    """Until the worker group has committed every message of `topic`.

    Faust flushes its producer before committing offsets, so once the input is
    committed every change it caused is in Kafka. On timeout the error names
    the committed and end offsets of each partition, with the task stacks of
    `workers`.
    """
    ends = end_offsets(bootstrap, topic)

    def drained() -> bool:
        committed = committed_offsets(bootstrap, group, topic)
        return all(committed.get(p, -1) >= end for p, end in ends.items() if end > 0)

    try:
        wait_until(drained, timeout, interval=0.5, what=f"group {group} committed all of {topic}")
    except AssertionError as error:
        committed = committed_offsets(bootstrap, group, topic)
        offsets = ", ".join(f"{p}: {committed.get(p)}/{end}" for p, end in sorted(ends.items()))
        dumps = "\n".join(worker.dump_tasks() for worker in workers)
        raise AssertionError(f"{error}\ncommitted/end by partition: {offsets}\n{dumps}") from None


def drain_with_one_worker(
    env: Mapping[str, str],
    log_dir: Path,
    topics: Any,
    segments: list[str],
    kafka: KafkaConnection | None = None,
) -> tuple[Published, list[Record]]:
    """One worker reads everything already produced to `purchases`, then stops cleanly.

    Returns what it published (for `segments`) and the records of the dead-letter topic;
    `kafka` reads them from a secured broker (default: plaintext SEGMENTS_KAFKA_BOOTSTRAP).
    """
    bootstrap: Kafka = kafka or env["SEGMENTS_KAFKA_BOOTSTRAP"]
    with running_workers(env, log_dir) as (worker,):
        worker.wait_ready()
        wait_drained(bootstrap, env["SEGMENTS_APP_ID"], topics.purchases, workers=(worker,))
        published = read_published(bootstrap, topics, segments)
        dead = read_topic(bootstrap, topics.purchases_dlq)
        assert worker.stop() == 0
    return published, dead


@dataclass(frozen=True)
class Record:
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]
    timestamp: int = 0  # Kafka's CreateTime, epoch milliseconds


def read_topic(bootstrap: Kafka, topic: str, timeout: float = 120) -> list[Record]:
    """Every record now in `topic`, in partition then offset order.

    Fails after `timeout` seconds if a partition's end was not reached.
    """
    deadline = time.monotonic() + timeout
    ends = end_offsets(bootstrap, topic)
    consumer = KafkaConsumer(
        **kafka_args(
            bootstrap,
            enable_auto_commit=False,
            # kafka-python refuses responses above a few MB; keep fetches small.
            fetch_max_bytes=1 << 20,
            max_partition_fetch_bytes=256 << 10,
        )
    )
    try:
        tps = [TopicPartition(topic, p) for p, end in ends.items() if end > 0]
        if not tps:
            return []
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        records: list[Record] = []
        remaining = {tp for tp in tps}
        while remaining:
            batch = consumer.poll(timeout_ms=1000)
            for tp, messages in batch.items():
                for m in messages:
                    records.append(
                        Record(
                            m.partition,
                            m.offset,
                            m.key,
                            m.value,
                            tuple(m.headers or ()),
                            m.timestamp,
                        )
                    )
                if consumer.position(tp) >= ends[tp.partition]:
                    remaining.discard(tp)
            if remaining and time.monotonic() >= deadline:
                positions = {tp.partition: consumer.position(tp) for tp in remaining}
                raise AssertionError(
                    f"{topic} not read to its end within {timeout:g}s: positions {positions}"
                    f" of ends {ends}"
                )
        return sorted(records, key=lambda r: (r.partition, r.offset))
    finally:
        consumer.close()


@dataclass
class Published:
    """What the workers published: changes deduped by change_id, memberships from the topic."""

    changes: list[dict[str, Any]]  # first occurrence of each change_id, in partition order
    by_partition: dict[int, list[dict[str, Any]]]
    copies: int  # how many change messages were published in all
    memberships: dict[str, list[str]]


def read_published(bootstrap: Kafka, topics: Any, segments: list[str]) -> Published:
    seen: dict[str, dict[str, Any]] = {}
    by_partition: dict[int, list[dict[str, Any]]] = defaultdict(list)
    records = read_topic(bootstrap, topics.segment_changes)
    for record in records:
        assert record.value is not None
        change = orjson.loads(record.value)
        first = seen.get(change["change_id"])
        if first is None:
            seen[change["change_id"]] = change
            by_partition[record.partition].append(change)
        else:
            assert first == change, f"change {change['change_id']} published with two contents"
    current: dict[bytes, bytes | None] = {}
    for record in read_topic(bootstrap, topics.segment_memberships):
        assert record.key is not None
        current[record.key] = record.value
    memberships: dict[str, list[str]] = {name: [] for name in segments}
    for key, value in current.items():
        if value is not None:
            customer_id, _, segment = key.decode().rpartition("|")
            memberships.setdefault(segment, []).append(customer_id)
    for members in memberships.values():
        members.sort()
    return Published(list(seen.values()), dict(by_partition), len(records), memberships)


def memberships_from_changes(
    changes: list[dict[str, Any]], segments: list[str]
) -> dict[str, list[str]]:
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for change in changes:
        key = (change["customer_id"], change["segment"])
        if key not in latest or change["seq"] > latest[key]["seq"]:
            latest[key] = change
    result: dict[str, list[str]] = {name: [] for name in segments}
    for (customer_id, segment), change in latest.items():
        if change["change"] == "entered":
            result.setdefault(segment, []).append(customer_id)
    for members in result.values():
        members.sort()
    return result


@dataclass
class Reference:
    changes: list[dict[str, Any]]
    memberships: dict[str, list[str]]
    summary: dict[str, Any]


def replay_reference(rules: Path, events: Path, out: Path, as_of: str | None) -> Reference:
    """`segments replay` of the same input: what the worker must end in.

    As the command does, replay gets the wall clock of the run: an event more than
    max_future_skew ahead of it is rejected `too_far_ahead`, as the worker rejects it
    in either clock mode (decision 0007). Without it replay would apply such an event.
    """
    compiled = compile_rules(load_ruleset(rules))
    as_of_instant = parse_instant(as_of.replace("Z", "+00:00")) if as_of else None
    wall = time.time_ns() // 1000
    replay(read_lines(events), compiled, out, as_of=as_of_instant, wall=wall)
    changes = [orjson.loads(line) for line in (out / "changes.jsonl").read_bytes().splitlines()]
    return Reference(
        changes,
        orjson.loads((out / "memberships.json").read_bytes()),
        orjson.loads((out / "summary.json").read_bytes()),
    )


def instant(change: dict[str, Any]) -> int:
    return parse_instant(change["at"].replace("Z", "+00:00"))


def assert_equals_replay(published: Published, reference: Reference, ordered: bool = True) -> None:
    """Same changes (whole records) and memberships as replay; per partition `at` never drops."""
    by_id = {change["change_id"]: change for change in published.changes}
    expected = {change["change_id"]: change for change in reference.changes}
    missing = sorted(set(expected) - set(by_id))
    extra = sorted(set(by_id) - set(expected))
    assert not missing and not extra, f"missing {missing[:10]} ({len(missing)}), extra {extra[:10]}"
    differing = [cid for cid in expected if by_id[cid] != expected[cid]]
    assert not differing, f"{len(differing)} changes differ, e.g. {by_id[differing[0]]} != " + (
        f"{expected[differing[0]]}" if differing else ""
    )
    assert published.memberships == reference.memberships
    if ordered:
        for partition, changes in published.by_partition.items():
            instants = [instant(change) for change in changes]
            assert instants == sorted(instants), f"`at` decreases on partition {partition}"


CATEGORIES = ("Running Shoes", "Apparel", "Books", "Music", "Electronics", "Outdoor")
CURRENCIES = ("EUR", "EUR", "EUR", "USD", "GBP")
DAY = 86_400


def synthetic_events(
    customers: int, events: int, seed: int, start: str = "2025-01-01T00:00:00Z", days: int = 540
) -> list[dict[str, Any]]:
    """Seeded canonical events, unsorted: repeat buyers, both channels, discounts, returns.

    Times are shuffled within each customer so `segments produce` has to order them.
    """
    import random
    from datetime import UTC, datetime, timedelta

    rng = random.Random(seed)
    origin = datetime.fromisoformat(start.replace("Z", "+00:00")).astimezone(UTC)
    weights = [rng.paretovariate(1.2) for _ in range(customers)]
    ids = [f"c-{index:05d}" for index in range(customers)]
    buyers = ids[:] + rng.choices(ids, weights=weights, k=max(0, events - customers))
    rng.shuffle(buyers)
    purchases: dict[str, list[tuple[str, datetime, str, str]]] = defaultdict(list)
    result: list[dict[str, Any]] = []
    for number, customer_id in enumerate(buyers):
        moment = origin + timedelta(seconds=rng.randrange(days * DAY))
        channel = "online" if rng.random() < 0.4 else "pos"
        currency = rng.choice(CURRENCIES)
        previous = purchases[customer_id]
        if previous and rng.random() < 0.06:
            original_id, original_at, original_currency, total = rng.choice(previous)
            result.append(
                {
                    "event_id": f"e-{number:07d}",
                    "customer_id": customer_id,
                    "occurred_at": (original_at + timedelta(days=rng.randrange(1, 20))).isoformat(),
                    "channel": channel,
                    "type": "return",
                    "currency": original_currency,
                    "total": total if rng.random() < 0.5 else "5.00",
                    "original_event_id": original_id,
                }
            )
            continue
        lines = []
        for _ in range(rng.randrange(1, 4)):
            price = rng.randrange(300, 25000) / 100
            lines.append(
                {
                    "sku": f"sku-{rng.randrange(500)}",
                    "category": rng.choice(CATEGORIES),
                    "quantity": rng.randrange(1, 3),
                    "unit_price": f"{price:.2f}",
                    "discount": "2.00" if rng.random() < 0.15 else "0",
                }
            )
        total = sum(float(line["unit_price"]) * line["quantity"] for line in lines)
        discount = round(total * 0.1, 2) if rng.random() < 0.2 else 0.0
        total_text = f"{total - discount:.2f}"
        event_id = f"e-{number:07d}"
        previous.append((event_id, moment, currency, total_text))
        result.append(
            {
                "event_id": event_id,
                "customer_id": customer_id,
                "occurred_at": moment.isoformat().replace("+00:00", "Z"),
                "channel": channel,
                "type": "purchase",
                "currency": currency,
                "total": total_text,
                "discount_total": f"{discount:.2f}",
                "store_id": f"store-{rng.randrange(40)}" if channel == "pos" else None,
                "lines": lines,
            }
        )
    for event in result:
        if event.get("store_id") is None:
            event.pop("store_id", None)
    return result


def write_jsonl(path: Path, events: list[dict[str, Any]], raw_lines: list[bytes] = ()) -> Path:
    """Events as JSONL, with optional raw (possibly invalid) lines appended."""
    with path.open("wb") as handle:
        for event in events:
            handle.write(orjson.dumps(event) + b"\n")
        for line in raw_lines:
            handle.write(line + b"\n")
    return path
