"""Shared fixtures live in tests/fixtures/, one module per job."""

pytest_plugins = [
    "tests.fixtures.redis_server",
    "tests.fixtures.simulator",
    "tests.unit.script_harness",
    "tests.fixtures.cluster",
]
