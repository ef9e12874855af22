"""`segments replay --jobs N` writes the bytes of one job: customers split, outputs merged."""

from __future__ import annotations

import random
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import orjson
import pytest

from segments.clock import parse_instant
from segments.data import EXAMPLE_RULES
from segments.generate import generate_events
from segments.replay import replay
from segments.replay_jobs import job_of
from segments.rules.evaluator import compile_rules
from segments.rules.ruleset import parse_ruleset
from tests.property.test_replay_vs_reference import RICH_RULES
from tests.property.test_traits_vs_reference import TRAIT_RULES

pytestmark = pytest.mark.unit

OUTPUTS = ("changes.jsonl", "memberships.json", "rejected.jsonl", "traits.jsonl", "traits.json")
START = datetime(2025, 1, 1, tzinfo=UTC)


def _input(seed: int, days: int) -> list[bytes]:
    """Generated dirty traffic (duplicates, malformed lines, late events) with clock marks,
    a bad clock mark and blank lines at random places."""
    rng = random.Random(seed)
    lines = list(generate_events(customers=40, days=days, seed=seed, dirty=True))
    for _ in range(6):
        at = START + timedelta(days=rng.randrange(days), seconds=rng.randrange(86_400))
        mark = {"type": "clock", "at": at.isoformat().replace("+00:00", "Z")}
        lines.insert(rng.randrange(len(lines) + 1), orjson.dumps(mark))
    lines.insert(rng.randrange(len(lines) + 1), b'{"type": "clock", "at": "soon"}')
    lines.insert(rng.randrange(len(lines) + 1), b"   ")
    return [line + b"\n" for line in lines]


def _run(lines: list[bytes], rules_text: str, out: Path, jobs: int, days: int) -> Path:
    rules = compile_rules(parse_ruleset(rules_text, "rules.yaml"))
    as_of = parse_instant((START + timedelta(days=days + 400)).isoformat())
    # a wall clock inside the traffic: later events are rejected too_far_ahead when applied
    wall = parse_instant((START + timedelta(days=days - 30)).isoformat())
    replay(iter(lines), rules, out, as_of=as_of, wall=wall, jobs=jobs)
    return out


def _summary(out: Path) -> dict[str, object]:
    summary = orjson.loads((out / "summary.json").read_bytes())
    del summary["seconds"], summary["events_per_second"]
    return dict(summary)


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("rules_name", ["example", "rich", "traits"])
def test_jobs_write_the_same_files_as_one_job(tmp_path: Path, seed: int, rules_name: str) -> None:
    rules_text = {"example": EXAMPLE_RULES.read_text(), "rich": RICH_RULES, "traits": TRAIT_RULES}[
        rules_name
    ]
    days = 500
    lines = _input(seed, days)
    one = _run(lines, rules_text, tmp_path / "one", 1, days)
    assert (one / "changes.jsonl").stat().st_size > 0
    assert (one / "rejected.jsonl").stat().st_size > 0
    assert ((one / "traits.jsonl").stat().st_size > 0) == (rules_name == "traits")
    for jobs in (2, 3):
        many = _run(lines, rules_text, tmp_path / f"jobs-{jobs}", jobs, days)
        for name in OUTPUTS:
            assert (many / name).read_bytes() == (one / name).read_bytes(), (jobs, name)
        assert _summary(many) == _summary(one)
        assert sorted(p.name for p in many.iterdir()) == sorted([*OUTPUTS, "summary.json"])


def test_jobs_split_customers_by_a_hash_that_is_the_same_in_every_process() -> None:
    ids = [f"c-{n}" for n in range(200)]
    script = f"from segments.replay_jobs import job_of; print([job_of(i, 3) for i in {ids!r}])"
    fresh = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, check=True, text=True
    ).stdout
    here = [job_of(i, 3) for i in ids]
    assert fresh.strip() == str(here)
    assert set(here) == {0, 1, 2}
