"""`segments demo`: the embedded default, live: generator -> Kafka -> worker -> changes -> Redis.

Starts a real worker (event clock, so two years of generated purchases play in
about a minute of compressed time) and the serving process (Redis cache sink
and lookup API), produces generated traffic at a steady rate, and shows segment
sizes, the latest entries and exits, and a checkout lookup served from Redis.
Everything it creates (topics, Redis keys, local state) is namespaced by a run
id and removed on exit. Without a terminal it runs until the worker has
drained everything and then checks the result against `segments replay`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import orjson

from segments.data import EXAMPLE_RULES
from segments.generate import generate_events
from streams.cli.common import check_kafka_or_exit, settings_or_exit
from streams.kafka.connection import KafkaConnection
from streams.kafka.produce import clock_mark, timeline
from streams.settings import Topics


@dataclass
class LiveView:
    """What the screen shows, folded from the segment-changes topic."""

    segments: list[str]
    sizes: Counter[str] = field(default_factory=Counter)
    entered: Counter[str] = field(default_factory=Counter)
    exited: Counter[str] = field(default_factory=Counter)
    seen: set[str] = field(default_factory=set)
    latest: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=8))
    members: dict[str, set[str]] = field(default_factory=dict)
    clock: str = "-"
    produced: int = 0
    total: int = 0
    lookup: str = "-"

    def apply(self, change: dict[str, Any]) -> None:
        if change["change_id"] in self.seen:  # at-least-once: a change may arrive twice
            return
        self.seen.add(change["change_id"])
        segment = change["segment"]
        members = self.members.setdefault(segment, set())
        if change["change"] == "entered":
            self.entered[segment] += 1
            members.add(change["customer_id"])
        else:
            self.exited[segment] += 1
            members.discard(change["customer_id"])
        self.sizes[segment] = len(members)
        self.latest.appendleft(change)
        self.clock = max(self.clock, change["at"]) if self.clock != "-" else change["at"]

    def render(self, web_url: str) -> Any:
        from rich.console import Group
        from rich.table import Table

        sizes = Table(title=f"segments at {self.clock}", expand=False)
        for column in ("segment", "members", "entered", "exited"):
            sizes.add_column(column, justify="right" if column != "segment" else "left")
        for name in self.segments:
            sizes.add_row(
                name, str(self.sizes[name]), str(self.entered[name]), str(self.exited[name])
            )
        latest = Table(title="latest entries and exits")
        for column in ("at", "customer", "segment", "change", "cause"):
            latest.add_column(column)
        for change in self.latest:
            latest.add_row(
                change["at"],
                change["customer_id"],
                change["segment"],
                change["change"],
                change["cause"],
            )
        footer = (
            f"produced {self.produced}/{self.total} events | API {web_url}/segments | "
            f"lookup: {self.lookup}\nCtrl-C stops everything."
        )
        return Group(sizes, latest, footer)


def _wait(predicate: Any, timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise click.ClickException(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@click.command("demo")
@click.option("--customers", default=1500, show_default=True)
@click.option("--days", default=540, show_default=True, help="days of generated history")
@click.option("--seed", default=42, show_default=True)
@click.option("--rate", default=150, show_default=True, help="events produced per second")
@click.option(
    "--until-drained/--until-interrupted",
    default=None,
    help="stop once the worker has processed everything (default without a terminal)",
)
def demo_command(
    customers: int, days: int, seed: int, rate: int, until_drained: bool | None
) -> None:
    """Run the embedded default live: generator, Kafka, worker, Redis, lookup."""
    from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
    from rich.console import Console
    from rich.live import Live

    settings = settings_or_exit()
    check_kafka_or_exit(settings, must_answer=True)
    kafka = KafkaConnection.from_settings(settings)
    console = Console()
    interactive = console.is_terminal
    if until_drained is None:
        until_drained = not interactive
    run_id = f"demo{int(time.time())}"
    workdir = Path(tempfile.mkdtemp(prefix=f"segments-{run_id}-"))
    topics = Topics(prefix=f"{run_id}-")
    web_port, worker_port = settings.web_port, settings.web_port + 1
    env = {
        **os.environ,
        "SEGMENTS_TOPIC_PREFIX": topics.prefix,
        "SEGMENTS_REDIS_PREFIX": f"{run_id}:",
        "SEGMENTS_APP_ID": run_id,
        "SEGMENTS_DATA_DIR": str(workdir / "state"),
        "SEGMENTS_CLOCK": "event",
        "SEGMENTS_RULES": str(settings.rules or EXAMPLE_RULES),
    }
    rules_path = Path(env["SEGMENTS_RULES"])
    from segments.rules.ruleset import load_ruleset

    segment_names = [s.name for s in load_ruleset(rules_path).segments]

    raw = list(generate_events(customers, days, seed))
    messages = timeline(raw)
    events_file = workdir / "events.jsonl"
    events_file.write_bytes(b"\n".join(raw) + b"\n")
    last_instant = max(
        orjson.loads(value)["occurred_at"] for _, value in messages if b'"occurred_at"' in value
    )
    console.print(
        f"[bold]purchase-segments demo[/] {len(messages)} events of {customers} customers over "
        f"{days} days, {rate}/s; worker logs in {workdir}"
    )

    processes: list[subprocess.Popen[bytes]] = []

    def spawn(args: list[str], name: str, port: int) -> subprocess.Popen[bytes]:
        log = (workdir / f"{name}.log").open("ab")
        process = subprocess.Popen(
            [sys.executable, "-m", "streams", *args],
            env={**env, "SEGMENTS_WEB_PORT": str(port)},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        processes.append(process)
        return process

    view = LiveView(segments=segment_names, total=len(messages))
    stop = threading.Event()
    web_url = f"http://{settings.web_host}:{web_port}"
    token = settings.api_token_value
    try:
        spawn(["worker"], "worker", worker_port)
        _wait(lambda: _http_ok(f"http://127.0.0.1:{worker_port}/readyz"), 180, "the worker")
        spawn(["serve", "--no-triggers", "--port", str(web_port)], "serve", web_port)
        _wait(lambda: _http_ok(f"{web_url}/healthz"), 120, "the lookup API")

        def produce() -> None:
            producer = KafkaProducer(**kafka.kafka_python_args(linger_ms=5))
            started = time.monotonic()
            for n, (key, value) in enumerate(messages, start=1):
                if stop.is_set():
                    break
                producer.send(topics.purchases, key=key, value=value)
                view.produced = n
                ahead = n / rate - (time.monotonic() - started)
                if ahead > 0:
                    time.sleep(ahead)  # pacing the generator, not synchronising
            producer.flush()
            mark = clock_mark(_instant(last_instant))
            for partition in sorted(producer.partitions_for(topics.purchases)):
                producer.send(topics.purchases, value=mark, partition=partition)
            producer.flush()
            producer.close()

        producer_thread = threading.Thread(target=produce, daemon=True)
        producer_thread.start()
        consumer = KafkaConsumer(
            topics.segment_changes,
            **kafka.kafka_python_args(
                auto_offset_reset="earliest", enable_auto_commit=False, group_id=None
            ),
        )
        admin = KafkaAdminClient(**kafka.kafka_python_args())
        next_lookup = 0.0
        next_drain_check = 0.0
        with Live(view.render(web_url), console=console, refresh_per_second=4,
                  transient=False) as live:  # fmt: skip
            while True:
                batch = consumer.poll(timeout_ms=250)
                for records in batch.values():
                    for record in records:
                        view.apply(orjson.loads(record.value))
                if time.monotonic() >= next_lookup and view.latest:
                    view.lookup = _lookup(web_url, view.latest[0]["customer_id"], token)
                    next_lookup = time.monotonic() + 2
                live.update(view.render(web_url))
                if (
                    until_drained
                    and not producer_thread.is_alive()
                    and time.monotonic() >= next_drain_check
                ):
                    next_drain_check = time.monotonic() + 1
                    if _drained(admin, consumer, run_id, topics):
                        break
        consumer.close()
        admin.close()
        if view.latest:
            view.lookup = _lookup(web_url, view.latest[0]["customer_id"], token)
        if not interactive:
            console.print(view.render(web_url))
        if until_drained:
            _check_against_replay(console, view, rules_path, events_file, last_instant, workdir)
    except KeyboardInterrupt:
        console.print("stopping...")
    finally:
        stop.set()
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
        _cleanup(kafka, settings.redis_url, topics, f"{run_id}:", run_id)
        shutil.rmtree(workdir / "state", ignore_errors=True)


def _drained(admin: Any, consumer: Any, group: str, topics: Topics) -> bool:
    """The worker committed every purchase (clock marks included) and we read every change."""
    from kafka import TopicPartition

    purchases = [
        TopicPartition(topics.purchases, p)
        for p in consumer.partitions_for_topic(topics.purchases) or ()
    ]
    ends = consumer.end_offsets(purchases)
    committed = admin.list_consumer_group_offsets(group)
    if any(committed.get(tp) is None or committed[tp].offset < end for tp, end in ends.items()):
        return False
    changes = list(consumer.assignment())
    change_ends = consumer.end_offsets(changes)
    return all(consumer.position(tp) >= end for tp, end in change_ends.items())


def _instant(text: str) -> int:
    from segments.clock import parse_instant

    return parse_instant(text.replace("Z", "+00:00"))


def _lookup(web_url: str, customer_id: str, token: str | None) -> str:
    """A checkout lookup over HTTP, with the bearer token when SEGMENTS_API_TOKEN is set."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"{web_url}/customers/{customer_id}/segments", headers=headers)
    started = time.perf_counter()
    try:
        with urllib.request.urlopen(request, timeout=2) as r:
            body = orjson.loads(r.read())
    except OSError as error:
        return f"{customer_id}: {error}"
    took = (time.perf_counter() - started) * 1000
    names = ", ".join(s["name"] for s in body.get("segments", [])) or "no segment"
    traits = "".join(f"; {name}={value}" for name, value in body.get("traits", {}).items())
    return f"{customer_id} -> {names}{traits} ({took:.1f} ms over HTTP from Redis)"


def _check_against_replay(
    console: Any, view: LiveView, rules: Path, events: Path, as_of: str, workdir: Path
) -> None:
    """The demo's own proof: what streamed through Kafka equals `segments replay`."""
    from segments.replay import read_lines, replay
    from segments.rules.evaluator import compile_rules
    from segments.rules.ruleset import load_ruleset

    out = workdir / "replay"
    replay(read_lines(events), compile_rules(load_ruleset(rules)), out, as_of=_instant(as_of))
    expected = orjson.loads((out / "memberships.json").read_bytes())
    actual = {name: sorted(view.members.get(name, set())) for name in view.segments}
    if actual != expected:
        differing = [name for name in view.segments if actual[name] != expected[name]]
        raise click.ClickException(f"streamed memberships differ from replay in {differing}")
    sizes = ", ".join(f"{name} {len(members)}" for name, members in expected.items())
    console.print(f"[green]streamed memberships equal segments replay[/] ({sizes})")


def _cleanup(
    kafka: KafkaConnection, redis_url: str, topics: Topics, redis_prefix: str, app_id: str
) -> None:
    from kafka import KafkaAdminClient

    with contextlib.suppress(Exception):
        admin = KafkaAdminClient(**kafka.kafka_python_args())
        existing = set(admin.list_topics())
        mine = [
            name for name in existing if name.startswith(topics.prefix) or name.startswith(app_id)
        ]
        if mine:
            admin.delete_topics(mine)
        admin.close()
    with contextlib.suppress(Exception):
        import redis

        client = redis.Redis.from_url(redis_url)
        for key in client.scan_iter(match=f"{redis_prefix}*", count=1000):
            client.delete(key)
        client.close()
