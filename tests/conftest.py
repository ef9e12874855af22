"""Suite-wide setup: markers follow the directory, so `-m "not integration"` needs no list."""

from __future__ import annotations

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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        try:
            top = item.path.relative_to(TESTS).parts[0]
        except ValueError:  # a test outside tests/
            continue
        for marker in _MARKERS_BY_DIRECTORY.get(top, ()):
            item.add_marker(marker)
