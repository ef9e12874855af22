# purchase-segments: the two promised commands are `make demo` and `make test`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup system-deps deploy-tools demo test test-faults test-unit lint typecheck services-up services-down services-status bench bench-peer bench-setup clean

# Creates .venv and installs the locked dependencies plus the project (editable).
# Idempotent: only re-runs when pyproject.toml or requirements.lock changed.
setup: $(STAMP)

$(STAMP): pyproject.toml requirements.lock scripts/setup-venv.sh
	bash scripts/setup-venv.sh
	touch $(STAMP)

# Debian packages for the tests (headless Chromium); apt-get only when missing.
system-deps:
	bash scripts/install-system-deps.sh

# Helm (pinned) and the chart validator, built once into ~/.cache/purchase-segments/tools.
deploy-tools:
	bash scripts/install-deploy-tools.sh >/dev/null

services-up:
	bash deploy/local/services.sh up

services-down:
	bash deploy/local/services.sh down

services-status:
	bash deploy/local/services.sh status

# The main job on the embedded default: generator -> Kafka -> worker -> Redis, live.
demo: setup services-up
	$(VENV)/bin/segments demo

# The whole suite against real Kafka and Redis, the fault-injection suite included, on two
# pytest-xdist workers (the fault scenarios share one proxy port, so they run in one
# group: tests/conftest.py). pytest's exit 5 (no tests ran) is a failure here, never a
# silent pass. The 20 slowest tests are listed at the end.
test: setup system-deps deploy-tools services-up
	$(PY) -m pytest tests -n 2 --dist loadgroup --durations=20; rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests ran" >&2; exit 1; fi; exit $$rc

# The fault-injection suite alone (also part of `make test`); prints its recovery times.
test-faults: setup system-deps services-up
	$(PY) -m pytest tests/faults

test-unit: setup
	$(PY) -m pytest tests -m "not integration and not deploy"

lint: setup
	$(VENV)/bin/ruff check segments streams tests benchmarks
	$(VENV)/bin/ruff format --check segments streams tests benchmarks

typecheck: setup
	$(VENV)/bin/mypy

bench: setup
	$(PY) benchmarks/replay_bench.py

# .venv-bench: the main dependencies plus the `bench` extra (Quix Streams, confluent-kafka,
# py-spy) from requirements-bench.lock; apart from .venv, whose sync would remove them.
BENCH_STAMP := .venv-bench/.installed

bench-setup: $(BENCH_STAMP)

$(BENCH_STAMP): pyproject.toml requirements-bench.lock scripts/setup-bench-venv.sh
	bash scripts/setup-bench-venv.sh
	touch $(BENCH_STAMP)

# The product worker beside bare Faust, a Quix Streams job and a raw confluent-kafka loop
# (benchmarks/peer_bench.py, about 10 minutes; ARGS="--rounds 5 --product-checkout ../other").
bench-peer: setup bench-setup services-up
	.venv-bench/bin/python benchmarks/peer_bench.py $(ARGS)

clean:
	rm -rf $(VENV) .venv-bench .segments-data
