"""Replay throughput: events per second of `segments replay` and its peak memory.

Generates (once, cached under bench-out/) N events of C customers with
`segments generate`, then runs the real `segments replay` command in a fresh
process with the SPEC example rule set and reads its summary and peak RSS.
Usage: python benchmarks/replay_bench.py [--events 1000000] [--customers 100000] [--jobs N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import orjson

from segments.clock import parse_instant

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench-out"
RULES = ROOT / "segments" / "data" / "example_rules.yaml"


def machine() -> str:
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"


def ensure_input(events: int, customers: int, days: int, seed: int) -> Path:
    """N events of C customers: `segments generate` runs with seeds until it has enough.

    The generator gives each customer a handful of purchases, so a 10-events-per-
    customer file is the union of several seeded runs over the same customer ids;
    event ids of run k > 0 get a `k-` prefix (also in original_event_id) to stay
    unique. The union is sorted by occurred_at and cut at N events.
    """
    OUT.mkdir(exist_ok=True)
    path = OUT / f"events-{events}-{customers}-{days}-{seed}.jsonl"
    if path.exists():
        return path
    timeline: list[tuple[int, bytes]] = []
    run = 0
    while len(timeline) < events:
        raw = OUT / f"raw-{customers}-{days}-{seed + run}.jsonl"
        subprocess.run(
            [sys.executable, "-m", "streams", "generate", "--customers", str(customers),
             "--days", str(days), "--seed", str(seed + run), "--out", str(raw)],
            check=True,
        )  # fmt: skip
        with raw.open("rb") as source:
            for line in source:
                record = orjson.loads(line)
                if run:
                    record["event_id"] = f"{run}-{record['event_id']}"
                    if record.get("original_event_id"):
                        record["original_event_id"] = f"{run}-{record['original_event_id']}"
                instant = parse_instant(record["occurred_at"].replace("Z", "+00:00"))
                timeline.append((instant, orjson.dumps(record)))
        raw.unlink()
        run += 1
    timeline.sort(key=lambda entry: entry[0])
    with path.open("wb") as target:
        for _, line in timeline[:events]:
            target.write(line + b"\n")
    return path


def run_replay(path: Path, out: Path, profile: bool, jobs: int = 1) -> dict[str, object]:
    command = [
        sys.executable,
        "-m",
        "streams",
        "replay",
        "--rules",
        str(RULES),
        "--input",
        str(path),
        "--out",
        str(out),
        "--jobs",
        str(jobs),
    ]
    if profile:
        command = [
            sys.executable,
            "-m",
            "pyinstrument",
            "-r",
            "text",
            "-o",
            str(OUT / "replay-profile.txt"),
            "-m",
            "streams",
            *command[3:],
        ]
    started = time.perf_counter()
    subprocess.run(command, check=True)
    wall = time.perf_counter() - started
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # the replay and its jobs
    peak_kib = usage.ru_maxrss
    summary = json.loads((out / "summary.json").read_text())
    return {
        "wall_seconds": round(wall, 2),
        "peak_rss_mib": round(peak_kib / 1024),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 1),
        "summary": summary,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--customers", type=int, default=100_000)
    parser.add_argument("--days", type=int, default=730)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--profile", action="store_true", help="write a pyinstrument profile")
    parser.add_argument("--jobs", type=int, default=1, help="segments replay --jobs")
    args = parser.parse_args()
    path = ensure_input(args.events, args.customers, args.days, args.seed)
    result = run_replay(path, OUT / "replay", args.profile, args.jobs)
    summary = result["summary"]
    assert isinstance(summary, dict)
    report = {
        "machine": machine(),
        "input": path.name,
        "events": summary["events_read"],
        "customers": args.customers,
        "jobs": args.jobs,
        "load_average_1m": round(os.getloadavg()[0], 2),
        "replay_seconds": summary["seconds"],
        "events_per_second": summary["events_per_second"],
        "process_wall_seconds": result["wall_seconds"],
        "peak_rss_mib": result["peak_rss_mib"],
        "cpu_seconds": result["cpu_seconds"],
        "changes": summary["changes"],
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
