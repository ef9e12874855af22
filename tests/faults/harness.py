"""The product under fault: a real worker and a real `segments serve`, wired through proxies.

A scenario produces a seeded backlog, breaks something while the product works on it,
ends the fault, and then `settle()` waits until the product has caught up and compares
everything it holds with `segments replay` of the same events:

* segment-changes: the same change ids with the same content (two copies of one change
  must be identical), nothing missing, nothing extra;
* segment-memberships (compacted): the same members as replay's memberships;
* Redis (the serving cache): each member's field holds replay's seq and `since`, the
  member sets hold exactly replay's members, and the lookup API answers the same.

The time from the end of the fault to that equal state is the scenario's recovery time.
Workers, drains and the replay comparison are the integration harness's
(tests/integration/worker_harness.py); this module adds serve, the proxies and Redis.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis

from segments.data import EXAMPLE_RULES
from streams.kafka.connection import KafkaConnection
from streams.kafka.topics import ensure_topics
from streams.serving.cache import SHARDS, TRAIT_FIELD_PREFIX, Keys, parse_field
from streams.settings import Topics
from tests.faults.proxy import TcpProxy
from tests.helpers import PrivateRedis, wait_until
from tests.integration.worker_harness import (
    Reference,
    WorkerProcess,
    assert_equals_replay,
    committed_offsets,
    end_offsets,
    free_port,
    produce,
    read_published,
    read_topic,
    replay_reference,
    run_cli,
)

# Every backlog ends with clock marks at this instant: time-driven transitions (win_back,
# markdown_sleeper, new_customer exits) happen after the last event, as in replay.
AS_OF = "2026-03-01T00:00:00Z"
PARTITIONS = 4
# How long a drained, equal state may take to come back after a fault ends. Generous:
# the machine may have one core busy with something else.
SETTLE_TIMEOUT = 240.0


@dataclass(frozen=True)
class Backlog:
    """A seeded `segments generate` backlog split in chronological parts, and its replay."""

    parts: list[Path]
    everything: Path
    reference: Reference

    @property
    def segments(self) -> list[str]:
        return list(self.reference.memberships)


def make_backlog(
    directory: Path,
    customers: int,
    seed: int,
    parts: int = 2,
    dirty: bool = False,
    extra_lines: tuple[bytes, ...] = (),
    extra_part: int = -1,
    rules: Path = EXAMPLE_RULES,
) -> Backlog:
    """`segments generate` output (plus `extra_lines`, added to part `extra_part`) and replay.

    The parts are consecutive slices of the time-sorted file, so producing them one after
    the other keeps every partition in time order, as one `segments produce` of the whole.
    """
    directory.mkdir(parents=True, exist_ok=True)
    everything = directory / "events.jsonl"
    arguments = ["generate", "--customers", str(customers), "--seed", str(seed)]
    run_cli({}, *arguments, *(["--dirty"] if dirty else []), "--out", str(everything))
    lines = everything.read_bytes().splitlines()
    with everything.open("ab") as handle:
        for line in extra_lines:
            handle.write(line + b"\n")
    size = -(-len(lines) // parts)
    paths = []
    for index in range(parts):
        chunk = lines[index * size : (index + 1) * size]
        if index == extra_part % parts:
            chunk = chunk + list(extra_lines)
        path = directory / f"part-{index}.jsonl"
        path.write_bytes(b"".join(line + b"\n" for line in chunk))
        paths.append(path)
    reference = replay_reference(rules, everything, directory / "replay", AS_OF)
    return Backlog(paths, everything, reference)


@dataclass
class Outcome:
    """One scenario's line in the report: what was broken, for how long, how it ended."""

    scenario: str
    fault: str
    fault_seconds: float
    recovery_seconds: float | None = None
    changes: int = 0  # distinct change ids published (= replay's), or called (webhooks)
    copies: int = 0  # change messages published, or webhook calls received, repeats included
    dead_letters: int = 0
    compared: str = "not compared"
    notes: dict[str, Any] = field(default_factory=dict)


class FaultReport:
    """Collects each scenario's Outcome; written as JSON and printed at the end of the run."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.outcomes: list[Outcome] = []

    @classmethod
    def read(cls, path: Path) -> FaultReport:
        """A report as `write` left it (a pytest-xdist worker's, read by the controller)."""
        report = cls(path)
        report.outcomes = [Outcome(**outcome) for outcome in json.loads(path.read_text())]
        return report

    def add(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        self.write()
        print(f"\nfault scenario: {json.dumps(outcome.__dict__, default=str)}")

    def write(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(
            json.dumps([outcome.__dict__ for outcome in self.outcomes], indent=2, default=str)
        )

    def table(self) -> str:
        rows = [("scenario", "fault", "fault s", "recovery s", "changes", "copies", "compared")]
        for o in self.outcomes:
            recovery = "-" if o.recovery_seconds is None else f"{o.recovery_seconds:.1f}"
            rows.append(
                (
                    o.scenario,
                    o.fault,
                    f"{o.fault_seconds:.0f}",
                    recovery,
                    str(o.changes),
                    str(o.copies),
                    o.compared,
                )
            )
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        return "\n".join(
            "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows
        )


class Product:
    """One worker at a time and one `segments serve`, in this test's Kafka and Redis sandbox.

    Processes reach Kafka through `kafka_proxy` when the broker has the PROXIED listener
    (else directly) and Redis through `redis_proxy`; the test itself always reads Kafka
    and Redis directly, so what it observes is never behind the fault.
    """

    def __init__(
        self,
        env: dict[str, str],
        directory: Path,
        direct_bootstrap: str,
        redis_server: PrivateRedis,
        redis_proxy: TcpProxy,
        kafka_proxy: TcpProxy | None,
    ) -> None:
        self.directory = directory
        self.direct_bootstrap = direct_bootstrap
        self.redis_server = redis_server
        self.redis_proxy = redis_proxy
        self.kafka_proxy = kafka_proxy
        self.topics = Topics(env["SEGMENTS_TOPIC_PREFIX"])
        self.app_id = env["SEGMENTS_APP_ID"]
        self.base_env = {
            **env,
            "SEGMENTS_CLOCK": "event",
            "SEGMENTS_RULES": str(EXAMPLE_RULES),
            "SEGMENTS_PARTITIONS": str(PARTITIONS),
            "SEGMENTS_REDIS_URL": f"redis://127.0.0.1:{redis_proxy.port}/0",
        }
        self.redis = redis.Redis(port=redis_server.port, decode_responses=True)
        self.workers: list[WorkerProcess] = []
        self.serve: WorkerProcess | None = None
        self.lookup_port = free_port()

    # --- environments ---------------------------------------------------------------------

    @property
    def product_bootstrap(self) -> str:
        return self.kafka_proxy.address if self.kafka_proxy is not None else self.direct_bootstrap

    def env(self, via_kafka_proxy: bool = True, **extra: str) -> dict[str, str]:
        bootstrap = self.product_bootstrap if via_kafka_proxy else self.direct_bootstrap
        return {**self.base_env, "SEGMENTS_KAFKA_BOOTSTRAP": bootstrap, **extra}

    @property
    def direct_env(self) -> dict[str, str]:
        """For the producers of input: outside the product, so never behind a fault."""
        return self.env(via_kafka_proxy=False)

    def require_kafka_proxy(self) -> TcpProxy:
        if self.kafka_proxy is None:
            raise AssertionError(
                "this scenario needs the broker's PROXIED listener (deploy/local/kafka.sh); "
                f"the broker at {self.direct_bootstrap} has none (started by an older kafka.sh?"
                " 'deploy/local/services.sh down kafka' then 'up kafka' restarts it with the"
                " listener; tests/faults/README.md)"
            )
        return self.kafka_proxy

    # --- processes ------------------------------------------------------------------------

    @property
    def worker(self) -> WorkerProcess:
        return self.workers[-1]

    def start_worker(self, **extra: str) -> WorkerProcess:
        log = self.directory / f"worker-{len(self.workers)}.log"
        worker = WorkerProcess(self.env(**extra), log).start()
        self.workers.append(worker)
        worker.wait_ready(120)
        return worker

    def start_serve(
        self, via_kafka_proxy: bool = True, triggers: bool = False, **extra: str
    ) -> WorkerProcess:
        """`segments serve` with the cache sink, the HTTP port and the checkout fast path.

        The topics are created first, as a worker would: serve is ready only once its sink
        has built the cache from segment-memberships (decision 0004), and it waits for the
        worker to create that topic. Scenarios that start serve without a worker need them.
        """
        ensure_topics(KafkaConnection(self.direct_bootstrap), self.topics, PARTITIONS)
        arguments = ["-m", "streams", "serve", "--lookup-port", str(self.lookup_port)]
        if not triggers:
            arguments.append("--no-triggers")
        else:
            arguments += ["--trigger-max-age", str(10 * 365 * 86400)]
        self.serve = WorkerProcess(
            self.env(via_kafka_proxy, **extra),
            self.directory / "serve.log",
            arguments=tuple(arguments),
        ).start()
        self.serve.wait_ready(60)
        return self.serve

    def stop(self) -> None:
        """SIGTERM first: a process that leaves its consumer group lets the teardown delete
        the group at once instead of after the session timeout. All are signalled before
        any is waited for: they stop side by side."""
        processes = [*([self.serve] if self.serve else []), *self.workers]
        running = [p.process for p in processes if p.process and p.process.poll() is None]
        for process in running:
            process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for process in running:
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(max(0.1, deadline - time.monotonic()))
        for each in processes:
            each.kill()  # whatever ignored SIGTERM
        self.redis.close()

    def produce(self, path: Path, as_of: str | None = None) -> None:
        produce(self.direct_env, path, as_of)

    # --- observations ---------------------------------------------------------------------

    def progress(self) -> float:
        """Share of `purchases` the worker group has committed."""
        topic = self.topics.purchases
        ends = end_offsets(self.direct_bootstrap, topic)
        committed = committed_offsets(self.direct_bootstrap, self.app_id, topic)
        return sum(max(committed.get(p, 0), 0) for p in ends) / max(1, sum(ends.values()))

    def committed_total(self, group: str | None = None, topic: str | None = None) -> int:
        """Messages a group (default: the worker's) has committed of a topic (`purchases`)."""
        group, topic = group or self.app_id, topic or self.topics.purchases
        committed = committed_offsets(self.direct_bootstrap, group, topic)
        return sum(max(offset, 0) for offset in committed.values())

    def group_caught_up(self, group: str, topic: str) -> bool:
        ends = end_offsets(self.direct_bootstrap, topic)
        committed = committed_offsets(self.direct_bootstrap, group, topic)
        return all(committed.get(p, -1) >= end for p, end in ends.items() if end > 0)

    def redis_members(self) -> dict[str, dict[str, tuple[int, str]]]:
        """Customer -> segment -> (seq, since) for every `member` field in Redis."""
        keys = Keys(self.base_env["SEGMENTS_REDIS_PREFIX"])
        prefix = keys.customer("")
        result: dict[str, dict[str, tuple[int, str]]] = {}
        for key in self.redis.scan_iter(match=prefix.replace("*", r"\*") + "*", count=1000):
            for segment, value in self.redis.hgetall(key).items():
                if segment.startswith(TRAIT_FIELD_PREFIX):
                    continue
                seq, member, since = parse_field(value)
                if member:
                    result.setdefault(key[len(prefix) :], {})[segment] = (int(seq), since)
        return result

    def redis_segment_sets(self, segments: list[str]) -> dict[str, list[str]]:
        keys = Keys(self.base_env["SEGMENTS_REDIS_PREFIX"])
        sets: dict[str, list[str]] = {}
        for segment in segments:
            members: set[str] = set()
            for shard in range(SHARDS):
                members |= self.redis.smembers(keys.members(segment, shard))
            sets[segment] = sorted(members)
        return sets

    def lookup(self, customer_id: str, fast: bool = False, token: str | None = None) -> Any:
        assert self.serve is not None
        port = self.lookup_port if fast else self.serve.port
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/customers/{customer_id}/segments"
        )
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(request, timeout=5) as response:
            return orjson.loads(response.read())

    # --- the end of every scenario ----------------------------------------------------------

    def settle(
        self,
        backlog: Backlog,
        outcome: Outcome,
        fault_ended: float,
        dead_letters: int = 0,
    ) -> None:
        """Wait for the drained, equal state; record the recovery time; compare everything."""
        assert self.serve is not None
        wait_until(
            lambda: self._exited() or self.group_caught_up(self.app_id, self.topics.purchases),
            SETTLE_TIMEOUT,
            interval=0.5,
            what=f"the worker to commit all of {self.topics.purchases}",
        )
        sink_group = f"{self.app_id}-cache-sink"
        wait_until(
            lambda: self._exited() or self.group_caught_up(sink_group, self.topics.segment_changes),
            SETTLE_TIMEOUT,
            interval=0.5,
            what=f"serve's cache sink to commit all of {self.topics.segment_changes}",
        )
        assert not self._exited(), self._exited()
        expected = expected_redis(backlog.reference)
        # The sink commits after it has written Redis, so Redis is normally equal by now.
        recovered = time.monotonic() if self.redis_members() == expected else None
        # Everything is published once the worker has committed its input: compare it now.
        published = read_published(self.direct_bootstrap, self.topics, backlog.segments)
        assert_equals_replay(published, backlog.reference, ordered=False)
        dead = read_topic(self.direct_bootstrap, self.topics.purchases_dlq)
        assert len(dead) == dead_letters, f"{len(dead)} dead letters, expected {dead_letters}"
        with _explain_redis_mismatch(self, expected):
            wait_until(
                lambda: self.redis_members() == expected,
                60,
                interval=0.5,
                what="Redis to hold replay's memberships",
            )
        outcome.recovery_seconds = round((recovered or time.monotonic()) - fault_ended, 1)
        assert self.redis_segment_sets(backlog.segments) == backlog.reference.memberships
        self._check_lookups(backlog, expected)
        outcome.changes = len(published.changes)
        outcome.copies = published.copies
        outcome.dead_letters = len(dead)
        outcome.compared = "equal to replay"

    def _exited(self) -> str:
        """Why waiting is pointless: the running worker or serve exited (else "")."""
        for name, process in (("worker", self.worker), ("serve", self.serve)):
            popen = process.process if process is not None else None
            if popen is not None and popen.poll() is not None:
                return f"{name} exited with {popen.returncode}:\n{process.tail()}"
        return ""

    def _check_lookups(
        self, backlog: Backlog, expected: dict[str, dict[str, tuple[int, str]]]
    ) -> None:
        """The lookup API (both ports) answers replay's segments for the busiest customers."""
        token = self.base_env.get("SEGMENTS_API_TOKEN")
        busiest = sorted(expected, key=lambda c: (-len(expected[c]), c))[:10]
        for customer_id in [*busiest, "never-seen-customer"]:
            want = [
                {"name": segment, "since": since}
                for segment, (_, since) in sorted(expected.get(customer_id, {}).items())
            ]
            for fast in (False, True):
                answer = self.lookup(customer_id, fast=fast, token=token)
                assert answer["segments"] == want, (customer_id, fast, answer)


def expected_redis(reference: Reference) -> dict[str, dict[str, tuple[int, str]]]:
    """What the cache must hold after replay's changes: the last change of each membership."""
    last: dict[tuple[str, str], dict[str, Any]] = {}
    for change in reference.changes:
        key = (change["customer_id"], change["segment"])
        if key not in last or change["seq"] > last[key]["seq"]:
            last[key] = change
    result: dict[str, dict[str, tuple[int, str]]] = {}
    for (customer_id, segment), change in last.items():
        if change["change"] == "entered":
            result.setdefault(customer_id, {})[segment] = (change["seq"], change["at"])
    return result


@contextlib.contextmanager
def _explain_redis_mismatch(
    product: Product, expected: dict[str, dict[str, tuple[int, str]]]
) -> Iterator[None]:
    try:
        yield
    except AssertionError as error:
        actual = product.redis_members()
        missing = sorted(set(expected) - set(actual))
        extra = sorted(set(actual) - set(expected))
        differing = sorted(c for c in set(expected) & set(actual) if expected[c] != actual[c])
        detail = (
            f"{len(missing)} members missing (e.g. {missing[:3]}), {len(extra)} extra "
            f"(e.g. {extra[:3]}), {len(differing)} differ"
            + (
                f" (e.g. {differing[0]}: {actual[differing[0]]} != {expected[differing[0]]})"
                if differing
                else ""
            )
        )
        raise AssertionError(f"{error}\n{detail}") from None


def alive(*processes: WorkerProcess) -> Callable[[], None]:
    """A check for hold(): a product process that exits during a fault fails the scenario."""

    def check() -> None:
        for process in processes:
            assert process.process is not None
            if process.process.poll() is not None:
                raise AssertionError(f"a process exited during the fault:\n{process.tail()}")

    return check


def hold(seconds: float, check: Any = None) -> float:
    """Keep a fault on for `seconds` (the fault itself, not a synchronisation).

    `check` is called about once a second while it lasts (e.g. to assert the worker is
    still alive); returns when the fault should end, as a monotonic time.
    """
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        if check is not None:
            check()
        time.sleep(min(1.0, left))
    return time.monotonic()


def http_status(url: str, headers: dict[str, str] | None = None, timeout: float = 5) -> int:
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def report_path(default: Path) -> Path:
    """FAULTS_REPORT names the JSON file of recovery times; else one in pytest's tmp dir."""
    return Path(os.environ.get("FAULTS_REPORT", str(default)))
