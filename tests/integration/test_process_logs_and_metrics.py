"""Real worker and serve processes: JSON logs at SEGMENTS_LOG_LEVEL, process metrics on /metrics."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.worker.process import RUNNING_MARKER
from tests.helpers import wait_until
from tests.integration.worker_harness import REPO_ROOT, free_port, running_workers

pytestmark = pytest.mark.slow

PROCESS_METRICS = (
    "process_cpu_seconds_total",
    "process_resident_memory_bytes",
    "process_open_fds",
    "process_start_time_seconds",
)


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every line of a log as a JSON object; fails naming the first line that is not one."""
    records = []
    for number, line in enumerate(text.splitlines(), start=1):
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise AssertionError(f"line {number} is not JSON: {line!r}\n{text[-3000:]}") from None
        assert isinstance(record, dict), line
        assert {"time", "level", "logger", "message"} <= record.keys(), line
        records.append(record)
    return records


def scrape(port: int) -> dict[str, float]:
    """The unlabelled samples of a /metrics page, by name."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    samples = {}
    for line in text.splitlines():
        match = re.fullmatch(r"([a-z_]+) (\S+)", line)
        if match:
            samples[match[1]] = float(match[2])
    return samples


def assert_process_metrics(samples: dict[str, float], pid: int) -> None:
    missing = [name for name in PROCESS_METRICS if name not in samples]
    assert not missing, f"no {missing} on /metrics"
    assert samples["process_resident_memory_bytes"] > 10 << 20  # a Python process with imports
    assert samples["process_open_fds"] >= 3
    assert samples["process_start_time_seconds"] == pytest.approx(
        os.stat(f"/proc/{pid}").st_ctime, abs=60
    )


def test_worker_at_warning_writes_json_lines_only_and_no_info(
    segments_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**segments_env, "SEGMENTS_LOG_LEVEL": "warning", "SEGMENTS_LOG_FORMAT": "json"}
    # A marker left by a run that did not stop cleanly: the worker warns at start.
    data_dir = Path(env["SEGMENTS_DATA_DIR"])
    data_dir.mkdir(parents=True)
    (data_dir / RUNNING_MARKER).write_text("1\n")
    with running_workers(env, tmp_path) as (worker,):
        worker.wait_ready()
        samples = scrape(worker.port)
        assert_process_metrics(samples, worker.pid)
        assert worker.stop() == 0
    records = json_lines(worker.log_text())
    assert [r for r in records if r["level"] not in ("WARNING", "ERROR", "CRITICAL")] == []
    [unclean] = [r for r in records if r.get("event") == "unclean_stop_detected"]
    assert unclean["level"] == "WARNING"
    assert unclean["logger"] == "streams.cli.worker"
    assert unclean["local_state"] == "discarded"


def test_worker_at_info_writes_its_own_and_fausts_lines_as_json(
    segments_env: dict[str, str], tmp_path: Path
) -> None:
    env = {**segments_env, "SEGMENTS_LOG_FORMAT": "json"}
    with running_workers(env, tmp_path) as (worker,):
        worker.wait_ready()
        assert worker.stop() == 0
    records = json_lines(worker.log_text())
    [starting] = [r for r in records if r.get("event") == "worker_starting"]
    assert starting["level"] == "INFO" and starting["partitions"] == 2
    assert starting["app_id"] == env["SEGMENTS_APP_ID"]
    assert any(r["logger"].startswith(("faust", "mode")) for r in records), "no Faust line"


def test_serve_writes_json_lines_with_fields_and_exports_process_metrics(
    segments_env: dict[str, str], tmp_path: Path
) -> None:
    port = free_port()
    log_path = tmp_path / "serve.log"
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SEGMENTS_")},
        **segments_env,
        "SEGMENTS_LOG_FORMAT": "json",
    }
    with log_path.open("wb") as log:
        serve = subprocess.Popen(
            [sys.executable, "-m", "streams", "serve", "--no-triggers", "--port", str(port)],
            env=env,
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:

        def listening() -> bool:
            assert serve.poll() is None, log_path.read_text()
            return any(r.get("event") == "serving_web" for r in json_lines(log_path.read_text()))

        wait_until(listening, 60, interval=0.2, what="serve to listen")
        assert_process_metrics(scrape(port), serve.pid)
    finally:
        serve.send_signal(signal.SIGTERM)
        serve.wait(30)
    assert serve.returncode == 0, log_path.read_text()
    records = json_lines(log_path.read_text())
    [web] = [r for r in records if r.get("event") == "serving_web"]
    assert web["level"] == "INFO" and web["port"] == port and web["host"] == "127.0.0.1"
