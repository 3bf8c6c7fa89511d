"""One cluster for the system tests that only need the default one and leave it usable.

A module opts in by overriding `cluster`::

    @pytest.fixture
    def cluster(shared_cluster: Cluster) -> Cluster:
        return shared_cluster

Its tests then share one cluster (started once for tests/system), reset before each test by
Cluster.reset: replicas a test killed, stopped or froze run again, and the simulator is as it
started. Redis keeps its data, so each test uses semaphore ids of its own.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fixtures.cluster import Cluster, running_cluster


@pytest.fixture(scope="package")
def package_cluster() -> Iterator[Cluster]:
    with running_cluster() as running:
        yield running


@pytest.fixture
def shared_cluster(package_cluster: Cluster) -> Cluster:
    package_cluster.reset()
    return package_cluster
