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
    # Files with the most slow tests first: pytest-xdist (--dist loadfile --no-loadscope-reorder,
    # scripts/test.sh) hands files out in this order, so the long ones start at once instead of
    # last, after the many quick ones (its default order, by test count, put them last).
    # The soak's file first of all: it alone lasts five minutes in CI.
    weights: dict[str, int] = {}
    for item in items:
        path = item.nodeid.split("::")[0]
        weight = 1 if item.get_closest_marker("slow") is not None else 0
        if item.get_closest_marker("soak") is not None:
            weight = 10_000
        weights[path] = weights.get(path, 0) + weight
    items.sort(key=lambda item: -weights[item.nodeid.split("::")[0]])  # stable: files stay whole
