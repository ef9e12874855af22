"""A worker whose broker goes away: /readyz 503, a bounded log, and recovery on its own.

Issue 9, defect 5: /readyz stayed 200 for the whole outage and the worker
logged about 100 ERROR lines a second (thousands here). The shared broker must
not be stopped, so this test starts a private single-node Kafka (the same
deploy/local/kafka.sh, in its own directory and on free ports), stops it under
a running worker, and starts it again.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from tests.helpers import wait_until
from tests.integration.worker_harness import (
    REPO_ROOT,
    free_port,
    running_workers,
    wait_drained,
)

pytestmark = pytest.mark.slow

KAFKA_SCRIPT = REPO_ROOT / "deploy" / "local" / "kafka.sh"
WINDOW = 20.0  # seconds of outage over which the log rate is measured
LIMITER_WINDOW = 10.0  # streams.log_rate: one line per message template per 10 s
LOG_LINE = re.compile(r"^\[[^\]]+\] \[\d+\] \[(WARNING|ERROR|CRITICAL)\] (.*)$")
HELD_BACK = re.compile(r" \[\d+ more like this since the last one logged\]\s*$")


class PrivateKafka:
    """deploy/local/kafka.sh up/down with its own LOCAL_DIR and ports: no other test sees it."""

    def __init__(self, directory: Path) -> None:
        # Four distinct free ports: the shared broker holds the default ones, including
        # the fault suite's PROXIED listener and its proxy port (deploy/local/kafka.sh).
        ports: list[int] = []
        while len(ports) < 4:
            port = free_port()
            if port not in ports:
                ports.append(port)
        self.port, controller, proxied, proxy = ports
        self.env = {
            **os.environ,
            "LOCAL_DIR": str(directory),
            "LOCAL_KAFKA_PORT": str(self.port),
            "LOCAL_KAFKA_CONTROLLER_PORT": str(controller),
            "LOCAL_KAFKA_PROXIED_PORT": str(proxied),
            "LOCAL_KAFKA_PROXY_PORT": str(proxy),
        }
        self.bootstrap = f"127.0.0.1:{self.port}"

    def run(self, action: str) -> None:
        result = subprocess.run(
            ["bash", str(KAFKA_SCRIPT), action],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert result.returncode == 0, f"kafka.sh {action}: {result.stdout}{result.stderr}"


@pytest.fixture
def private_kafka(tmp_path: Path) -> Iterator[PrivateKafka]:
    kafka = PrivateKafka(tmp_path / "private-kafka")
    kafka.run("up")
    try:
        yield kafka
    finally:
        kafka.run("down")


def get(port: int, path: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as error:
        return int(error.code), error.read()


def metric(body: bytes, name: str) -> float:
    for line in body.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise AssertionError(f"no {name} in /metrics")


def warnings_and_errors(text: str) -> list[str]:
    """The WARNING-or-worse lines' messages, without the limiter's held-back count."""
    found = []
    for line in text.splitlines():
        match = LOG_LINE.match(line)
        if match:
            found.append(HELD_BACK.sub("", match.group(2)).strip())
    return found


def test_broker_outage_makes_the_worker_unready_logs_at_a_bounded_rate_and_recovers(
    private_kafka: PrivateKafka, segments_env: dict[str, str], topics: object, tmp_path: Path
) -> None:
    env = {**segments_env, "SEGMENTS_KAFKA_BOOTSTRAP": private_kafka.bootstrap}
    with running_workers(env, tmp_path) as (worker,):
        worker.wait_ready()
        private_kafka.run("down")
        stopped = time.monotonic()
        wait_until(
            lambda: get(worker.port, "/readyz")[0] == 503, 30, interval=0.2, what="/readyz 503"
        )
        unready_after = time.monotonic() - stopped
        status, body = get(worker.port, "/readyz")
        assert orjson.loads(body)["broker"] == "unreachable"

        # The measured window: /readyz stays 503, /metrics still answers, the log is bounded.
        log_start = len(worker.log_text())
        window_end = time.monotonic() + WINDOW
        while time.monotonic() < window_end:
            assert get(worker.port, "/readyz")[0] == 503
            time.sleep(0.5)  # a sampling interval of the measurement, not a synchronisation
        lines = warnings_and_errors(worker.log_text()[log_start:])
        status, body = get(worker.port, "/metrics")
        assert status == 200
        assert metric(body, "segments_worker_broker_reachable") == 0
        assert metric(body, "segments_worker_broker_silence_seconds") >= WINDOW

        # Each distinct message at most once per limiter window (+1 for the window's edges).
        per_message = Counter(lines)
        bound = int(WINDOW / LIMITER_WINDOW) + 1
        assert per_message and max(per_message.values()) <= bound, per_message.most_common(5)
        assert len(lines) <= 60, f"{len(lines)} WARNING/ERROR lines in {WINDOW:g} s"

        # The broker comes back: the worker is ready again and processes new events.
        private_kafka.run("up")
        worker.wait_ready(timeout=120)
        from kafka import KafkaProducer

        producer = KafkaProducer(bootstrap_servers=private_kafka.bootstrap, acks="all")
        event = {
            "event_id": "after-outage",
            "customer_id": "c-1",
            "occurred_at": "2025-03-01T10:00:00Z",
            "channel": "pos",
            "currency": "EUR",
            "total": "10.00",
        }
        producer.send(topics.purchases, key=b"c-1", value=orjson.dumps(event)).get(60)  # type: ignore[attr-defined]
        producer.close()
        wait_drained(
            private_kafka.bootstrap,
            env["SEGMENTS_APP_ID"],
            topics.purchases,  # type: ignore[attr-defined]
            timeout=120,
            workers=(worker,),
        )
        status, body = get(worker.port, "/metrics")
        assert status == 200 and metric(body, "segments_worker_broker_reachable") == 1
        assert worker.stop() == 0
    print(
        f"unready {unready_after:.1f} s after the broker stopped; "
        f"{len(lines)} WARNING/ERROR lines in {WINDOW:g} s; {len(per_message)} distinct"
    )
