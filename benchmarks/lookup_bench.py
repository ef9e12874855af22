"""Checkout lookup latency: GET /customers/{id}/segments at a fixed rate, p50/p99 and errors.

    .venv/bin/python benchmarks/lookup_bench.py [--rate 5000] [--connections 200]
        [--duration 30] [--customers 100000] [--workers 1] [--ingest 0] [--install-wrk]

Fills Redis (a private key prefix on SEGMENTS_REDIS_URL) with --customers customers, starts
`segments serve` on 127.0.0.1 (HTTP only, or with the cache sink when --ingest > 0, which
then applies that many segment changes a second from Kafka during the run), and drives it
with wrk (Debian's package; --install-wrk installs it with apt-get). Each of the
--connections connections sends one request, then waits a random think time averaging
connections/rate seconds, so the offered load is about --rate requests a second and the
latency is not inflated by a saturated closed loop. Loopback only; bounded by --duration.
Prints one JSON line with the figures; everything it created is deleted at the end.
Redis Cluster and TLS: SEGMENTS_REDIS_CLUSTER and SEGMENTS_REDIS_SSL_* are passed on
(docs/serving.md "Redis Cluster and TLS"); Redis CPU is then that of the node the URL names.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from streams.serving.cache import CacheWrite, RedisCache, connect  # noqa: E402
from streams.settings import load_settings  # noqa: E402

REDIS_CONNECTION = (
    "SEGMENTS_REDIS_CLUSTER",
    "SEGMENTS_REDIS_SSL_CAFILE",
    "SEGMENTS_REDIS_SSL_CERTFILE",
    "SEGMENTS_REDIS_SSL_KEYFILE",
)

SEGMENTS = ["vip", "win_back", "big_spender", "runner", "online_only", "new_customer"]

WRK_SCRIPT = r"""
local customers, mean_delay, token
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  customers = tonumber(args[1])
  mean_delay = tonumber(args[2])
  token = args[3]
  math.randomseed(os.time() * 1000 + math.floor(os.clock() * 1000000))
end

function request()
  local headers = {}
  if token and token ~= "" then headers["Authorization"] = "Bearer " .. token end
  local id = math.random(0, customers - 1)
  return wrk.format("GET", "/customers/c-" .. id .. "/segments", headers)
end

function delay()
  return math.random() * 2 * mean_delay
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p90_us": %d, ' ..
    '"p99_us": %d, "p999_us": %d, "max_us": %d, "mean_us": %.1f, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max, latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


def ensure_wrk(install: bool) -> str:
    found = shutil.which("wrk")
    if found:
        return found
    if not install:
        sys.exit("wrk not found: rerun with --install-wrk (apt-get install wrk) or install it")
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run([*sudo, "apt-get", "install", "-y", "-q", "wrk"], env=env).returncode:
        subprocess.run([*sudo, "apt-get", "update", "-q"], env=env, check=True)
        subprocess.run([*sudo, "apt-get", "install", "-y", "-q", "wrk"], env=env, check=True)
    return shutil.which("wrk") or sys.exit("wrk still not found after apt-get install")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its reaped children, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def process_tree(pid: int) -> list[int]:
    out = [pid]
    for child in Path("/proc").glob("[0-9]*"):
        try:
            if int(child.joinpath("stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(child.name))
        except (OSError, ValueError, IndexError):
            pass
    return out


def redis_pid(url: str) -> int | None:
    import redis

    settings = load_settings(env_file=None, redis_url=url)
    try:
        node = redis.Redis.from_url(url, **settings.redis_target.ssl_options())
        return int(node.info("server")["process_id"])
    except Exception:
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def fill(cache: RedisCache, customers: int, seed: int = 1) -> int:
    """Every customer gets 0..3 segments (about a third in none)."""
    rng = random.Random(seed)
    writes, total = [], 0
    for i in range(customers):
        for segment in rng.sample(SEGMENTS, rng.choice((0, 1, 1, 2, 3))):
            writes.append(CacheWrite(f"c-{i}", segment, 1, True, "2026-11-20T14:03:11.120Z"))
        if len(writes) >= 5000:
            await cache.apply(writes)
            total, writes = total + len(writes), []
    await cache.apply(writes)
    # As a rebuild from segment-memberships leaves it: without it every lookup is a 503.
    await cache.client.set(cache.keys.sentinel(), "resynced")
    return total + len(writes)


def count_messages(bootstrap: str, topic: str) -> int:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        ends = consumer.end_offsets([TopicPartition(topic, p) for p in partitions])
        return sum(ends.values())
    finally:
        consumer.close()


def wait_healthy(port: int, timeout: float = 60, path: str = "/healthz") -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.monotonic() > deadline:
            sys.exit("server did not answer /healthz")
        time.sleep(0.1)


def ingest(
    bootstrap: str, topic: str, rate: int, seconds: float, customers: int
) -> subprocess.Popen:
    """A producer process sending `rate` segment changes a second to `topic`."""
    code = f"""
import asyncio, time, random, orjson
from aiokafka import AIOKafkaProducer
async def main():
    p = AIOKafkaProducer(bootstrap_servers={bootstrap!r}, linger_ms=5)
    await p.start()
    rng, seq, start, sent = random.Random(2), {{}}, time.monotonic(), 0
    while time.monotonic() - start < {seconds}:
        c = f"c-{{rng.randrange({customers})}}"
        s = rng.choice({SEGMENTS!r})
        n = seq[(c, s)] = seq.get((c, s), 1) + 1
        v = {{"change_id": f"{{c}}:{{s}}:{{n}}", "customer_id": c, "segment": s,
             "change": "entered" if n % 2 else "exited", "at": "2026-11-21T00:00:00Z",
             "cause": "purchase", "event_id": None, "rules_version": 1, "seq": n, "metrics": {{}}}}
        await p.send({topic!r}, orjson.dumps(v), key=c.encode())
        sent += 1
        ahead = sent / {rate} - (time.monotonic() - start)
        if ahead > 0:
            await asyncio.sleep(ahead)
    await p.stop()
    print("INGESTED", sent, flush=True)
asyncio.run(main())
"""
    return subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=int, default=5000)
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--duration", type=int, default=30, help="seconds (at most 300)")
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=1, help="HTTP server processes")
    parser.add_argument("--ingest", type=int, default=0, help="segment changes/s during run")
    parser.add_argument(
        "--worker-customers",
        type=int,
        default=0,
        help="run a real worker (event clock) and the cache sink during the run, fed with"
        " `segments generate --customers N` events by `segments produce`",
    )
    parser.add_argument("--token", default="", help="bearer token to require and send")
    parser.add_argument(
        "--fast", action="store_true", help="target the checkout fast path (--lookup-port)"
    )
    parser.add_argument("--install-wrk", action="store_true")
    args = parser.parse_args()
    duration = max(1, min(args.duration, 300))
    wrk = ensure_wrk(args.install_wrk)

    redis_url = os.environ.get("SEGMENTS_REDIS_URL", "redis://127.0.0.1:6379/0")
    target = load_settings(env_file=None, redis_url=redis_url).redis_target
    bootstrap = os.environ.get("SEGMENTS_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
    prefix = f"bench-{uuid.uuid4().hex[:8]}."
    port = free_port()
    lookup_port = free_port() if args.fast else None

    async def setup() -> int:
        client = connect(target)
        try:
            return await fill(RedisCache(client, prefix), args.customers)
        finally:
            await client.aclose()

    started = time.monotonic()
    memberships = asyncio.run(setup())
    fill_s = time.monotonic() - started

    topic = prefix + "segment-changes"
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="lookup-bench")
    if args.ingest:
        admin.create_topics([NewTopic(topic, 8, 1)])
    workdir = Path(tempfile.mkdtemp(prefix="lookup-bench-"))
    events_file = workdir / "events.jsonl"
    if args.worker_customers:
        subprocess.run(
            [sys.executable, "-m", "streams", "generate", "--customers",
             str(args.worker_customers), "--days", "365", "--out", str(events_file)],
            check=True, cwd=workdir, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        events_count = sum(1 for _ in events_file.open())
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("SEGMENTS_")},
        "SEGMENTS_REDIS_URL": redis_url,
        "SEGMENTS_KAFKA_BOOTSTRAP": bootstrap,
        "SEGMENTS_REDIS_PREFIX": prefix,
        "SEGMENTS_TOPIC_PREFIX": prefix,
        "SEGMENTS_APP_ID": prefix + "app",
        "SEGMENTS_API_TOKEN": args.token,
        "SEGMENTS_CLOCK": "event",
        "SEGMENTS_DATA_DIR": str(workdir / "data"),
        **{name: os.environ[name] for name in REDIS_CONNECTION if name in os.environ},
    }
    command = [sys.executable, "-m", "streams", "serve", "--no-triggers", "--port", str(port)]
    command += ["--workers", str(args.workers)]
    if lookup_port is not None:
        command += ["--lookup-port", str(lookup_port)]
    command.append("--no-sink")
    server = subprocess.Popen(
        command, env=env, cwd=tempfile.gettempdir(), stderr=subprocess.DEVNULL
    )
    sink = worker = feeder = None
    worker_port = free_port()
    if args.worker_customers:
        worker = subprocess.Popen(
            [sys.executable, "-m", "streams", "worker"],
            env={**env, "SEGMENTS_WEB_PORT": str(worker_port)},
            cwd=workdir,
            stdout=(workdir / "worker.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
    if args.ingest or args.worker_customers:  # the cache sink in its own process
        sink_command = [sys.executable, "-m", "streams", "serve", "--no-triggers"]
        sink_command += ["--port", str(free_port())]
        sink = subprocess.Popen(
            sink_command, env=env, cwd=tempfile.gettempdir(), stderr=subprocess.DEVNULL
        )
    producer = None
    try:
        wait_healthy(port)
        if worker is not None:
            wait_healthy(worker_port, timeout=120, path="/readyz")
            feeder = subprocess.Popen(
                [sys.executable, "-m", "streams", "produce", "--input", str(events_file)],
                env=env, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
        if args.ingest:
            producer = ingest(bootstrap, topic, args.ingest, duration + 5, args.customers)
        with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
            script.write(WRK_SCRIPT)
        mean_delay_ms = 1000.0 * args.connections / args.rate
        wrk_command = [
            wrk, f"-t{args.threads}", f"-c{args.connections}", f"-d{duration}s",
            "--timeout", "2s", "-s", script.name, f"http://127.0.0.1:{lookup_port or port}",
            "--", str(args.customers), f"{mean_delay_ms:.3f}", args.token,
        ]  # fmt: skip
        servers = process_tree(server.pid)
        redis_process = redis_pid(redis_url)
        cpu_before = {p: cpu_seconds(p) for p in [*servers, redis_process] if p}
        wrk_before = os.times().children_user + os.times().children_system
        output = subprocess.run(wrk_command, capture_output=True, text=True, check=True).stdout
        wrk_cpu = os.times().children_user + os.times().children_system - wrk_before
        server_cpu = sum(cpu_seconds(p) - cpu_before[p] for p in servers)
        redis_cpu = cpu_seconds(redis_process) - cpu_before[redis_process] if redis_process else 0
        load = os.getloadavg()[0]
        os.unlink(script.name)
        line = next(x for x in output.splitlines() if x.startswith("WRKJSON "))
        result = json.loads(line.removeprefix("WRKJSON "))
        try:
            import uvloop  # type: ignore[import-not-found]  # noqa: F401

            loop = "uvloop"
        except ImportError:
            loop = "asyncio"
        seconds = result["duration_us"] / 1e6
        report = {
            "bench": "lookup",
            "offered_rate": args.rate,
            "achieved_rate": round(result["requests"] / seconds),
            "connections": args.connections,
            "duration_s": round(seconds, 1),
            "requests": result["requests"],
            "p50_ms": result["p50_us"] / 1000,
            "p90_ms": result["p90_us"] / 1000,
            "p99_ms": result["p99_us"] / 1000,
            "p999_ms": result["p999_us"] / 1000,
            "max_ms": result["max_us"] / 1000,
            "errors": result["errors"],
            "cpu_us_per_request": {
                "server": round(server_cpu / max(1, result["requests"]) * 1e6, 1),
                "redis": round(redis_cpu / max(1, result["requests"]) * 1e6, 1),
                "wrk": round(wrk_cpu / max(1, result["requests"]) * 1e6, 1),
            },
            "load_average_1m_after": round(load, 2),
            "server_processes": args.workers,
            "server": "fast-path protocol" if args.fast else "aiohttp",
            "redis": ("cluster " if target.cluster else "") + ("tls" if target.tls else "plain"),
            "event_loop": loop,
            "ingest_changes_per_s": args.ingest,
            "ingest_sink": "separate process" if args.ingest else None,
            "customers": args.customers,
            "memberships": memberships,
            "fill_s": round(fill_s, 1),
            "cpus": os.cpu_count(),
        }
        if producer is not None:
            producer.send_signal(signal.SIGTERM)
        if worker is None:
            print(json.dumps(report))
    finally:
        if producer is not None and producer.poll() is None:
            producer.kill()
        if worker is not None and "report" in locals():
            report["worker_events_offered"] = events_count
            report["worker_events_produced_all_in_window"] = feeder.poll() == 0
            report["worker_changes_published"] = count_messages(bootstrap, topic)
            print(json.dumps(report))
        for process in (feeder, worker, server, sink):
            if process is None:
                continue
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()

        async def cleanup() -> None:
            client = connect(target)
            try:
                await RedisCache(client, prefix).delete_all()
            finally:
                await client.aclose()

        asyncio.run(cleanup())
        created = [t for t in admin.list_topics() if t.startswith(prefix)]
        if created:
            admin.delete_topics(created)
        admin.close()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
