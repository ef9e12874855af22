"""`segments demo` end to end: real worker, real serving process, real Kafka and Redis."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.integration.conftest import LocalServices

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_demo_streams_generated_traffic_and_ends_equal_to_replay(services: LocalServices) -> None:
    completed = subprocess.run(
        [sys.executable, "-m", "streams", "demo", "--customers", "200", "--days", "300",
         "--rate", "4000", "--until-drained"],
        env={
            **os.environ,
            "COLUMNS": "120",
            "SEGMENTS_WEB_PORT": "6176",
            "SEGMENTS_KAFKA_BOOTSTRAP": services.kafka_bootstrap,
            "SEGMENTS_REDIS_URL": services.redis_url,
        },
        capture_output=True, text=True, timeout=480, check=False,
    )  # fmt: skip
    output = " ".join((completed.stdout + completed.stderr).split())  # rich wraps lines
    assert completed.returncode == 0, output[-3000:]
    assert "streamed memberships equal segments replay" in output
    assert "over HTTP from Redis" in output  # a checkout lookup was served from the cache
