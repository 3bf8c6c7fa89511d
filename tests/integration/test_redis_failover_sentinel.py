"""A Sentinel failover, forced and manual: callers fail closed with a clear reason until the
replica is promoted, and follow it with the wake subscription (the basics of each mode:
test_redis_modes.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from service.coordination.subscriber import (
    PoolSubscriptionSource,
    Subscription,
    SubscriptionLost,
)
from tests.fixtures.redis_sentinel import RedisSentinelSet
from tests.integration.failover_outage import LEASE_TTL_S, assert_clear, ride_out
from tests.integration.test_redis_modes import (
    SENTINEL,
    Deployment,
    _reset_sentinel,
    _started,
    sentinel_options,
    until,
)

pytestmark = [pytest.mark.redis, pytest.mark.slow]


@pytest.fixture
def own_sentinel_set() -> Iterator[RedisSentinelSet]:
    with _started(RedisSentinelSet) as sentinel_set:
        _reset_sentinel(sentinel_set)
        yield sentinel_set


async def test_a_sentinel_failover_fails_closed_until_the_replica_is_promoted(
    own_sentinel_set: RedisSentinelSet,
) -> None:
    deployment = Deployment(SENTINEL, sentinel_options(own_sentinel_set))
    try:
        a = await deployment.coordinator(replica_id="a", lease_ttl_s=LEASE_TTL_S)
        b = await deployment.coordinator(replica_id="b", lease_ttl_s=LEASE_TTL_S)
        await a.registry.create("ha", 1)
        lease = await a.acquire("ha", timeout_s=5)
        await lease.release()
        old = own_sentinel_set.primary()
        own_sentinel_set.sync_replicas()  # this failover loses no write
        old.kill()
        assert not await a.ping(), "readiness sees the dead primary"
        outage = await ride_out(a, "ha")
        assert_clear(outage)
        print(f"sentinel failover: {len(outage.reasons)} refusals, {outage.recovered_after_s:.1f}s")
        assert own_sentinel_set.primary().port != old.port
        assert await a.ping()
        # b's wake subscription followed the primary: the handoff comes by message.
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


async def test_a_manual_sentinel_failover_is_followed_by_callers_and_the_subscription(
    own_sentinel_set: RedisSentinelSet,
) -> None:
    """SENTINEL FAILOVER demotes a primary that stays up: its clients get READONLY (turned
    into a reconnect to the new primary) and a subscription on it would hear nothing more, so
    the health check gives it up once the sentinels name another primary."""
    deployment = Deployment(SENTINEL, sentinel_options(own_sentinel_set))
    try:
        a = await deployment.coordinator(replica_id="a", lease_ttl_s=LEASE_TTL_S)
        await a.registry.create("manual", 1)
        pool = a.redis.connection_pool
        received: list[bytes] = []
        subscription = await Subscription.open(
            PoolSubscriptionSource(pool), ["probe:*"], received.append, 2
        )
        old = own_sentinel_set.primary()
        assert subscription.address == ("127.0.0.1", old.port)
        own_sentinel_set.sync_replicas()
        sentinel = own_sentinel_set.sentinels[0].client()
        try:
            sentinel.sentinel_failover(own_sentinel_set.master_name)
        finally:
            sentinel.close()
        own_sentinel_set.wait_for_failover(old.port)
        assert old.alive, "the old primary is still up, now a replica"
        with pytest.raises(SubscriptionLost, match="no longer serves"):
            await asyncio.wait_for(subscription.serve(0.2), 10)
        outage = await ride_out(a, "manual")
        print(f"manual failover: {len(outage.reasons)} refusals after the promotion")
        if outage.reasons:
            assert_clear(outage)
        follower = await Subscription.open(
            PoolSubscriptionSource(pool), ["probe:*"], received.append, 2
        )
        try:
            assert follower.address == ("127.0.0.1", own_sentinel_set.primary().port)
        finally:
            follower.close()
    finally:
        await deployment.close()
