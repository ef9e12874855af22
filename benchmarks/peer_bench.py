"""The product worker beside its peers on the same job: bare Faust, Quix Streams, a raw loop.

    make bench-peer                                   # .venv-bench, 3 rounds, ~10 minutes
    .venv-bench/bin/python benchmarks/peer_bench.py --rounds 3 --product-checkout ../other

Four contenders drain the same backlog in `purchases` (8 partitions, produced
once with `segments produce --as-of`), each alone and as its own consumer
group, in interleaved rounds whose order rotates:

- bare Faust: benchmarks/worker_bench.py's baseline, a table counter written per event;
- the product: `segments worker` of this checkout, or of each `--product-checkout`
  (each run with its checkout's own .venv, as worker_bench does);
- Quix Streams running the same job through the product's core (segments.engine):
  a stateful `apply` that keeps each customer's encoded state in Quix's state
  store and sends the changes to an output topic;
- a raw confluent-kafka loop with the same core: changes produced as they come,
  each customer's state written once per commit to a compacted topic, then the
  offsets committed.

Throughput and CPU are worker_bench's: messages / time from the group's first
offset commit to its last, and the process's CPU time over the same span. Every
job contender's changes are read back and compared, line for line, with
`segments replay` of the same input. Latency of the product (and with
`--quix-latency` of the Quix job), as worker_bench measures it: events produced
at a steady rate, broker append time of each change minus that of its purchase.

The peers keep decoded states in memory and do not rebuild their deadline
queues from their stores after a restart or a rebalance: enough for a drain from
scratch by one process, which is all this measures; the product does both.
Needs the local Kafka (deploy/local/services.sh up). Prints a Markdown block.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import worker_bench
from worker_bench import (
    BOOTSTRAP,
    PARTITIONS,
    REPO,
    Contender,
    drain_rate,
    end_offsets,
    free_port,
    product_contender,
    read_values,
    start,
    stop,
)

from segments.aggregates import CustomerState, state_from_bytes, state_to_bytes
from segments.changes import Change, TraitChange
from segments.engine import Engine
from segments.events import ClockMark, Rejection, decode_event
from segments.membership import DuplicateEvent
from segments.rules.evaluator import CompiledRules, compile_rules
from segments.rules.ruleset import load_ruleset
from streams.kafka.connection import KafkaConnection
from streams.kafka.topics import ensure_topics
from streams.settings import Topics

AS_OF = "2026-12-01T00:00:00Z"
COMMIT_INTERVAL = 1.0  # seconds, as the product's broker_commit_interval
STATE_KEY = b"state"
KINDS = ("faust", "product", "quix", "raw")

# --- the job of the Quix and raw contenders: the product's core, no Faust ------------------


class PeerStates:
    """The engine's `States` for one partition of a peer: decoded states kept in memory.

    `load(customer_id)` reads a state the process has not seen (from the peer's
    store); `save(state)` is called for every write the product would make
    (not for a tick that only moved the deadline), and `dirty` holds the
    customers written since the last `take_dirty()`.
    """

    def __init__(
        self,
        load: Callable[[str], bytes | None],
        save: Callable[[CustomerState], None] | None,
    ) -> None:
        self.kept: dict[str, CustomerState] = {}
        self.dirty: dict[str, CustomerState] = {}
        self.changes: list[Change | TraitChange] = []
        self._load = load
        self._save = save

    def get(self, customer_id: str) -> CustomerState | None:
        state = self.kept.get(customer_id)
        if state is None:
            data = self._load(customer_id)
            if data is None:
                return None
            state = self.kept[customer_id] = state_from_bytes(customer_id, data)
        return state

    def put(
        self, state: CustomerState, changes: list[Change | TraitChange], *, due_only: bool
    ) -> None:
        self.kept[state.customer_id] = state
        if not due_only:
            self.dirty[state.customer_id] = state
            if self._save is not None:
                self._save(state)
        if changes:
            self.changes.extend(changes)


class PeerJob:
    """`segments worker`'s job on the event clock, one Engine per partition, minus the shell:
    no dead letters, no membership records, no metrics (the peers write changes only)."""

    def __init__(
        self,
        rules: CompiledRules,
        load: Callable[[str], bytes | None] = lambda customer_id: None,
        save: Callable[[CustomerState], None] | None = None,
    ) -> None:
        self.rules = rules
        ruleset = rules.ruleset
        self.currencies = frozenset((ruleset.base_currency, *ruleset.rates))
        self.partitions: dict[int, tuple[Engine, PeerStates]] = {}
        self._load = load
        self._save = save

    def handle(self, partition: int, value: bytes | None) -> list[Change | TraitChange]:
        """One `purchases` message -> the changes it causes (time-driven ones included)."""
        part = self.partitions.get(partition)
        if part is None:
            states = PeerStates(self._load, self._save)
            part = self.partitions[partition] = (Engine(self.rules, states), states)
        engine, states = part
        try:
            item = decode_event(value or b"", self.currencies)
        except Rejection:
            return []
        if isinstance(item, ClockMark):
            engine.advance(item.at)
        else:
            with contextlib.suppress(DuplicateEvent, Rejection):
                engine.apply(item)
        changes, states.changes = states.changes, []
        return changes

    def take_dirty(self) -> list[CustomerState]:
        """The customers written since the last call, each once."""
        dirty: list[CustomerState] = []
        for _, states in self.partitions.values():
            dirty.extend(states.dirty.values())
            states.dirty = {}
        return dirty


def job_rules() -> CompiledRules:
    return compile_rules(load_ruleset(os.environ["SEGMENTS_RULES"]))


def quix_worker() -> None:
    """The job on Quix Streams: a stateful apply per message, changes to an output topic."""
    from quixstreams import Application, message_context
    from quixstreams.models import TopicConfig

    app = Application(
        broker_address=BOOTSTRAP,
        consumer_group=os.environ["SEGMENTS_APP_ID"],
        auto_offset_reset="earliest",
        commit_interval=COMMIT_INTERVAL,
        state_dir=os.environ["SEGMENTS_DATA_DIR"],
        processing_guarantee="at-least-once",
        loglevel="WARNING",
    )
    purchases = app.topic(
        os.environ["SEGMENTS_TOPIC_PREFIX"] + "purchases",
        key_deserializer="bytes",
        value_deserializer="bytes",
    )
    output = app.topic(
        os.environ["PEER_OUTPUT_TOPIC"],
        key_serializer="bytes",
        value_serializer="json",  # orjson: the same bytes as the product's changes
        config=TopicConfig(num_partitions=PARTITIONS, replication_factor=1),
    )
    # The engine's ticks write customers other than the message's: they go through the
    # partition's store transaction under their own key prefix, as Quix's State does.
    current: dict[str, Any] = {}

    def load(customer_id: str) -> bytes | None:
        data: bytes | None = current["transaction"].get_bytes(
            STATE_KEY, prefix=customer_id.encode()
        )
        return data

    def save(state: CustomerState) -> None:
        current["transaction"].set_bytes(
            STATE_KEY, state_to_bytes(state), prefix=state.customer_id.encode()
        )

    job = PeerJob(job_rules(), load, save)

    def step(value: bytes, state: Any) -> list[dict[str, Any]]:
        current["transaction"] = state._transaction
        return [change.to_dict() for change in job.handle(message_context().partition, value)]

    frame = app.dataframe(purchases).apply(step, stateful=True, expand=True)
    frame.to_topic(output, key=lambda change: change["customer_id"].encode())
    app.run()


def raw_worker() -> None:
    """The job on a bare confluent-kafka loop: at every commit, each written customer's state
    once to a compacted topic, the producer flushed, then the offsets committed."""
    from confluent_kafka import Consumer, Producer
    from confluent_kafka import TopicPartition as Position

    purchases = os.environ["SEGMENTS_TOPIC_PREFIX"] + "purchases"
    output, state_topic = os.environ["PEER_OUTPUT_TOPIC"], os.environ["PEER_STATE_TOPIC"]
    consumer = Consumer(
        {
            "bootstrap.servers": BOOTSTRAP,
            "group.id": os.environ["SEGMENTS_APP_ID"],
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    producer = Producer(
        {"bootstrap.servers": BOOTSTRAP, "acks": "all", "enable.idempotence": True, "linger.ms": 5}
    )
    job = PeerJob(job_rules())
    offsets: dict[int, int] = {}
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda number, frame: stopping.append(number))

    def commit() -> None:
        for state in job.take_dirty():
            producer.produce(state_topic, state_to_bytes(state), state.customer_id.encode())
        producer.flush()
        if offsets:
            positions = [Position(purchases, p, offset) for p, offset in offsets.items()]
            consumer.commit(offsets=positions, asynchronous=False)
            offsets.clear()

    consumer.subscribe([purchases])
    next_commit = time.monotonic() + COMMIT_INTERVAL
    while not stopping:
        for message in consumer.consume(500, 0.2):
            if message.error():
                continue
            partition = message.partition()
            for change in job.handle(partition, message.value()):
                producer.produce(output, change.to_json(), change.customer_id.encode())
            offsets[partition] = message.offset() + 1
        producer.poll(0)
        if time.monotonic() >= next_commit:
            commit()
            next_commit = time.monotonic() + COMMIT_INTERVAL
    commit()
    consumer.close()


# --- pure helpers: the check against replay, the medians -----------------------------------


@dataclass(frozen=True)
class Check:
    """A contender's changes against replay's, as multisets of JSON lines."""

    expected: int
    received: int
    missing: int  # in replay's output, not (or fewer times) in the contender's
    extra: int  # in the contender's, not (or more times) in replay's: duplicates count

    @property
    def equal(self) -> bool:
        return self.missing == 0 and self.extra == 0

    def describe(self) -> str:
        if self.equal:
            return f"= replay ({self.received:,})"
        return (
            f"{self.received:,} changes, replay {self.expected:,}:"
            f" {self.missing:,} missing, {self.extra:,} extra"
        )


def check_changes(expected: Iterable[bytes], received: Iterable[bytes]) -> Check:
    """Compare change lines byte for byte; the order between customers may differ."""
    want = Counter(line.rstrip(b"\n") for line in expected)
    got = Counter(line.rstrip(b"\n") for line in received)
    return Check(
        expected=sum(want.values()),
        received=sum(got.values()),
        missing=sum((want - got).values()),
        extra=sum((got - want).values()),
    )


@dataclass
class Round:
    label: str
    kind: str
    round: int
    rate: float  # messages per second
    cpu_us: float  # CPU microseconds per message
    load: float  # 1-minute load average when the run started
    check: Check | None = None


def medians(rounds: list[Round]) -> dict[str, tuple[float, float]]:
    """label -> (median msg/s, median CPU µs per message) over that label's rounds."""
    labels = dict.fromkeys(r.label for r in rounds)
    return {
        label: (
            statistics.median(r.rate for r in rounds if r.label == label),
            statistics.median(r.cpu_us for r in rounds if r.label == label),
        )
        for label in labels
    }


def rotations(count: int, rounds: int) -> list[list[int]]:
    """Per round, the contenders' indexes, the order shifted by one each round."""
    return [[(i + shift) % count for i in range(count)] for shift in range(rounds)]


# Where a sample's innermost frame is decides its share: the first of these path parts
# found in the frame names it (py-spy's raw format: "frame;frame;... count", a frame
# "function (file:line)"; the compiled rules' file "<rules PATH vN>" shows as "NAME vN>").
PROFILE_PARTS = (
    ("segments/", "the core (segments/, compiled rules)"),
    (".yaml v", "the core (segments/, compiled rules)"),
    (".yml v", "the core (segments/, compiled rules)"),
    ("streams/", "the worker shell (streams/)"),
    ("faust/stores/", "Faust's RocksDB store"),
    ("rocksdict", "Faust's RocksDB store"),
    ("faust/", "Faust"),
    ("mode/", "mode (Faust's services)"),
    ("aiokafka/", "aiokafka"),
    ("selector_events.py", "socket writes and reads (asyncio transports)"),
    ("asyncio/", "the asyncio loop"),
    ("selectors.py", "the asyncio loop"),
)
START_UP = "_find_and_load"  # a frame of an import: the process starting, not draining
PROFILE_STEPS = (
    "SegmentProcessor.message",
    "decode_event",
    "Engine.apply",
    "Engine.advance",
    "PartitionStates.put",
    "state_to_bytes",
    "SegmentProcessor.flush",
    "send_flush",
    "AIOKafkaProducer.send",
    "Sender._send_produce_req",
    "Fetcher._fetcher",
)


def _samples(collapsed: Iterable[str]) -> Iterable[tuple[list[str], int]]:
    """(frames, count) of each collapsed stack, start-up imports left out."""
    for line in collapsed:
        stack, _, count = line.rstrip().rpartition(" ")
        if stack and count.isdigit() and START_UP not in stack:
            yield stack.split(";"), int(count)


def profile_shares(collapsed: Iterable[str]) -> dict[str, float]:
    """Fraction of samples by where their innermost frame is (self time), largest first."""
    counts: Counter[str] = Counter()
    for frames, count in _samples(collapsed):
        leaf = frames[-1]
        counts[next((name for part, name in PROFILE_PARTS if part in leaf), "other")] += count
    total = sum(counts.values()) or 1
    return {name: count / total for name, count in counts.most_common()}


def profile_inclusive(collapsed: Iterable[str], names: Iterable[str]) -> dict[str, float]:
    """Fraction of samples with a frame of each named function (inclusive time)."""
    wanted = list(names)
    counts: Counter[str] = Counter()
    total = 0
    for frames, count in _samples(collapsed):
        total += count
        functions = {frame.split(" (", 1)[0] for frame in frames}
        for name in wanted:
            if name in functions:
                counts[name] += count
    return {name: counts[name] / (total or 1) for name in wanted}


# --- the run --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Entrant:
    contender: Contender
    kind: str  # one of KINDS


@dataclass
class Run:
    """One run of the benchmark: its names, files and the environment every contender gets."""

    prefix: str
    work: Path
    events: Path
    topics: Topics
    base_env: dict[str, str]
    reference: list[bytes] = field(default_factory=list)


def entrants(checkouts: list[Path]) -> list[Entrant]:
    main_python = str(REPO / ".venv" / "bin" / "python")
    if not Path(main_python).exists():
        raise SystemExit(f"{REPO}: no .venv; run scripts/setup-venv.sh (make setup) first")
    me = (sys.executable, __file__)
    products = [
        product_contender(path, (main_python, "-m", "streams", "worker"))
        if path.resolve() == REPO
        else product_contender(path)
        for path in checkouts or [REPO]
    ]
    return [
        Entrant(
            Contender(
                "bare Faust", (main_python, worker_bench.__file__, "--baseline-worker"), REPO
            ),
            "faust",
        ),
        *(Entrant(product, "product") for product in products),
        Entrant(Contender("Quix Streams job", (*me, "--quix-worker"), REPO), "quix"),
        Entrant(Contender("raw loop job", (*me, "--raw-worker"), REPO), "raw"),
    ]


def measure(entrant: Entrant, round_: int, run: Run) -> Round:
    """One drain of the backlog by one contender as a fresh consumer group."""
    contender, kind = entrant.contender, entrant.kind
    name = f"{contender.slug}-r{round_}"
    group = f"{run.prefix}{name}"
    output = f"{run.prefix}{name}.changes"
    env = {
        **run.base_env,
        "SEGMENTS_APP_ID": group,
        "SEGMENTS_DATA_DIR": str(run.work / f"{name}-data"),
        "SEGMENTS_WEB_PORT": str(free_port()),
        "PEER_OUTPUT_TOPIC": output,
        "PEER_STATE_TOPIC": f"{run.prefix}{name}.state",
    }
    changes_before: dict[int, int] = {}
    if kind == "product":
        env["SEGMENTS_RULES"] = str(contender.rules)
        worker_bench._commit_at_end(group, run.topics.ticks)
        changes_before = end_offsets(BOOTSTRAP, run.topics.segment_changes)
    elif kind == "raw":
        worker_bench._create_topics([output], {})
        worker_bench._create_topics([env["PEER_STATE_TOPIC"]], {"cleanup.policy": "compact"})
    load = os.getloadavg()[0]
    process = start(contender.command, env, run.work / f"{name}.log", contender.checkout)
    try:
        drain = drain_rate(group, run.topics.purchases, process.pid)
    finally:
        stop(process)
    cpu_us = drain.cpu_seconds / drain.messages * 1e6 if drain.messages else float("nan")
    result = Round(contender.label, kind, round_, drain.rate, cpu_us, load)
    if kind == "product":
        after = end_offsets(BOOTSTRAP, run.topics.segment_changes)
        lines = read_values(run.topics.segment_changes, changes_before, after)
        result.check = check_changes(run.reference, lines)
    elif kind in ("quix", "raw"):
        lines = read_values(output, {}, end_offsets(BOOTSTRAP, output))
        result.check = check_changes(run.reference, lines)
    shown = f"; {result.check.describe()}" if result.check else ""
    if not drain.messages:
        shown += "; drained before its first commit: no rate (use a larger --customers)"
    print(
        f"round {round_} {contender.label}: {drain.rate:,.0f} msg/s ({drain.messages} in"
        f" {drain.seconds:.1f} s), {cpu_us:,.0f} µs CPU/msg{shown}; load {load:.2f}",
        flush=True,
    )
    return result


def profile(entrant: Entrant, run: Run) -> Path:
    """One drain by the product under py-spy (sampling, not pausing it); the collapsed stacks."""
    contender = entrant.contender
    group = f"{run.prefix}profile"
    env = {
        **run.base_env,
        "SEGMENTS_APP_ID": group,
        "SEGMENTS_DATA_DIR": str(run.work / "profile-data"),
        "SEGMENTS_WEB_PORT": str(free_port()),
        "SEGMENTS_RULES": str(contender.rules),
    }
    worker_bench._commit_at_end(group, run.topics.ticks)
    out = run.work / "profile.collapsed"
    process = start(contender.command, env, run.work / "profile.log", contender.checkout)
    spy = start(
        (str(Path(sys.executable).parent / "py-spy"), "record", "--pid", str(process.pid),
         "--format", "raw", "--rate", "100", "--nonblocking", "-o", str(out)),
        {}, run.work / "py-spy.log",
    )  # fmt: skip
    try:
        drain = drain_rate(group, run.topics.purchases, process.pid)
    finally:
        spy.send_signal(signal.SIGINT)
        spy.wait(60)
        stop(process)
    print(f"profile: {drain.rate:,.0f} msg/s under py-spy; {out}", flush=True)
    return out


def report_profile(collapsed: Path) -> None:
    lines = collapsed.read_text().splitlines()
    samples = sum(count for _, count in _samples(lines))
    print()
    print(f"Profile of the product (py-spy, {samples:,} samples after start-up),")
    print("self time by where the innermost frame is:")
    print()
    for name, share in profile_shares(lines).items():
        print(f"- {name}: {share:.1%}")
    print()
    print("Inclusive time of some steps:")
    print()
    for name, share in profile_inclusive(lines, PROFILE_STEPS).items():
        print(f"- `{name}`: {share:.1%}")


def replay_reference(run: Run) -> list[bytes]:
    """`segments replay` of the backlog's input, to the same as-of instant as the marks."""
    out = run.work / "replay"
    subprocess.run(
        [str(REPO / ".venv" / "bin" / "python"), "-m", "streams", "replay", "--input",
         str(run.events), "--rules", run.base_env["SEGMENTS_RULES"], "--as-of", AS_OF,
         "--out", str(out)],
        cwd=REPO, check=True, capture_output=True,
    )  # fmt: skip
    return (out / "changes.jsonl").read_bytes().splitlines()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=5_000, help="~4 events each")
    parser.add_argument("--days", type=int, default=600, help="of generated traffic")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--product-checkout",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="measure `segments worker` of this checkout (its own .venv); repeatable;"
        " default: this checkout. The latency run uses the last one.",
    )
    parser.add_argument("--latency-events", type=int, default=3_000)
    parser.add_argument("--latency-rate", type=float, default=200.0, help="events per second")
    parser.add_argument("--no-latency", action="store_true", help="throughput only")
    parser.add_argument("--quix-latency", action="store_true", help="the Quix job's latency too")
    parser.add_argument(
        "--profile",
        action="store_true",
        help="only a drain by the (last) product under py-spy, and where its time goes",
    )
    for mode in ("--quix-worker", "--raw-worker"):
        parser.add_argument(mode, action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.quix_worker:
        quix_worker()
        return
    if args.raw_worker:
        raw_worker()
        return

    from segments.generate import generate_events

    run_id = uuid.uuid4().hex[:8]
    work = Path(tempfile.mkdtemp(prefix="peer-bench-"))
    run = Run(
        prefix=f"peer-bench-{run_id}.",
        work=work,
        events=work / "events.jsonl",
        topics=Topics(f"peer-bench-{run_id}."),
        base_env={
            "SEGMENTS_KAFKA_BOOTSTRAP": BOOTSTRAP,
            "SEGMENTS_TOPIC_PREFIX": f"peer-bench-{run_id}.",
            "SEGMENTS_PARTITIONS": str(PARTITIONS),
            "SEGMENTS_RULES": str(REPO / "segments" / "data" / "example_rules.yaml"),
            "SEGMENTS_CLOCK": "event",
        },
    )
    contenders = entrants(args.product_checkout)
    if len({e.contender.slug for e in contenders}) < len(contenders):
        raise SystemExit("two contenders share a label (the same commit twice?)")
    run.events.write_bytes(
        b"".join(line + b"\n" for line in generate_events(args.customers, args.days, seed=3))
    )
    run.reference = replay_reference(run)
    ensure_topics(KafkaConnection(BOOTSTRAP), run.topics, PARTITIONS)
    subprocess.run(
        [sys.executable, "-m", "streams", "produce", "--input", str(run.events), "--as-of", AS_OF],
        env={**os.environ, **run.base_env}, cwd=REPO, check=True, capture_output=True,
    )  # fmt: skip
    backlog = sum(end_offsets(BOOTSTRAP, run.topics.purchases).values())
    loads = [worker_bench._load()]
    print(
        f"backlog: {backlog} messages in {run.topics.purchases}; replay: {len(run.reference)}"
        f" changes; load {loads[0]}",
        flush=True,
    )
    if args.profile:
        try:
            collapsed = profile([e for e in contenders if e.kind == "product"][-1], run)
        finally:
            delete_run(run_id)
        report_profile(collapsed)
        return
    rounds: list[Round] = []
    try:
        for index, order in enumerate(rotations(len(contenders), args.rounds), start=1):
            for position in order:
                rounds.append(measure(contenders[position], index, run))
        loads.append(worker_bench._load())
        latencies: list[dict[str, Any]] = []
        if not args.no_latency:
            product = [e.contender for e in contenders if e.kind == "product"][-1]
            prefix = f"{run.prefix}latency."
            latencies.append(
                worker_bench.measure_latency(product, prefix, run.base_env, run.work, args)
            )
            if args.quix_latency:
                latencies.append(quix_latency(contenders, run, args))
            loads.append(worker_bench._load())
    finally:
        delete_run(run_id)
    report(contenders, rounds, latencies, loads, backlog, len(run.reference))
    print(f"\n(work dir {work}; logs there)")


def quix_latency(contenders: list[Entrant], run: Run, args: Any) -> dict[str, Any]:
    """worker_bench's latency run for the Quix job: its output topic is the sandbox's
    `segment-changes`, and it is ready when its consumer group is stable."""
    quix = next(e.contender for e in contenders if e.kind == "quix")
    prefix = f"{run.prefix}latency-quix."
    env = {**run.base_env, "PEER_OUTPUT_TOPIC": Topics(prefix).segment_changes}
    rules = Path(run.base_env["SEGMENTS_RULES"])
    contender = Contender(quix.label, quix.command, quix.checkout, rules=rules)
    group = f"{prefix}product"  # the group measure_latency names and waits on

    def stable(port: int, process: subprocess.Popen[bytes]) -> None:
        wait_group_stable(group, process)

    return worker_bench.measure_latency(contender, prefix, env, run.work, args, stable)


def wait_group_stable(group: str, process: subprocess.Popen[bytes], timeout: float = 90) -> None:
    """Until `group` is Stable with a member (its partitions assigned)."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError("worker exited")
            with contextlib.suppress(Exception):
                (description,) = admin.describe_consumer_groups([group])
                if description.state == "Stable" and description.members:
                    return
            time.sleep(0.2)
    finally:
        admin.close()
    raise TimeoutError(f"group {group} not stable")


def delete_run(run_id: str) -> None:
    """The run's topics (Quix's changelogs included) and consumer groups."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=BOOTSTRAP)
    try:
        names = [name for name in admin.list_topics() if f"peer-bench-{run_id}" in name]
        if names:
            admin.delete_topics(names)
        groups = [g for g, _ in admin.list_consumer_groups() if f"peer-bench-{run_id}" in g]
        if groups:
            admin.delete_consumer_groups(groups)
    finally:
        admin.close()


def machine() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor() or "unknown CPU",
    )
    return (
        f"{os.cpu_count()} vCPU ({model}), Python {platform.python_version()},"
        f" {platform.platform()}"
    )


def report(
    contenders: list[Entrant],
    rounds: list[Round],
    latencies: list[dict[str, Any]],
    loads: list[str],
    backlog: int,
    expected: int,
) -> None:
    """The Markdown block for BENCHMARKS.md."""
    labels = [e.contender.label for e in contenders]
    by = {(r.label, r.round): r for r in rounds}
    count = max(r.round for r in rounds)
    print()
    print(f"### Peer benchmark ({time.strftime('%Y-%m-%d %H:%M')})")
    print()
    print(
        f"Machine: {machine()}; Kafka on 127.0.0.1 (same host), {PARTITIONS} partitions;"
        f" backlog {backlog:,} messages; replay: {expected:,} changes; load average"
        f" (1/5/15 min) {loads[0]} before the rounds, {loads[1]} after them"
        + (f", {loads[2]} after the latency run." if len(loads) > 2 else ".")
    )
    print()
    print("Each cell: messages/s, the process's CPU time per message, and the check against")
    print("replay (bare Faust writes no changes).")
    print()
    print("| round (order, load) | " + " | ".join(labels) + " |")
    print("|---|" + "---:|" * len(labels))
    for index in range(1, count + 1):
        order = sorted((r for r in rounds if r.round == index), key=rounds.index)
        shown = " > ".join(r.kind for r in order)
        cells = []
        for label in labels:
            r = by[(label, index)]
            check = "" if r.check is None else (" ✓" if r.check.equal else " ✗")
            cells.append(f"{r.rate:,.0f} msg/s, {r.cpu_us:,.0f} µs{check}")
        print(f"| {index} ({shown}, {order[0].load:.2f}) | " + " | ".join(cells) + " |")
    middle = medians(rounds)
    cells = [
        f"**{middle[label][0]:,.0f}** msg/s, **{middle[label][1]:,.0f}** µs" for label in labels
    ]
    print("| median | " + " | ".join(cells) + " |")
    print()
    faust = next(e.contender.label for e in contenders if e.kind == "faust")
    quix = next(e.contender.label for e in contenders if e.kind == "quix")
    for entrant in contenders:
        label = entrant.contender.label
        if entrant.kind != "product":
            continue
        to_faust = middle[label][0] / middle[faust][0]
        to_quix = middle[label][0] / middle[quix][0]
        print(
            f"{label}: {to_faust:.2f}x bare Faust (target >= 1.0: "
            f"{'met' if to_faust >= 1.0 else 'missed'}), {to_quix:.2f}x the Quix job"
            f" (target >= 0.75: {'met' if to_quix >= 0.75 else 'missed'})."
        )
    for entrant in contenders:
        if entrant.kind in ("quix", "raw"):
            label = entrant.contender.label
            print(f"{label}: {middle[label][0] / middle[faust][0]:.2f}x bare Faust.")
    failed = [r for r in rounds if r.check is not None and not r.check.equal]
    checked = sum(1 for r in rounds if r.check is not None)
    print(
        f"Changes against replay: {checked - len(failed)} of {checked} job runs equal"
        + ("." if not failed else "; differing: " + ", ".join(
            f"{r.label} round {r.round} ({r.check.describe() if r.check else ''})"
            for r in failed))
    )  # fmt: skip
    for latency in latencies:
        met = "met" if latency["p99"] <= 100 else "missed"
        print(
            f"Latency purchase -> change, {latency['label']}, at {latency['rate']:.0f} events/s"
            f" ({latency['changes']:,} changes): p50 {latency['p50']:.0f} ms, p99"
            f" {latency['p99']:.0f} ms (target <= 100: {met}), max {latency['max']:.0f} ms."
        )


if __name__ == "__main__":
    main()
