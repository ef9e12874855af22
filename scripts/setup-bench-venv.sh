#!/usr/bin/env bash
# Creates .venv-bench for benchmarks/peer_bench.py: the main dependencies plus the `bench`
# extra (Quix Streams, confluent-kafka, py-spy) from requirements-bench.lock. Kept apart
# from .venv, whose `uv pip sync requirements.lock` would remove them. A second run with
# nothing changed takes about a second.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x .venv-bench/bin/python ]; then
    "$PYTHON" -m venv .venv-bench
fi
if [ ! -x .venv-bench/bin/uv ]; then
    .venv-bench/bin/python -m pip install --quiet --disable-pip-version-check "uv==0.13.9"
fi
.venv-bench/bin/uv pip sync --quiet --python .venv-bench/bin/python requirements-bench.lock
.venv-bench/bin/uv pip install --quiet --python .venv-bench/bin/python --no-deps -e .
