"""One cluster for the system tests that only need the default one and leave it usable.

A module opts in by overriding `cluster`::

    @pytest.fixture
    def cluster(shared_cluster: Cluster) -> Cluster:
        return shared_cluster

Its tests then share one cluster (started once for tests/system), reset before each test by
Cluster.reset: replicas a test killed, stopped or froze run again, and the simulator is as it
started. Redis keeps its data, so each test uses semaphore ids of its own.

Tests that run once per Redis deployment (docs/redis-ha.md) share one cluster per mode the same
way, started the first time a test asks for it::

    @pytest.fixture(scope="module", params=REDIS_MODES)
    def redis_mode(request: pytest.FixtureRequest) -> RedisMode:
        return request.param  # module-scoped: the module's tests run grouped by mode

    @pytest.fixture
    def cluster(shared_cluster_in: SharedClusters, redis_mode: RedisMode) -> Cluster:
        return shared_cluster_in(redis_mode)
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fixtures.cluster import Cluster, RedisMode, SharedClusters, running_cluster

# The package-scoped fixture that runs each mode's shared cluster.
PACKAGE_CLUSTERS: dict[RedisMode, str] = {
    "single": "package_cluster",
    "cluster": "package_cluster_on_redis_cluster",
    "sentinel": "package_cluster_on_sentinel",
}


@pytest.fixture(scope="package")
def package_cluster() -> Iterator[Cluster]:
    with running_cluster() as running:
        yield running


@pytest.fixture(scope="package")
def package_cluster_on_redis_cluster() -> Iterator[Cluster]:
    with running_cluster(redis_mode="cluster") as running:
        yield running


@pytest.fixture(scope="package")
def package_cluster_on_sentinel() -> Iterator[Cluster]:
    with running_cluster(redis_mode="sentinel") as running:
        yield running


@pytest.fixture
def shared_cluster(package_cluster: Cluster) -> Cluster:
    package_cluster.reset()
    return package_cluster


@pytest.fixture
def shared_cluster_in(request: pytest.FixtureRequest) -> SharedClusters:
    """The shared cluster of a Redis mode, reset (only the modes a test asks for start)."""

    def shared(redis_mode: RedisMode) -> Cluster:
        running: Cluster = request.getfixturevalue(PACKAGE_CLUSTERS[redis_mode])
        running.reset()
        return running

    return shared
