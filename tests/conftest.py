"""Shared fixtures live in tests/fixtures/, one module per job.

Every test that starts real service processes (marked `system`) is also `slow`: the fast path,
`./scripts/test.sh -m "not slow"`, leaves them out (README, Development).
"""

from __future__ import annotations

import pytest

pytest_plugins = [
    "tests.fixtures.redis_server",
    "tests.fixtures.simulator",
    "tests.unit.script_harness",
    "tests.fixtures.cluster",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("system") is not None:
            item.add_marker(pytest.mark.slow)
