"""Suite-wide setup: markers follow the directory, so `-m "not integration"` needs no list.

`make test` runs the suite on two pytest-xdist workers (`--dist loadgroup`). Tests that
share one fixed resource carry the same `xdist_group` and run one after another on one
worker: the fault suite's tests all reach the broker through one proxy port (its PROXIED
listener). Every other test has its own topic and key prefixes, free ports and, where it
stops or empties something, its own broker or redis-server.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TESTS = Path(__file__).parent

# Directory -> markers its tests get. Integration and end-to-end tests need the real
# local Kafka and Redis (deploy/local/services.sh); unit and property tests need nothing.
_MARKERS_BY_DIRECTORY = {
    "unit": ("unit",),
    "property": ("unit",),
    "integration": ("integration",),
    "e2e": ("integration",),
    # Helm and the chart validator are built from Go sources the first time (minutes).
    "deploy": ("deploy", "slow"),
}
# Directory -> the xdist group its tests share (see the module docstring).
_GROUP_BY_DIRECTORY = {"faults": "faults-proxy-port"}


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the xdist_group marks
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        try:
            top = item.path.relative_to(TESTS).parts[0]
        except ValueError:  # a test outside tests/
            continue
        for marker in _MARKERS_BY_DIRECTORY.get(top, ()):
            item.add_marker(marker)
        if top in _GROUP_BY_DIRECTORY:
            item.add_marker(pytest.mark.xdist_group(_GROUP_BY_DIRECTORY[top]))


def pytest_terminal_summary(
    terminalreporter: pytest.TerminalReporter, config: pytest.Config
) -> None:
    """The fault scenarios' recovery times (tests/faults), read back from their JSON report.

    Here and not in tests/faults/conftest.py: under pytest-xdist the controlling process
    collects nothing, so only this conftest's hooks run in it. The scenarios' worker wrote
    the report to $FAULTS_REPORT or to its temporary directory (one below this process's
    under xdist, the same one without)."""
    if hasattr(config, "workerinput"):
        return  # an xdist worker: the controller prints
    from tests.faults.harness import FaultReport

    base = config._tmp_path_factory.getbasetemp()  # type: ignore[attr-defined]
    paths = [*base.glob("faults-report.json"), *sorted(base.glob("*/faults-report.json"))]
    if "FAULTS_REPORT" in os.environ:
        paths = [Path(os.environ["FAULTS_REPORT"])]
    # The three-broker test's outcome (tests/integration/test_three_brokers.py).
    paths += [
        path for name in ("broker-loss.json", "*/broker-loss.json") for path in base.glob(name)
    ]
    for path in paths:
        if not path.exists():
            continue
        report = FaultReport.read(path)
        if report.outcomes:
            terminalreporter.section("fault scenarios: recovery times")
            terminalreporter.write_line(report.table())
            for outcome in report.outcomes:
                if outcome.notes:
                    terminalreporter.write_line(f"{outcome.scenario}: {outcome.notes}")
            terminalreporter.write_line(f"(JSON: {report.path})")
