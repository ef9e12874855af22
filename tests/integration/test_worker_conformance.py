"""(a) The worker on real Kafka, event clock: the conformance cases end exactly like replay.

Each case: `segments produce --as-of` into a one-partition sandbox, one worker,
drained; the published changes and memberships must conform to the case and
equal `segments replay` of the same file.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conformance_cases import LANGUAGE_2_DIR, Case, all_cases, assert_conforms
from tests.integration.worker_harness import (
    assert_equals_replay,
    drain_with_one_worker,
    produce,
    replay_reference,
)

pytestmark = pytest.mark.slow

# The version-1 cases and two of language 2's (tests/conformance_language2), to keep this
# slow test short: case a's changes are the start of b's, and d has no time-driven
# change; replay and the broker-free driver run all four.
CASES = all_cases() + [
    case for case in all_cases(LANGUAGE_2_DIR) if case.name.startswith(("b-", "c-"))
]


@pytest.mark.parametrize("case", CASES, ids=[f"{c.path.parent.name}/{c.name}" for c in CASES])
def test_conformance_case_through_kafka(
    case: Case, segments_env: dict[str, str], topics: object, tmp_path: Path
) -> None:
    env = {
        **segments_env,
        "SEGMENTS_CLOCK": "event",
        "SEGMENTS_RULES": str(case.rules),
        "SEGMENTS_PARTITIONS": "1",  # one partition: the whole change stream is ordered by `at`
    }
    reference = replay_reference(case.rules, case.events, tmp_path / "replay", case.as_of)
    produce(env, case.events, case.as_of)
    published, _ = drain_with_one_worker(env, tmp_path, topics, list(reference.memberships))
    assert_conforms(case, published.changes, published.memberships)
    assert_equals_replay(published, reference)
