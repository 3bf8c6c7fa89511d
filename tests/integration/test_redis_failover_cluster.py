"""A Cluster primary killed: callers fail closed with a clear reason until its replica takes
over, then resume by themselves (the basics of each mode: test_redis_modes.py; split from it so
that pytest-xdist runs the failovers beside the rest)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator

import pytest

from service.coordination.subscriber import (
    ClusterSubscriptionSource,
    Subscription,
    SubscriptionLost,
)
from tests.fixtures.redis_cluster import RedisClusterNodes
from tests.integration.failover_outage import LEASE_TTL_S, assert_clear, ride_out
from tests.integration.test_redis_modes import (
    CLUSTER,
    Deployment,
    _reset_cluster,
    _started,
    cluster_options,
    until,
)

pytestmark = [pytest.mark.redis, pytest.mark.slow]


@pytest.fixture
def own_cluster() -> Iterator[RedisClusterNodes]:
    with _started(RedisClusterNodes) as cluster:
        _reset_cluster(cluster)
        yield cluster


async def test_a_killed_cluster_primary_fails_closed_until_its_replica_takes_over(
    own_cluster: RedisClusterNodes,
) -> None:
    deployment = Deployment(CLUSTER, cluster_options(own_cluster))
    try:
        a = await deployment.coordinator(replica_id="a", lease_ttl_s=LEASE_TTL_S)
        b = await deployment.coordinator(replica_id="b", lease_ttl_s=LEASE_TTL_S)
        await a.registry.create("ha", 1)
        lease = await a.acquire("ha", timeout_s=5)
        await lease.release()
        victim = own_cluster.node_for_key(a.keyspace.semaphore("ha").meta)
        # A subscription on the node about to die (the source tries the nodes in turn).
        source = ClusterSubscriptionSource(a.redis)  # type: ignore[arg-type]
        received: list[bytes] = []
        subscription = await Subscription.open(source, ["probe:*"], received.append, 2)
        for _ in range(len(own_cluster.nodes)):
            if subscription.address == ("127.0.0.1", victim.port):
                break
            subscription.close()
            subscription = await Subscription.open(source, ["probe:*"], received.append, 2)
        assert subscription.address == ("127.0.0.1", victim.port)
        own_cluster.sync_replicas(victim)  # this failover loses no write
        own_cluster.kill(victim)
        with pytest.raises(SubscriptionLost):
            await asyncio.wait_for(subscription.serve(0.5), 5)
        assert not await a.ping(), "readiness sees the dead primary"
        outage = await ride_out(a, "ha")
        assert_clear(outage)
        print(f"cluster failover: {len(outage.reasons)} refusals, {outage.recovered_after_s:.1f}s")
        assert await a.ping(), "every primary answers again"
        # The next subscription lands on another node, and a PUBLISH anywhere reaches it.
        moved = await Subscription.open(source, ["probe:*"], received.append, 2)
        try:
            assert moved.address != ("127.0.0.1", victim.port)
            await a.redis.publish("probe:1", b"after the failover")
            await until(lambda: received == [b"after the failover"], "the message", 5)
        finally:
            moved.close()
        # The wake path works again too: b's subscription moved off the lost node if it was
        # on it, and a release hands the slot over by message.
        await until(lambda: b.dispatcher.connected, "b's wake subscription", 15)
        held = await a.acquire("ha", timeout_s=10)
        waiter = asyncio.create_task(b.acquire("ha", timeout_s=20))
        await until(lambda: bool(b.dispatcher._events), "b's waiter registered")
        await asyncio.sleep(0.3)
        grants = b.dispatcher.grants_received
        await held.release()
        await (await asyncio.wait_for(waiter, 10)).release()
        assert b.dispatcher.grants_received == grants + 1, "the grant came by message"
    finally:
        await deployment.close()


async def test_a_stopped_shard_costs_no_lease_on_the_others(own_cluster: RedisClusterNodes) -> None:
    """A primary that stops answering (SIGSTOP) fails the epoch check, which reads every
    primary; the renewals of leases on the other shards go on (an outside attack measured a
    lease given up on a healthy shard, and its job task failed). No failover here, and the
    cluster keeps serving the slots it still can, so only the stopped shard is away."""
    for node in own_cluster.nodes:
        client = node.client()
        try:
            client.config_set("cluster-replica-no-failover", "yes")
            client.config_set("cluster-require-full-coverage", "no")
        finally:
            client.close()
    deployment = Deployment(CLUSTER, cluster_options(own_cluster))
    try:
        # redis-py's cluster client re-reads the topology after a timeout, which may ask the
        # stopped node first: a command elsewhere can wait up to two Redis timeouts
        # (docs/redis-ha.md). Short ones keep that well inside the lease's 0.9 TTL.
        a = await deployment.coordinator(
            replica_id="a", lease_ttl_s=LEASE_TTL_S, redis_timeout_s=0.5
        )
        await a.registry.create("steady", 1)
        lease = await a.acquire("steady", timeout_s=5)
        home = own_cluster.node_for_key(a.keyspace.semaphore("steady").meta)
        other = next(n for n in own_cluster.primary_nodes() if n.port != home.port)
        assert other.process is not None
        other.process.send_signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(LEASE_TTL_S * 2)
            assert not lease.lost.is_set(), lease.lost_reason
            assert lease.is_valid()
        finally:
            other.process.send_signal(signal.SIGCONT)
        await lease.release()
    finally:
        await deployment.close()
