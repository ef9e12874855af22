"""End-to-end benchmark of `segments worker` beside a bare Faust baseline, in the same run.

    python benchmarks/worker_bench.py [--customers 6000 --days 600]   # ~23,900 events
    python benchmarks/worker_bench.py --rounds 3 \
        --product-checkout ../old --product-checkout ../new   # A/B of two commits

Throughput: every contender reads the same backlog in `purchases` (produced
first, with `segments produce --as-of`), each alone and as its own consumer
group; rate = messages / (time from the first commit to the last), so
start-up and rebalance are excluded. The baseline is a Faust app with the
same settings whose agent only increments a RocksDB table counter per event.
The product is `segments worker` of this checkout, or, with
`--product-checkout DIR` (repeatable), of each of those checkouts of the
repository, run with its own `.venv` (scripts/setup-venv.sh) and its own
example rules and labelled by its commit. With `--rounds N` every contender
runs N times, interleaved and in a rotating order, so that machine noise
falls on all of them alike. Each product run's changes are read back from
`segment-changes` and compared between contenders.

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
import re
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kafka import KafkaConsumer, KafkaProducer, TopicPartition  # noqa: E402

from segments.generate import generate_events  # noqa: E402
from streams.kafka.connection import KafkaConnection  # noqa: E402
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


@dataclass(frozen=True)
class Contender:
    """One worker to measure: how to start it, from which checkout, with which rules."""

    label: str
    command: tuple[str, ...]
    checkout: Path
    rules: Path | None = None  # product only: SEGMENTS_RULES for this checkout

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.label.lower()).strip("-")


def product_contender(checkout: Path, command: tuple[str, ...] = ()) -> Contender:
    """`segments worker` of `checkout` with its own interpreter, labelled by its commit."""
    checkout = checkout.resolve()
    python = checkout / ".venv" / "bin" / "python"
    if checkout != REPO and not python.exists():
        raise SystemExit(f"{checkout}: no .venv; run scripts/setup-venv.sh there first")
    interpreter = sys.executable if checkout == REPO else str(python)
    return Contender(
        label=f"product {checkout_commit(checkout)}",
        command=command or (interpreter, "-m", "streams", "worker"),
        checkout=checkout,
        rules=checkout / "segments" / "data" / "example_rules.yaml",
    )


def checkout_commit(checkout: Path) -> str:
    """Short commit of the checkout's HEAD, `+changes` when its tracked files differ from it."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(checkout), *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    commit = git("rev-parse", "--short=7", "HEAD")
    dirty = git("status", "--porcelain", "--untracked-files=no")
    return f"{commit}+changes" if dirty else commit


def start(
    command: tuple[str, ...], env: dict[str, str], log: Path, cwd: Path = REPO
) -> subprocess.Popen[bytes]:
    with log.open("wb") as handle:
        return subprocess.Popen(
            command, env={**os.environ, **env}, cwd=cwd, stdout=handle, stderr=subprocess.STDOUT
        )


@dataclass(frozen=True)
class Drain:
    """One drain of a backlog, from the group's first offset commit to its last."""

    rate: float  # messages per second
    seconds: float
    messages: int
    cpu_seconds: float  # user + system CPU of the worker process over the same span


def drain_rate(group: str, topic: str, pid: int, timeout: float = 900) -> Drain:
    """Poll the group's commits (and the worker's CPU time) until `topic` is committed."""
    ends = end_offsets(BOOTSTRAP, topic)
    total = sum(ends.values())
    first_time = first_done = first_cpu = None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            committed = committed_offsets(BOOTSTRAP, group, topic)
        except Exception:
            committed = {}
        done = sum(max(0, committed.get(p, 0)) for p in ends)
        now, cpu = time.monotonic(), cpu_seconds(pid)
        if done > 0 and first_time is None:
            first_time, first_done, first_cpu = now, done, cpu
        if done >= total and first_time is not None:
            seconds = now - first_time
            measured = total - (first_done or 0)
            rate = measured / seconds if seconds else float("inf")
            return Drain(rate, seconds, measured, cpu - (first_cpu or 0.0))
        time.sleep(0.1)
    raise TimeoutError(f"group {group} did not drain {topic}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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


def read_changes(topic: str, starts: dict[int, int], ends: dict[int, int]) -> list[str]:
    """The change ids of the records of `topic` between two sets of end offsets."""
    return [orjson.loads(value)["change_id"] for value in read_values(topic, starts, ends)]


def read_values(topic: str, starts: dict[int, int], ends: dict[int, int]) -> list[bytes]:
    """The values of the records of `topic` between two sets of end offsets."""
    consumer = KafkaConsumer(
        bootstrap_servers=BOOTSTRAP,
        enable_auto_commit=False,
        fetch_max_bytes=1 << 20,
        max_partition_fetch_bytes=256 << 10,
    )
    values: list[bytes] = []
    try:
        remaining = {
            TopicPartition(topic, p): end for p, end in ends.items() if end > starts.get(p, 0)
        }
        if not remaining:
            return values
        consumer.assign(list(remaining))
        for tp in remaining:
            consumer.seek(tp, starts.get(tp.partition, 0))
        deadline = time.monotonic() + 120
        while remaining:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{topic} not read to {ends}")
            for tp, messages in consumer.poll(timeout_ms=1000).items():
                end = remaining.get(tp)
                if end is None:
                    continue
                values.extend(m.value or b"{}" for m in messages if m.offset < end)
                if consumer.position(tp) >= end:
                    del remaining[tp]
                    consumer.pause(tp)
    finally:
        consumer.close()
    return values


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
        "--rounds", type=int, default=1, help="runs of every contender, interleaved"
    )
    parser.add_argument(
        "--product-checkout",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="measure `segments worker` of this checkout of the repository (its own .venv);"
        " repeatable; default: this checkout. The latency run uses the last one.",
    )
    parser.add_argument("--no-latency", action="store_true", help="throughput only")
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
    products = [product_contender(path) for path in args.product_checkout or [REPO]]
    contenders = [
        Contender("baseline", (sys.executable, __file__, "--baseline-worker"), REPO),
        *products,
    ]
    rounds = args.rounds
    if args.profile:
        profiler = (sys.executable, "-m", "pyinstrument", "-r", "text", "--show-all")
        output = ("-o", str(work / "profile.txt"), "-m", "streams", "worker")
        contenders, rounds = [product_contender(REPO, profiler + output)], 1
    if len({c.slug for c in contenders}) < len(contenders):
        raise SystemExit("two contenders share a label (the same commit twice?)")
    events = work / "events.jsonl"
    events.write_bytes(
        b"".join(line + b"\n" for line in generate_events(args.customers, args.days, seed=3))
    )
    base_env = {
        "SEGMENTS_KAFKA_BOOTSTRAP": BOOTSTRAP,
        "SEGMENTS_TOPIC_PREFIX": prefix,
        "SEGMENTS_PARTITIONS": str(PARTITIONS),
        "SEGMENTS_RULES": str(REPO / "segments" / "data" / "example_rules.yaml"),
        "SEGMENTS_CLOCK": "event",
    }
    ensure_topics(KafkaConnection(BOOTSTRAP), topics, PARTITIONS)
    subprocess.run(
        [sys.executable, "-m", "streams", "produce", "--input", str(events),
         "--as-of", "2026-12-01T00:00:00Z"],
        env={**os.environ, **base_env}, cwd=REPO, check=True, capture_output=True,
    )  # fmt: skip
    backlog = sum(end_offsets(BOOTSTRAP, topics.purchases).values())
    print(f"backlog: {backlog} messages in {topics.purchases}; load {_load()}", flush=True)
    load_before = _load()
    runs: list[dict[str, Any]] = []
    for index in range(rounds):
        shift = index % len(contenders)
        for contender in contenders[shift:] + contenders[:shift]:
            runs.append(measure(contender, index + 1, prefix, topics, base_env, work))
    load_after = _load()

    if args.profile:
        print(f"profile: {work / 'profile.txt'}")
        return

    latency: dict[str, Any] | None = None
    if not args.no_latency:
        latency = measure_latency(
            products[-1], f"worker-bench-{run}-latency.", base_env, work, args
        )
    _delete_kafka_names(f"worker-bench-{run}")
    report(contenders, runs, rounds, latency, (load_before, load_after), backlog)
    print(f"\n(work dir {work}; logs there)")


def measure(
    contender: Contender,
    round_: int,
    prefix: str,
    topics: Topics,
    base_env: dict[str, str],
    work: Path,
) -> dict[str, Any]:
    """One drain of the backlog by one contender as a fresh consumer group."""
    name = f"{contender.slug}-r{round_}"
    group = f"{prefix}{name}"
    env = {
        **base_env,
        "SEGMENTS_APP_ID": group,
        "SEGMENTS_DATA_DIR": str(work / f"{name}-data"),
        "SEGMENTS_WEB_PORT": str(free_port()),
    }
    product = contender.rules is not None
    if product:
        env["SEGMENTS_RULES"] = str(contender.rules)
        # The ticks topic is shared by the run's workers: each reads only its own ticks.
        _commit_at_end(group, topics.ticks)
    changes_before = end_offsets(BOOTSTRAP, topics.segment_changes)
    load = os.getloadavg()[0]
    process = start(contender.command, env, work / f"{name}.log", contender.checkout)
    try:
        drain = drain_rate(group, topics.purchases, process.pid)
    finally:
        stop(process)
    cpu_us = drain.cpu_seconds / drain.messages * 1e6 if drain.messages else float("nan")
    result: dict[str, Any] = {
        "label": contender.label,
        "round": round_,
        "rate": drain.rate,
        "cpu_us": cpu_us,
        "load": load,
    }
    line = (
        f"round {round_} {contender.label}: {drain.rate:.0f} msg/s ({drain.messages} in"
        f" {drain.seconds:.1f} s), {cpu_us:.0f} us CPU/msg"
    )
    if product:
        changes_after = end_offsets(BOOTSTRAP, topics.segment_changes)
        ids = read_changes(topics.segment_changes, changes_before, changes_after)
        result["changes"] = len(ids)
        result["change_ids"] = frozenset(ids)
        line += f", {len(ids)} changes ({len(result['change_ids'])} distinct)"
    print(f"{line}; load {load:.2f}", flush=True)
    return result


def measure_latency(
    product: Contender,
    prefix: str,
    base_env: dict[str, str],
    work: Path,
    args: Any,
    ready: Callable[[int, subprocess.Popen[bytes]], None] | None = None,
) -> dict[str, Any]:
    """A fresh prefix, the product worker ready, events produced at a steady rate.

    `ready(web port, process)` waits until the worker consumes (default: its /readyz).
    """
    latency_topics = Topics(prefix)
    port = free_port()
    env = {
        **base_env,
        "SEGMENTS_TOPIC_PREFIX": prefix,
        "SEGMENTS_RULES": str(product.rules),
        "SEGMENTS_APP_ID": f"{prefix}product",
        "SEGMENTS_DATA_DIR": str(work / "latency-data"),
        "SEGMENTS_WEB_PORT": str(port),
    }
    # Broker append times on both ends: a change counts as published when Kafka
    # has it, not when the worker handed it to its producer (which lingers).
    _create_topics(
        [latency_topics.purchases, latency_topics.segment_changes],
        {"message.timestamp.type": "LogAppendTime"},
    )
    ensure_topics(KafkaConnection(BOOTSTRAP), latency_topics, PARTITIONS)
    process = start(product.command, env, work / "latency.log", product.checkout)
    try:
        (ready or wait_ready)(port, process)
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
        drain_rate(f"{prefix}product", latency_topics.purchases, process.pid)
    finally:
        stop(process)
    purchase_stamps = _timestamps(latency_topics.purchases)
    seen: set[str] = set()
    latencies: list[float] = []
    for record in read_topic(BOOTSTRAP, latency_topics.segment_changes):
        change = orjson.loads(record.value or b"{}")
        if change["event_id"] and change["change_id"] not in seen:
            seen.add(change["change_id"])
            latencies.append(record.timestamp - purchase_stamps[change["event_id"]])
    return {
        "label": product.label,
        "p50": statistics.median(latencies),
        "p99": percentile(latencies, 0.99),
        "max": max(latencies),
        "changes": len(latencies),
        "rate": args.latency_rate,
    }


def report(
    contenders: list[Contender],
    runs: list[dict[str, Any]],
    rounds: int,
    latency: dict[str, Any] | None,
    loads: tuple[str, str],
    backlog: int,
) -> None:
    """The Markdown block for BENCHMARKS.md."""
    labels = [c.label for c in contenders]
    rate = {(r["label"], r["round"]): r["rate"] for r in runs}
    print()
    print(f"### Streaming worker ({time.strftime('%Y-%m-%d %H:%M')})")
    print()
    print(f"Machine: {platform.machine()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, {platform.platform()}; Kafka on 127.0.0.1 (same host), "
          f"{PARTITIONS} partitions, one worker, event clock, example rule set; backlog "
          f"{backlog} messages; load average (1/5/15 min) {loads[0]} before, "
          f"{loads[1]} after.")  # fmt: skip
    print()
    cpu = {(r["label"], r["round"]): r["cpu_us"] for r in runs}
    print("Each cell: messages/s, and the worker's CPU time (user + system) per message.")
    print()
    print("| round (order) | " + " | ".join(labels) + " |")
    print("|---|" + "---:|" * len(labels))
    for index in range(1, rounds + 1):
        order = [r["label"] for r in runs if r["round"] == index]
        shown = " > ".join(label.removeprefix("product ") for label in order)
        cells = " | ".join(
            f"{rate[(label, index)]:,.0f} msg/s, {cpu[(label, index)]:,.0f} µs" for label in labels
        )
        print(f"| {index} ({shown}) | {cells} |")
    medians = {label: statistics.median(rate[(label, i)] for i in range(1, rounds + 1))
               for label in labels}  # fmt: skip
    cpu_medians = {label: statistics.median(cpu[(label, i)] for i in range(1, rounds + 1))
                   for label in labels}  # fmt: skip
    cells = " | ".join(
        f"**{medians[label]:,.0f}** msg/s, **{cpu_medians[label]:,.0f}** µs" for label in labels
    )
    print(f"| median | {cells} |")
    print()
    for contender in contenders[1:]:
        label = contender.label
        ratios = [rate[(label, i)] / rate[("baseline", i)] for i in range(1, rounds + 1)]
        shown = ", ".join(f"{ratio:.0%}" for ratio in ratios)
        overall = medians[label] / medians["baseline"]
        print(f"{label} / baseline throughput: {shown} by round; medians {overall:.0%}.")
    for label in labels[2:]:
        first = labels[1]
        print(
            f"{label} against {first} (medians): throughput"
            f" {medians[label] / medians[first] - 1:+.0%}, CPU per message"
            f" {cpu_medians[label] / cpu_medians[first] - 1:+.0%}."
        )
    products = [r for r in runs if "changes" in r]
    counts = sorted({(r["label"], r["changes"]) for r in products})
    same = len({r["change_ids"] for r in products}) == 1
    print(
        "Changes per product run: "
        + ", ".join(f"{label} {count}" for label, count in counts)
        + ("; the same change ids in every run." if same else "; the change ids DIFFER.")
    )
    if latency is not None:
        print(
            f"Latency produce -> change, {latency['label']}, at {latency['rate']:.0f} events/s "
            f"({latency['changes']} changes): p50 {latency['p50']:.0f} ms, "
            f"p99 {latency['p99']:.0f} ms, max {latency['max']:.0f} ms."
        )


def _load() -> str:
    return " / ".join(f"{value:.2f}" for value in os.getloadavg())


def _commit_at_end(group: str, topic: str) -> None:
    """Commit `group`'s offsets on `topic` at its ends, before the group's worker starts."""
    from kafka.structs import OffsetAndMetadata

    ends = end_offsets(BOOTSTRAP, topic)
    consumer = KafkaConsumer(bootstrap_servers=BOOTSTRAP, group_id=group, enable_auto_commit=False)
    try:
        consumer.commit(
            {TopicPartition(topic, p): OffsetAndMetadata(end, "", -1) for p, end in ends.items()}
        )
    finally:
        consumer.close()


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
        orjson.loads(record.value or b"{}")["event_id"]: record.timestamp
        for record in read_topic(BOOTSTRAP, topic)
    }


if __name__ == "__main__":
    main()
