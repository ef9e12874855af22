"""benchmarks/peer_bench.py's pure parts: the peers' job against replay, the check, the medians."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from segments.clock import parse_instant
from segments.generate import generate_events
from segments.replay import run
from segments.rules.evaluator import compile_rules
from segments.rules.ruleset import load_ruleset
from streams.kafka.produce import clock_mark

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]


def load_peer_bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "peer_bench", REPO / "benchmarks" / "peer_bench.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("peer_bench", module)
    spec.loader.exec_module(module)
    return module


peer_bench = load_peer_bench()


def test_the_peers_job_on_one_partition_gives_replays_changes() -> None:
    rules = compile_rules(load_ruleset(REPO / "segments" / "data" / "example_rules.yaml"))
    lines = list(generate_events(40, 200, seed=5))
    as_of = parse_instant("2026-12-01T00:00:00Z")
    expected: list[bytes] = []
    run(
        enumerate(lines, start=1),
        rules,
        lambda change, line: expected.append(change.to_json()),
        lambda record, line, instant: None,
        as_of,
    )
    job = peer_bench.PeerJob(rules)
    received = [
        change.to_json() for value in [*lines, clock_mark(as_of)] for change in job.handle(0, value)
    ]
    written = [state.customer_id for state in job.take_dirty()]
    check = peer_bench.check_changes(expected, received)
    assert expected and check.equal, check.describe()
    assert len(written) == len(set(written)) > 0  # each customer once per commit
    assert job.take_dirty() == []


def test_the_check_counts_missing_and_extra_lines_with_repeats() -> None:
    check = peer_bench.check_changes([b"a\n", b"b\n", b"b\n"], [b"b", b"c", b"c"])
    assert (check.expected, check.received, check.missing, check.extra) == (3, 3, 2, 2)
    assert not check.equal
    assert peer_bench.check_changes([b"a", b"b"], [b"b", b"a"]).equal


def test_medians_per_label_and_rotating_orders() -> None:
    Round = peer_bench.Round
    rounds = [
        Round("x", "faust", 1, 100.0, 9.0, 0.0),
        Round("x", "faust", 2, 300.0, 7.0, 0.0),
        Round("x", "faust", 3, 200.0, 8.0, 0.0),
        Round("y", "raw", 1, 50.0, 1.0, 0.0),
    ]
    assert peer_bench.medians(rounds) == {"x": (200.0, 8.0), "y": (50.0, 1.0)}
    assert peer_bench.rotations(3, 4) == [[0, 1, 2], [1, 2, 0], [2, 0, 1], [0, 1, 2]]


def test_profile_shares_by_innermost_frame_without_start_up() -> None:
    collapsed = [
        "main (streams/__main__.py:5);step (segments/membership.py:9) 3",
        "main (streams/__main__.py:5);assess (example.yaml v1>:2) 1",
        "main (streams/__main__.py:5);Store._set (faust/stores/rocksdb.py:1) 2",
        "main (streams/__main__.py:5);_find_and_load (<frozen importlib>:1);x (faust/a.py:1) 9",
        "main (streams/__main__.py:5);write (asyncio/selector_events.py:1) 4",
        "not a sample line",
    ]
    shares = peer_bench.profile_shares(collapsed)
    assert shares == {
        "the core (segments/, compiled rules)": 0.4,
        "socket writes and reads (asyncio transports)": 0.4,
        "Faust's RocksDB store": 0.2,
    }
    inclusive = peer_bench.profile_inclusive(collapsed, ["main", "step", "x"])
    assert inclusive == {"main": 1.0, "step": 0.3, "x": 0.0}
