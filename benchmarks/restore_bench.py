"""How long a worker takes to come back when its local state (a pod's volume) is lost.

    .venv/bin/python benchmarks/restore_bench.py [--customers 1500] [--events 5000]

One `segments worker` (clock: event) drains a backlog of --events synthetic events
from `purchases` and stops cleanly. Then it is started three times on the same data:

- kept:  the data dir as it was (a pod restarted on its volume);
- lost:  the data dir deleted first (a pod whose volume is gone): the customers table
         is restored from its changelog topic;
- after: on that restored state, a second batch of events for the same customers is
         produced and drained, and everything published must equal `segments replay`
         of both batches: proof that the restored table was whole.

For each start it reports the seconds from process start to the first /readyz 200,
and to the first /readyz body with `"recovered": true` (table recovery done). Needs the
local Kafka (deploy/local/services.sh up); topics and groups of the run are deleted at
the end. Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from segments.data import EXAMPLE_RULES  # noqa: E402
from tests.integration.worker_harness import (  # noqa: E402
    WorkerProcess,
    assert_equals_replay,
    end_offsets,
    produce,
    read_published,
    replay_reference,
    synthetic_events,
    wait_drained,
    write_jsonl,
)

BOOTSTRAP = os.environ.get("SEGMENTS_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
PARTITIONS = 8
AS_OF_SECOND = "2026-12-01T00:00:00Z"


def readyz(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"{}")
    except (urllib.error.URLError, ConnectionError, TimeoutError, json.JSONDecodeError):
        return 0, {}


def timed_start(env: dict[str, str], log: Path, timeout: float = 600) -> tuple[WorkerProcess, dict]:
    """Start a worker; seconds until /readyz says recovered, and until it answers 200."""
    worker = WorkerProcess(dict(env), log)
    started = time.monotonic()
    worker.start()
    recovered = ready = None
    while ready is None:
        elapsed = time.monotonic() - started
        if elapsed > timeout:
            worker.kill()
            raise SystemExit(f"no /readyz 200 within {timeout}s:\n{worker.tail()}")
        if worker.process is not None and worker.process.poll() is not None:
            raise SystemExit(f"worker exited:\n{worker.tail()}")
        status, body = readyz(worker.port)
        if recovered is None and body.get("recovered"):
            recovered = elapsed
        if status == 200:
            ready = elapsed
            recovered = recovered if recovered is not None else elapsed
        time.sleep(0.05)  # polling interval of the measurement, not synchronisation
    return worker, {"recovered_s": round(recovered, 2), "ready_s": round(ready, 2)}


def delete_run(prefix: str) -> None:
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=1_500)
    parser.add_argument("--events", type=int, default=5_000)
    args = parser.parse_args()

    from streams.settings import Topics

    run = uuid.uuid4().hex[:8]
    root = f"restore-bench-{run}"
    work = Path(tempfile.mkdtemp(prefix="restore-bench-"))
    data_dir = work / "data"
    topics = Topics(f"{root}.")
    env = {
        "SEGMENTS_KAFKA_BOOTSTRAP": BOOTSTRAP,
        "SEGMENTS_TOPIC_PREFIX": f"{root}.",
        "SEGMENTS_APP_ID": root,
        "SEGMENTS_PARTITIONS": str(PARTITIONS),
        "SEGMENTS_RULES": str(EXAMPLE_RULES),
        "SEGMENTS_CLOCK": "event",
        "SEGMENTS_DATA_DIR": str(data_dir),
    }
    first = synthetic_events(args.customers, args.events, seed=11, start="2025-01-01T00:00:00Z",
                             days=540)  # fmt: skip
    # The second batch and the first batch's clock mark come after every first-batch
    # event (returns run up to 20 days past the window), so nothing of it is late.
    last = max(datetime.fromisoformat(e["occurred_at"].replace("Z", "+00:00")) for e in first)
    second_start = (last + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    as_of_first = second_start.strftime("%Y-%m-%dT%H:%M:%SZ")
    second = synthetic_events(args.customers, args.events // 5, seed=12, start=as_of_first,
                              days=120)  # fmt: skip
    for event in second:  # ids of their own, so they are not taken for duplicates
        event["event_id"] = "f" + event["event_id"][1:]
        if "original_event_id" in event:
            event["original_event_id"] = "f" + event["original_event_id"][1:]
    first_file = write_jsonl(work / "first.jsonl", first)
    second_file = write_jsonl(work / "second.jsonl", second)
    result: dict[str, Any] = {"events": len(first), "customers": args.customers}
    worker: WorkerProcess | None = None
    try:
        # The worker creates the run's topics when it starts; then the backlog arrives.
        worker, result["first_start"] = timed_start(env, work / "drain.log")
        began = time.monotonic()
        produce(env, first_file, as_of_first)
        wait_drained(BOOTSTRAP, root, topics.purchases, timeout=900, workers=(worker,))
        result["drain_s"] = round(time.monotonic() - began, 1)
        assert worker.stop() == 0
        changelog = f"{root}-customers-changelog"
        result["changelog_records"] = sum(end_offsets(BOOTSTRAP, changelog).values())
        result["data_dir_bytes"] = sum(p.stat().st_size for p in data_dir.rglob("*") if p.is_file())

        worker, result["kept"] = timed_start(env, work / "kept.log")
        assert worker.stop() == 0

        shutil.rmtree(data_dir)
        worker, result["lost"] = timed_start(env, work / "lost.log")

        produce(env, second_file, AS_OF_SECOND)
        wait_drained(BOOTSTRAP, root, topics.purchases, timeout=900, workers=(worker,))
        assert worker.stop() == 0
        both = work / "both.jsonl"
        both.write_bytes(first_file.read_bytes() + second_file.read_bytes())
        reference = replay_reference(EXAMPLE_RULES, both, work / "replay", AS_OF_SECOND)
        segments = sorted(reference.memberships)
        published = read_published(BOOTSTRAP, topics, segments)
        assert_equals_replay(published, reference, ordered=False)
        result["after_restore_equals_replay"] = True
        result["changes"] = len(reference.changes)
    except BaseException as error:
        result["error"] = f"{type(error).__name__}: {error}"[:500]
        raise
    finally:
        if worker is not None:
            worker.kill()
        delete_run(root)
        shutil.rmtree(work, ignore_errors=True)
        print(json.dumps(result))


if __name__ == "__main__":
    main()
