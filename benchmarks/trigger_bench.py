"""Trigger delay: from a win_back entry's `at` (its due instant) to the webhook call.

    .venv/bin/python benchmarks/trigger_bench.py [--rate 200] [--duration 30]

Starts the trigger dispatcher (`python -m streams triggers`) as its own process on fresh
topics and Redis prefix, a webhook receiver on 127.0.0.1 in this process, and publishes
win_back entries to segment-changes at --rate a second, each stamped `at` = now, as a
wall-clock worker stamps a time-driven entry when it is due. The receiver records
arrival - at. This measures Kafka + dispatcher + HTTP; the worker's own lateness in
noticing a deadline is measured by the worker's deadline-lateness metric, not here.
Prints one JSON line. Loopback only, bounded by --duration.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import orjson
from aiohttp import web
from aiokafka import AIOKafkaProducer

REPO = Path(__file__).resolve().parents[1]


def iso(seconds: float) -> str:
    moment = datetime.fromtimestamp(seconds, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] if ordered else 0.0


async def main(args: argparse.Namespace) -> dict:
    bootstrap = os.environ.get("SEGMENTS_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    redis_url = os.environ.get("SEGMENTS_REDIS_URL", "redis://127.0.0.1:6379/0")
    prefix = f"bench-{uuid.uuid4().hex[:8]}."
    topic = prefix + "segment-changes"
    delays: list[float] = []
    keys: set[str] = set()
    duplicates = 0

    async def hook(request: web.Request) -> web.Response:
        nonlocal duplicates
        body = await request.json()
        delays.append(time.time() - datetime.fromisoformat(body["at"]).timestamp())
        key = request.headers["Idempotency-Key"]
        duplicates += key in keys
        keys.add(key)
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hooks/winback", hook)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]

    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="trigger-bench")
    admin.create_topics([NewTopic(topic, 8, 1)])
    rules = Path(tempfile.mkdtemp()) / "rules.yaml"
    rules.write_text(
        "version: 1\nbase_currency: EUR\nsegments:\n"
        "  - name: win_back\n    when: days_since_last_purchase() > 90\n"
        "triggers:\n  - name: winback-email\n    segment: win_back\n    on: entered\n"
        f"    webhook: http://127.0.0.1:{port}/hooks/winback\n"
    )
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SEGMENTS_")},
        "SEGMENTS_KAFKA_BOOTSTRAP": bootstrap,
        "SEGMENTS_REDIS_URL": redis_url,
        "SEGMENTS_TOPIC_PREFIX": prefix,
        "SEGMENTS_REDIS_PREFIX": prefix,
        "SEGMENTS_APP_ID": prefix + "app",
        "SEGMENTS_RULES": str(rules),
    }
    dispatcher = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "streams", "triggers", env=env, cwd=rules.parent,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    drain = None
    try:
        while True:
            line = await asyncio.wait_for(dispatcher.stderr.readline(), 60)
            if not line:
                raise SystemExit("dispatcher exited before it was ready")
            if b"triggers_ready" in line:
                break
        drain = asyncio.create_task(dispatcher.stderr.read())
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=0)
        await producer.start()
        total = int(args.rate * args.duration)
        start = time.monotonic()
        for i in range(total):
            customer = f"c-{i}"
            change = {
                "change_id": f"{customer}:win_back:1",
                "customer_id": customer,
                "segment": "win_back",
                "change": "entered",
                "at": iso(time.time()),
                "cause": "time",
                "event_id": None,
                "rules_version": 1,
                "seq": 1,
                "metrics": {"days_since_last_purchase": 91},
            }
            await producer.send(topic, orjson.dumps(change), key=customer.encode())
            ahead = (i + 1) / args.rate - (time.monotonic() - start)
            if ahead > 0:
                await asyncio.sleep(ahead)  # pacing the offered load
        await producer.stop()
        deadline = time.monotonic() + 60
        while len(keys) < total and time.monotonic() < deadline:
            await asyncio.sleep(0.1)  # bounded wait for the tail of the calls
        return {
            "bench": "trigger_delay",
            "rate_per_s": args.rate,
            "changes": total,
            "delivered": len(keys),
            "duplicates": duplicates,
            "p50_ms": round(percentile(delays, 50) * 1000, 1),
            "p99_ms": round(percentile(delays, 99) * 1000, 1),
            "max_ms": round(max(delays, default=0) * 1000, 1),
            "cpus": os.cpu_count(),
            "load_average_1m_after": round(os.getloadavg()[0], 2),
        }
    finally:
        dispatcher.send_signal(signal.SIGTERM)
        await asyncio.wait_for(dispatcher.wait(), 30)
        if drain is not None:
            await drain
        await runner.cleanup()
        admin.delete_topics([topic])
        admin.close()
        import redis

        client = redis.Redis.from_url(redis_url)
        stale = list(client.scan_iter(match=f"{prefix}*", count=1000))
        if stale:
            client.delete(*stale)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=200.0, help="entries a second")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds (at most 300)")
    arguments = parser.parse_args()
    arguments.duration = min(arguments.duration, 300.0)
    print(json.dumps(asyncio.run(main(arguments))))
