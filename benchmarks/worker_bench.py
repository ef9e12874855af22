"""End-to-end benchmark of `segments worker` beside a bare Faust baseline, in the same run.

    python benchmarks/worker_bench.py [--customers 6000 --days 600]   # ~22,600 events

Throughput: both workers read the same backlog in `purchases` (produced
first, with `segments produce --as-of`); rate = messages / (time from the
first commit to the last), so start-up and rebalance are excluded. The
baseline is a Faust app with the same settings whose agent only increments a
RocksDB table counter per event.

Latency: with the product worker running, fresh events are produced at a
steady rate below its capacity; latency = broker append time of the change in
`segment-changes` minus broker append time of the purchase that caused it
(both topics use LogAppendTime, so producer lingering is included).

Needs the local Kafka (deploy/local/services.sh up). Prints a Markdown block
for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kafka import KafkaProducer  # noqa: E402

from segments.generate import generate_events  # noqa: E402
from streams.kafka.topics import ensure_topics  # noqa: E402
from streams.settings import Topics  # noqa: E402
from tests.integration.worker_harness import (  # noqa: E402
    committed_offsets,
    end_offsets,
    free_port,
    read_topic,
)

BOOTSTRAP = os.environ.get("SEGMENTS_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
PARTITIONS = 8


def baseline_worker() -> None:
    """The bare Faust app: same broker settings and store, an agent that counts per key."""
    import faust

    from streams.worker.app import ROCKSDB_OPTIONS, raw_schema

    prefix = os.environ["SEGMENTS_TOPIC_PREFIX"]
    app = faust.App(
        os.environ["SEGMENTS_APP_ID"],
        broker=f"kafka://{BOOTSTRAP}",
        store="rocksdb://",
        datadir=os.environ["SEGMENTS_DATA_DIR"],
        topic_partitions=PARTITIONS,
        processing_guarantee="at_least_once",
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        broker_commit_every=1000,
        broker_commit_interval=1.0,
        web_port=int(os.environ["SEGMENTS_WEB_PORT"]),
    )
    purchases = app.topic(f"{prefix}purchases", schema=raw_schema())
    counts = app.Table(
        "counts", default=None, options=ROCKSDB_OPTIONS, key_type=bytes, value_type=bytes
    )

    @app.agent(purchases, concurrency=1)
    async def count(stream: Any) -> None:
        async for event in stream.events():
            key = event.key or b"?"
            current = counts.get(key)
            counts[key] = str(int(current or b"0") + 1).encode()

    faust.Worker(app, loglevel="warning").execute_from_commandline()


def start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as handle:
        return subprocess.Popen(
            command, env={**os.environ, **env}, cwd=REPO, stdout=handle, stderr=subprocess.STDOUT
        )


def drain_rate(group: str, topic: str, timeout: float = 900) -> tuple[float, float, int]:
    """Poll the group's commits: (messages per second, seconds, messages) first->last commit."""
    ends = end_offsets(BOOTSTRAP, topic)
    total = sum(ends.values())
    first_time = first_done = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            committed = committed_offsets(BOOTSTRAP, group, topic)
        except Exception:
            committed = {}
        done = sum(max(0, committed.get(p, 0)) for p in ends)
        now = time.monotonic()
        if done > 0 and first_time is None:
            first_time, first_done = now, done
        if done >= total and first_time is not None:
            seconds = now - first_time
            measured = total - (first_done or 0)
            return measured / seconds if seconds else float("inf"), seconds, measured
        time.sleep(0.1)
    raise TimeoutError(f"group {group} did not drain {topic}")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def wait_ready(port: int, process: subprocess.Popen[bytes], timeout: float = 90) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("worker exited")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as r:
                if r.status == 200:
                    return
        except Exception:
            pass
        time.sleep(0.2)
    raise TimeoutError("worker not ready")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=6_000)
    parser.add_argument("--days", type=int, default=600, help="of generated traffic")
    parser.add_argument("--latency-events", type=int, default=3_000)
    parser.add_argument("--latency-rate", type=float, default=200.0, help="events per second")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="run the product worker under pyinstrument (profile.txt in the work dir);"
        " no baseline, no latency run",
    )
    parser.add_argument("--baseline-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.baseline_worker:
        baseline_worker()
        return

    work = Path(tempfile.mkdtemp(prefix="worker-bench-"))
    run = uuid.uuid4().hex[:8]
    prefix = f"worker-bench-{run}."
    topics = Topics(prefix)
    rules = REPO / "segments" / "data" / "example_rules.yaml"
    events = work / "events.jsonl"
    events.write_bytes(
        b"".join(line + b"\n" for line in generate_events(args.customers, args.days, seed=3))
    )
    base_env = {
        "SEGMENTS_KAFKA_BOOTSTRAP": BOOTSTRAP,
        "SEGMENTS_TOPIC_PREFIX": prefix,
        "SEGMENTS_PARTITIONS": str(PARTITIONS),
        "SEGMENTS_RULES": str(rules),
        "SEGMENTS_CLOCK": "event",
    }
    ensure_topics(BOOTSTRAP, topics, PARTITIONS)
    subprocess.run(
        [sys.executable, "-m", "streams", "produce", "--input", str(events),
         "--as-of", "2026-12-01T00:00:00Z"],
        env={**os.environ, **base_env}, cwd=REPO, check=True, capture_output=True,
    )  # fmt: skip
    results: dict[str, Any] = {}
    runs = [
        ("baseline", [sys.executable, __file__, "--baseline-worker"]),
        ("product", [sys.executable, "-m", "streams", "worker"]),
    ]
    if args.profile:
        profiler = [sys.executable, "-m", "pyinstrument", "-r", "text", "--show-all"]
        output = ["-o", str(work / "profile.txt"), "-m", "streams", "worker"]
        runs = [("product", profiler + output)]
    for name, command in runs:
        port = free_port()
        env = {
            **base_env,
            "SEGMENTS_APP_ID": f"{prefix}{name}",
            "SEGMENTS_DATA_DIR": str(work / f"{name}-data"),
            "SEGMENTS_WEB_PORT": str(port),
        }
        process = start(command, env, work / f"{name}.log")
        try:
            rate, seconds, measured = drain_rate(f"{prefix}{name}", topics.purchases)
        finally:
            stop(process)
        results[name] = {"rate": rate, "seconds": seconds, "messages": measured}
        print(f"{name}: {rate:.0f} msg/s ({measured} messages in {seconds:.1f} s)", flush=True)

    if args.profile:
        print(f"profile: {work / 'profile.txt'}")
        return

    # Latency: a fresh prefix, the product worker ready, events produced at a steady rate.
    latency_prefix = f"worker-bench-{run}-latency."
    latency_topics = Topics(latency_prefix)
    port = free_port()
    env = {
        **base_env,
        "SEGMENTS_TOPIC_PREFIX": latency_prefix,
        "SEGMENTS_APP_ID": f"{latency_prefix}product",
        "SEGMENTS_DATA_DIR": str(work / "latency-data"),
        "SEGMENTS_WEB_PORT": str(port),
    }
    # Broker append times on both ends: a change counts as published when Kafka
    # has it, not when the worker handed it to its producer (which lingers).
    _create_topics(
        [latency_topics.purchases, latency_topics.segment_changes],
        {"message.timestamp.type": "LogAppendTime"},
    )
    ensure_topics(BOOTSTRAP, latency_topics, PARTITIONS)
    process = start([sys.executable, "-m", "streams", "worker"], env, work / "latency.log")
    try:
        wait_ready(port, process)
        fresh = [orjson.loads(line) for line in generate_events(args.customers, args.days, seed=4)][
            : args.latency_events
        ]
        producer = KafkaProducer(bootstrap_servers=BOOTSTRAP, acks="all", linger_ms=0)
        interval = 1.0 / args.latency_rate
        began = time.monotonic()
        for index, event in enumerate(fresh):
            delay = began + index * interval - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            producer.send(
                latency_topics.purchases,
                key=event["customer_id"].encode(),
                value=orjson.dumps(event),
            )
        producer.flush()
        producer.close()
        drain_rate(f"{latency_prefix}product", latency_topics.purchases)
    finally:
        stop(process)
    purchase_stamps = _timestamps(latency_topics.purchases)
    seen: set[str] = set()
    latencies = []
    for record in read_topic(BOOTSTRAP, latency_topics.segment_changes):
        change = orjson.loads(record.value or b"{}")
        if change["event_id"] and change["change_id"] not in seen:
            seen.add(change["change_id"])
            latencies.append(record.timestamp - purchase_stamps[change["event_id"]])
    _delete_kafka_names(f"worker-bench-{run}")
    results["latency_ms"] = {
        "p50": statistics.median(latencies),
        "p99": percentile(latencies, 0.99),
        "max": max(latencies),
        "changes": len(latencies),
        "rate": args.latency_rate,
    }
    ratio = results["product"]["rate"] / results["baseline"]["rate"]
    print()
    print(f"### Streaming worker ({time.strftime('%Y-%m-%d')})")
    print()
    print(f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, {platform.platform()}; Kafka on 127.0.0.1 (same host), "
          f"{PARTITIONS} partitions, one worker, event clock, example rule set.")  # fmt: skip
    print()
    print("| run | messages | seconds | messages/s |")
    print("|---|---:|---:|---:|")
    for name in ("baseline", "product"):
        r = results[name]
        print(f"| {name} | {r['messages']} | {r['seconds']:.1f} | {r['rate']:.0f} |")
    print()
    print(f"Product / baseline throughput: {ratio:.0%}.")
    lat = results["latency_ms"]
    print(
        f"Latency produce -> change at {lat['rate']:.0f} events/s ({lat['changes']} changes): "
        f"p50 {lat['p50']:.0f} ms, p99 {lat['p99']:.0f} ms, max {lat['max']:.0f} ms."
    )
    print(f"\n(work dir {work}; logs there)")


def _create_topics(names: list[str], config: dict[str, str]) -> None:
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic

    admin = KafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    try:
        admin.create_topics([NewTopic(name, PARTITIONS, 1, topic_configs=config) for name in names])
    finally:
        admin.close()


def _delete_kafka_names(prefix: str) -> None:
    """The run's topics and consumer groups (all named with this run's prefix)."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    try:
        names = [name for name in admin.list_topics() if name.startswith(prefix)]
        if names:
            admin.delete_topics(names)
        groups = [group for group, _ in admin.list_consumer_groups() if group.startswith(prefix)]
        if groups:
            admin.delete_consumer_groups(groups)
    finally:
        admin.close()


def _timestamps(topic: str) -> dict[str, int]:
    return {
        orjson.loads(record.value)["event_id"]: record.timestamp
        for record in read_topic(BOOTSTRAP, topic)
    }


if __name__ == "__main__":
    main()
