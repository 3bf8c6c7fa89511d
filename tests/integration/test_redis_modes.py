"""The coordination basics on the three deployments the library supports (docs/redis-ha.md):
one redis-server, a real Redis Cluster (3 primaries + 3 replicas) and a real Sentinel set (a
primary, a replica, 3 sentinels); then a failover in each HA mode, which must fail closed with
a clear reason while it lasts and resume by itself.

The Cluster and the Sentinel set are started once for this module (the failover tests start
their own, in test_redis_failover_cluster.py and test_redis_failover_sentinel.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.cluster

from service.cli.readers import read_window, scan_accounts
from service.coordination import AcquireTimeout, Coordinator, CoordinatorConfig
from service.fingerprint import ACCOUNT
from service.limits import ACCOUNT_WINDOW_S, AccountLimits
from tests.fixtures.redis_cluster import RedisClusterNodes
from tests.fixtures.redis_sentinel import RedisSentinelSet
from tests.fixtures.redis_server import EPOCH_PREFIX, require_redis_binary

pytestmark = [pytest.mark.redis, pytest.mark.slow]

SINGLE, CLUSTER, SENTINEL = "single", "cluster", "sentinel"


@dataclass
class Deployment:
    """One running deployment and how to reach it."""

    mode: str
    options: dict[str, Any]
    cluster: RedisClusterNodes | None = None
    opened: list[Coordinator] = field(default_factory=list)

    def config(self, **extra: Any) -> CoordinatorConfig:
        return CoordinatorConfig(**{**self.options, "replica_id": "t", **extra})

    async def coordinator(self, **extra: Any) -> Coordinator:
        c = Coordinator(self.config(**extra))
        await c.start()
        self.opened.append(c)
        return c

    async def close(self) -> None:
        for c in self.opened:
            with contextlib.suppress(Exception):
                await c.close()
        self.opened.clear()


def _known_store(client: redis.Redis | redis.cluster.RedisCluster) -> None:
    # An intact (if empty) store, as the redis_url fixture makes: no grace period for a young
    # Redis (tests/fixtures/redis_server.py).
    client.set(f"{EPOCH_PREFIX}:epoch", "test-fixture")


def _reset_cluster(cluster: RedisClusterNodes) -> None:
    cluster.flush()
    client = redis.cluster.RedisCluster.from_url(cluster.url)
    try:
        _known_store(client)
    finally:
        client.close()


def _reset_sentinel(sentinel_set: RedisSentinelSet) -> None:
    sentinel_set.flush()
    client = sentinel_set.primary().client()
    try:
        _known_store(client)
    finally:
        client.close()


def cluster_options(cluster: RedisClusterNodes) -> dict[str, Any]:
    return {"redis_url": cluster.url, "cluster": True}


def sentinel_options(sentinel_set: RedisSentinelSet) -> dict[str, Any]:
    return {
        "redis_url": "",
        "sentinels": sentinel_set.sentinels_setting,
        "sentinel_master": sentinel_set.master_name,
    }


@contextlib.contextmanager
def _started(kind: type[RedisClusterNodes] | type[RedisSentinelSet]) -> Iterator[Any]:
    binary = require_redis_binary()
    with (
        tempfile.TemporaryDirectory(prefix=f"rcg-{kind.__name__}-") as workdir,
        kind.started(binary, Path(workdir)) as started,
    ):
        print(f"{kind.__name__} started in {started.start_s:.2f}s")
        yield started


@pytest.fixture(scope="module")
def module_cluster() -> Iterator[RedisClusterNodes]:
    with _started(RedisClusterNodes) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def module_sentinel_set() -> Iterator[RedisSentinelSet]:
    with _started(RedisSentinelSet) as sentinel_set:
        yield sentinel_set


@pytest.fixture(params=[SINGLE, CLUSTER, SENTINEL])
async def deployment(request: pytest.FixtureRequest) -> AsyncIterator[Deployment]:
    """Each test once per mode, on an emptied store."""
    if request.param == SINGLE:
        found = Deployment(SINGLE, {"redis_url": request.getfixturevalue("redis_url")})
    elif request.param == CLUSTER:
        cluster: RedisClusterNodes = request.getfixturevalue("module_cluster")
        _reset_cluster(cluster)
        found = Deployment(CLUSTER, cluster_options(cluster), cluster)
    else:
        sentinel_set: RedisSentinelSet = request.getfixturevalue("module_sentinel_set")
        _reset_sentinel(sentinel_set)
        found = Deployment(SENTINEL, sentinel_options(sentinel_set))
    try:
        yield found
    finally:
        await found.close()


async def cli(deployment: Deployment, *args: str) -> str:
    """`python -m service.cli ARGS` with the environment that describes the deployment."""
    options = deployment.options
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("REDIS_")},
        "REDIS_URL": options["redis_url"],
        "REDIS_CLUSTER": "true" if options.get("cluster") else "false",
        "REDIS_SENTINELS": options.get("sentinels", ""),
        "REDIS_SENTINEL_MASTER": options.get("sentinel_master", ""),
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service.cli",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()
    return out.decode()


async def until(condition: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"never saw {what}"
        await asyncio.sleep(0.01)


# --- The basics, in every mode -----------------------------------------------------------------


async def test_acquire_release_and_renew(deployment: Deployment) -> None:
    c = await deployment.coordinator()
    assert await c.ping(), "readiness: every primary answers"
    assert c.dispatcher.connected, "the wake subscription is up"
    await c.registry.create("basics", 2)
    first = await c.acquire("basics", timeout_s=5)
    second = await c.acquire("basics", timeout_s=5)
    with pytest.raises(AcquireTimeout):
        await c.acquire("basics", timeout_s=0.3)
    before = first.expires_at_ms
    await asyncio.sleep(0.02)
    await c.renewer.renew_all()
    assert first.is_valid() and second.is_valid()
    assert first.expires_at_ms > before, "the renewal pushed the expiry"
    assert await first.release()
    third = await c.acquire("basics", timeout_s=5)
    assert await second.release() and await third.release()
    assert not await third.release(), "a second release gives nothing back"


async def test_a_release_hands_the_slot_to_a_waiter_of_another_process_by_message(
    deployment: Deployment,
) -> None:
    a = await deployment.coordinator(replica_id="a")
    b = await deployment.coordinator(replica_id="b")
    await a.registry.create("handoff", 1)
    held = await a.acquire("handoff", timeout_s=5)
    waiter = asyncio.create_task(b.acquire("handoff", timeout_s=20))
    keys = b.keyspace.semaphore("handoff")
    await until(lambda: bool(b.dispatcher._events), "b's waiter registered")
    # The waiter is queued in Redis before the release.
    deadline = time.monotonic() + 5
    while not await b.redis.zcard(keys.queue):
        assert time.monotonic() < deadline, "the waiter never queued"
        await asyncio.sleep(0.01)
    released_at = time.monotonic()
    await held.release()
    lease = await asyncio.wait_for(waiter, 10)
    handoff_s = time.monotonic() - released_at
    assert b.dispatcher.grants_received == 1, "the grant came on b's wake channel"
    # A poll would take up to a queue entry TTL/3 (3 s): the message is what woke it.
    assert handoff_s < 1.0, f"handoff took {handoff_s:.2f}s"
    await lease.release()


async def test_semaphores_are_registered_listed_changed_inspected_and_deleted(
    deployment: Deployment,
) -> None:
    c = await deployment.coordinator()
    for name, limit in (("reg-a", 1), ("reg-b", 3), ("reg-c", 5)):
        await c.registry.create(name, limit)
    assert sorted(await c.registry.list()) == ["reg-a", "reg-b", "reg-c"]
    assert await c.registry.exists("reg-b")
    assert await c.registry.set_limit("reg-b", 4) == 3, "set_limit returns the old limit"
    lease = await c.acquire("reg-b", timeout_s=5)
    view = await c.registry.view("reg-b")  # one script: also on a Cluster (no MULTI + TIME)
    assert (view.limit, view.in_use) == (4, 1)
    await lease.release()
    await c.registry.delete("reg-b")
    assert not await c.registry.exists("reg-b")
    assert sorted(await c.registry.list()) == ["reg-a", "reg-c"]


async def test_the_cli_readers_scan_every_node_and_read_windows(deployment: Deployment) -> None:
    c = await deployment.coordinator()
    # Fingerprints whose keys land in many slots: on a Cluster, on every primary.
    accounts = [f"fp{i:02d}" for i in range(24)]
    leases = [await AccountLimits(c).acquire(a, limit=2, timeout_s=5) for a in accounts]
    if deployment.cluster is not None:
        nodes = {
            deployment.cluster.node_for_key(c.keyspace.semaphore(a, ACCOUNT).meta).port
            for a in accounts
        }
        assert len(nodes) == 3, "the accounts span every primary"
    assert await scan_accounts(c) == accounts
    await AccountLimits(c).take_rate("fp00", limit_per_minute=5, timeout_s=1)
    report = await read_window(
        c, AccountLimits.window("fp00"), 5, ACCOUNT_WINDOW_S, scope=f"{ACCOUNT}:fp00"
    )
    assert (report.admissions, report.remaining) == (1, 4)
    # The CLI itself, configured by the service's variables.
    listed = json.loads(await cli(deployment, "accounts", "--json"))
    assert [row["account"] for row in listed] == accounts
    assert listed[0]["creations_in_window"] == 1
    for lease in leases:
        await lease.release()


async def test_concurrent_holders_across_processes_never_exceed_the_limit(
    deployment: Deployment,
) -> None:
    """As tests/integration/test_semaphore_processes.py does with processes: three
    coordinators of eight workers each on a limit of 4, intervals compared by one clock."""
    coordinators = [await deployment.coordinator(replica_id=f"p{i}") for i in range(3)]
    await coordinators[0].registry.create("shared", 4)
    intervals: list[tuple[float, float]] = []
    stop_at = time.monotonic() + 2.0

    async def work(c: Coordinator) -> None:
        while time.monotonic() < stop_at:
            lease = await c.acquire("shared", timeout_s=10)
            began = time.monotonic()
            await asyncio.sleep(0.01)
            ended = time.monotonic()
            await lease.release()
            intervals.append((began, ended))

    await asyncio.gather(*(work(c) for c in coordinators for _ in range(8)))
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    peak = current = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    assert peak == 4, f"peak {peak} holders on a limit of 4"
    assert len(intervals) > 100, f"only {len(intervals)} acquisitions in 2 s"


# --- Failovers ---------------------------------------------------------------------------------
