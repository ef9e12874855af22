"""Redis restarted empty under a running `segments serve`: 503 until rebuilt, never "no segments".

Real processes: `segments serve` (cache sink, HTTP port and checkout fast path) against
real Kafka and a private redis-server that the test restarts with nothing in it.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from kafka import KafkaProducer

from tests.helpers import PrivateRedis, wait_until

pytestmark = pytest.mark.integration

CUSTOMERS = 300
SEGMENTS = ("vip", "runner")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def change(customer: str, segment: str, seq: int) -> dict:
    return {
        "change_id": f"{customer}:{segment}:{seq}",
        "customer_id": customer,
        "segment": segment,
        "change": "entered" if seq % 2 else "exited",
        "at": f"2026-11-20T14:{seq % 60:02d}:00Z",
        "cause": "purchase",
        "event_id": None,
        "rules_version": 1,
        "seq": seq,
        "metrics": {},
    }


class World:
    """The changes and memberships the worker would publish, and what the cache must say."""

    def __init__(self, bootstrap: str, changes: str, memberships: str) -> None:
        self.producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5)
        self.changes, self.memberships = changes, memberships
        self.expected: dict[str, list[str]] = {}

    def publish(self, customer: str, segment: str, seq: int) -> None:
        item = change(customer, segment, seq)
        key = f"{customer}|{segment}".encode()
        self.producer.send(self.changes, orjson.dumps(item), key=customer.encode())
        value = orjson.dumps({**item, "since": item["at"]}) if seq % 2 else None
        self.producer.send(self.memberships, value, key=key)
        segments = set(self.expected.get(customer, []))
        segments = segments | {segment} if seq % 2 else segments - {segment}
        self.expected[customer] = sorted(segments)

    def history(self) -> None:
        """Every third customer a VIP, every fifth a runner; some entered and left again."""
        for i in range(CUSTOMERS):
            customer = f"c-{i}"
            if i % 3 == 0:
                self.publish(customer, "vip", 1)
            if i % 5 == 0:
                self.publish(customer, "runner", 1)
                if i % 10 == 0:
                    self.publish(customer, "runner", 2)
        self.producer.flush()

    def members(self) -> dict[str, list[str]]:
        return {c: s for c, s in self.expected.items() if s}


class Serve:
    """`segments serve` in its own process, with the HTTP port and the fast path."""

    def __init__(self, env: dict[str, str], log: Path, *extra: str) -> None:
        self.port, self.lookup_port = free_port(), free_port()
        self.log = log
        command = [sys.executable, "-m", "streams", "serve", "--no-triggers"]
        command += ["--port", str(self.port), "--lookup-port", str(self.lookup_port), *extra]
        self.process = subprocess.Popen(
            command,
            env={**{k: v for k, v in os.environ.items() if not k.startswith("SEGMENTS_")}, **env},
            stdout=subprocess.DEVNULL,
            stderr=log.open("wb"),
        )
        wait_until(lambda: get(self.port, "/healthz")[0] == 200, 60, what="serve to listen")

    @property
    def ports(self) -> tuple[int, int]:
        return self.port, self.lookup_port

    def lookup(self, port: int, customer: str) -> tuple[int, dict[str, str], dict]:
        status, headers, body = get(port, f"/customers/{customer}/segments")
        return status, headers, orjson.loads(body)

    def answers(self, expected: dict[str, list[str]]) -> bool:
        """Every customer's lookup equals `expected` on both ports."""
        for port in self.ports:
            for customer, segments in expected.items():
                status, _, body = self.lookup(port, customer)
                if status != 200 or [s["name"] for s in body["segments"]] != segments:
                    return False
        return True

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@pytest.fixture
def world(kafka_bootstrap: str, create_topics, topics) -> Iterator[World]:
    create_topics(topics.segment_changes, partitions=2)
    create_topics(topics.segment_memberships, partitions=2, config={"cleanup.policy": "compact"})
    built = World(kafka_bootstrap, topics.segment_changes, topics.segment_memberships)
    yield built
    built.producer.close()


@pytest.fixture
def serve_env(segments_env: dict[str, str], private_redis: PrivateRedis) -> dict[str, str]:
    return {**segments_env, "SEGMENTS_REDIS_URL": private_redis.url}


def test_redis_restarted_empty_while_idle_is_rebuilt_and_no_lookup_says_no_segments(
    world: World, serve_env: dict[str, str], private_redis: PrivateRedis, tmp_path: Path
) -> None:
    """No change flows after the restart: serve notices by itself and rebuilds; meanwhile
    every lookup of a member is a 503 with Retry-After, never a 200 without its segments."""
    world.history()
    serve = Serve(serve_env, tmp_path / "serve.log")
    try:
        members = world.members()
        wait_until(lambda: serve.answers(members), 60, what="the first cache")

        private_redis.stop(save=False)
        private_redis.start()  # same port, nothing in it
        vip = "c-0"
        wrong: list[tuple[int, int, dict]] = []
        unavailable: list[tuple[int, dict]] = []

        def back() -> bool:
            for port in serve.ports:
                status, headers, body = serve.lookup(port, vip)
                if status == 503:
                    unavailable.append((port, body))
                    if headers.get("Retry-After") != "1" or body["error"] not in (
                        "cache-rebuilding",
                        "cache-unavailable",
                    ):
                        wrong.append((port, status, body))
                    return False
                if status != 200 or [s["name"] for s in body["segments"]] != members[vip]:
                    wrong.append((port, status, body))
                    return False
            return True

        wait_until(back, 60, interval=0.01, what="serve to rebuild the cache by itself")
        assert wrong == [], f"lookups that said something else than 503 or the truth: {wrong}"
        wait_until(lambda: serve.answers(members), 30, what="every membership back")
        status, _, body = get(serve.port, "/segments")
        assert status == 200
        sizes = {s["name"]: s["size"] for s in orjson.loads(body)["segments"]}
        for segment in SEGMENTS:
            assert sizes[segment] == sum(segment in s for s in members.values())
        for port in serve.ports:
            assert get(port, "/readyz")[0] == 200
        log = (tmp_path / "serve.log").read_text()
        assert "cache_sink_cache_lost" in log and "cache_sink_resynced" in log
        print(f"503 answers while the cache was missing: {len(unavailable)}")
    finally:
        serve.stop()


def test_while_the_cache_is_missing_lookups_and_readyz_say_503_until_a_change_rebuilds_it(
    world: World, serve_env: dict[str, str], private_redis: PrivateRedis, tmp_path: Path
) -> None:
    """The idle check is far off (an hour), so only the next change can notice the empty
    Redis: until then both ports answer 503 every time; the change rebuilds the cache
    before it is applied, and lookups then hold the old memberships and the new one."""
    world.history()
    serve = Serve(serve_env, tmp_path / "serve.log", "--cache-check-interval", "3600")
    try:
        members = world.members()
        wait_until(lambda: serve.answers(members), 60, what="the first cache")

        private_redis.stop(save=False)
        private_redis.start()

        def rebuilding_on_both_ports() -> bool:
            return all(
                serve.lookup(port, "c-0")[2].get("error") == "cache-rebuilding"
                for port in serve.ports
            )

        # The first lookups may see the connection the restart broke (cache-unavailable).
        wait_until(rebuilding_on_both_ports, 30, what="lookups to say cache-rebuilding")
        for port in serve.ports:
            for customer in ("c-0", "c-3", "c-5", "nobody"):
                status, headers, body = serve.lookup(port, customer)
                assert status == 503, (port, customer, status, body)
                assert body["error"] == "cache-rebuilding" and body["message"]
                assert headers["Retry-After"] == "1"
            status, _, body = get(port, "/readyz")
            assert status == 503 and orjson.loads(body)["reason"] == "cache-rebuilding"
        status, _, text = get(serve.port, "/metrics")
        assert status == 200 and b"segments_cache_complete 0.0" in text
        for path in ("/segments", "/segments/vip/members"):
            status, _, body = get(serve.port, path)
            assert status == 503 and orjson.loads(body)["error"] == "cache-rebuilding"

        world.publish("c-1", "vip", 1)  # a new purchase makes c-1 a VIP
        world.producer.flush()
        members = world.members()
        wait_until(lambda: serve.answers(members), 60, what="the old and the new memberships")
        for port in serve.ports:
            assert get(port, "/readyz")[0] == 200
        assert b"segments_cache_complete 1.0" in get(serve.port, "/metrics")[2]
    finally:
        serve.stop()


def test_while_redis_is_down_metrics_answer_and_every_read_says_503(
    world: World, serve_env: dict[str, str], private_redis: PrivateRedis, tmp_path: Path
) -> None:
    """Prometheus can still scrape the failure counter during the outage its alert is
    about; reads answer 503 with a clear body; all comes back when Redis does."""
    world.history()
    serve = Serve(serve_env, tmp_path / "serve.log")
    try:
        members = world.members()
        wait_until(lambda: serve.answers(members), 60, what="the first cache")
        for cursor in ("x", "3:99999999999999999999", "1:5_0", "16:0"):
            status, _, body = get(serve.port, f"/segments/vip/members?cursor={cursor}")
            assert status == 400 and orjson.loads(body)["error"] == "bad-cursor", cursor

        private_redis.stop(save=True)  # an outage, not a loss: the data comes back
        status, _, text = get(serve.port, "/metrics")
        assert status == 200
        assert b"segments_cache_redis_up 0.0" in text
        assert b"segments_cache_write_failures_total" in text
        assert b"segments_size{" not in text
        for path in ("/segments", "/segments/vip/members", "/customers/c-0/segments"):
            status, headers, body = get(serve.port, path)
            assert status == 503, path
            assert orjson.loads(body)["error"] == "cache-unavailable"
            assert headers["Retry-After"] == "1"
        for port in serve.ports:
            status, _, body = serve.lookup(port, "c-0")
            assert (status, body["error"]) == (503, "cache-unavailable")
            status, _, raw = get(port, "/readyz")
            assert status == 503 and orjson.loads(raw)["reason"] == "cache-unavailable"

        private_redis.start()
        wait_until(lambda: serve.answers(members), 60, what="lookups after the outage")
        status, _, text = get(serve.port, "/metrics")
        assert b"segments_cache_redis_up 1.0" in text and b'segments_size{segment="vip"}' in text
        for port in serve.ports:
            assert get(port, "/readyz")[0] == 200
        # One rebuild: the new cache at start. The outage kept the data, so none after it.
        assert (tmp_path / "serve.log").read_text().count("cache_sink_cache_lost") == 1
    finally:
        serve.stop()
