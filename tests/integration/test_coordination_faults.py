"""Redis faults and the registry, on a real redis-server."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from service.coordination import (
    AcquireTimeout,
    CoordinationUnavailable,
    Coordinator,
    InvalidLimit,
    SemaphoreExists,
    SemaphoreNotFound,
)
from tests.fixtures.redis_server import RedisServer

pytestmark = pytest.mark.redis


async def connect(url: str, **options: object) -> Coordinator:
    options.setdefault("replica_id", "test")
    return await Coordinator.connect(url, **options)


async def test_registry_create_get_list_change_delete(redis_url: str) -> None:
    c = await connect(redis_url)
    await c.registry.create("b-sem", 2)
    await c.registry.create("a-sem", 1)
    assert await c.registry.list() == ["a-sem", "b-sem"]
    with pytest.raises(SemaphoreExists):
        await c.registry.create("a-sem", 5)
    for bad in (0, -1, 1.5, "3", True):
        with pytest.raises(InvalidLimit):
            await c.registry.create("bad", bad)  # type: ignore[arg-type]
    assert (await c.registry.view("b-sem")).limit == 2
    assert await c.registry.set_limit("b-sem", 7) == 2
    await c.registry.delete("b-sem")
    with pytest.raises(SemaphoreNotFound):
        await c.registry.view("b-sem")
    with pytest.raises(SemaphoreNotFound):
        await c.acquire("b-sem", timeout_s=1)
    assert await c.registry.list() == ["a-sem"]
    await c.close()


async def test_a_changed_limit_applies_to_the_next_acquisition(redis_url: str) -> None:
    c = await connect(redis_url)
    await c.registry.create("grow", 1)
    first = await c.acquire("grow", timeout_s=1)
    waiter = asyncio.create_task(c.acquire("grow", timeout_s=5))
    await asyncio.sleep(0.05)
    assert not waiter.done()
    await c.registry.set_limit("grow", 2)  # wakes the waiter at once
    second = await asyncio.wait_for(waiter, 2)
    await c.registry.set_limit("grow", 1)
    with pytest.raises(AcquireTimeout) as raised:
        await c.acquire("grow", timeout_s=0.3)
    assert raised.value.limit == 1 and raised.value.limit_id == "grow"
    assert raised.value.retry_after_s >= 1
    await first.release()
    await second.release()
    view = await c.registry.view("grow", detail=True)
    assert view.counters["timed_out"] == 1
    await c.close()


async def test_declared_semaphores_are_created_at_start(redis_url: str) -> None:
    c = await connect(redis_url, declared={"image-generation-global": 20, "cross-service": 5})
    assert await c.registry.list() == ["cross-service", "image-generation-global"]
    assert (await c.registry.view("cross-service")).limit == 5
    await c.close()
    c = await connect(redis_url, declared={"cross-service": 6})
    assert (await c.registry.view("cross-service")).limit == 6  # re-declared: follows config
    await c.close()


async def test_leases_are_renewed_while_held(redis_url: str) -> None:
    c = await connect(redis_url, lease_ttl_s=1.0)
    await c.registry.create("long", 1)
    lease = await c.acquire("long", timeout_s=1)
    await asyncio.sleep(2.5)  # two and a half TTLs
    assert lease.is_valid()
    with pytest.raises(AcquireTimeout):
        await c.acquire("long", timeout_s=0)
    assert await lease.release()
    await c.close()


async def test_account_limits_are_created_on_first_use(redis_url: str) -> None:
    c = await connect(redis_url)
    a = await c.acquire_account("fp1", limit=1, timeout_s=1)
    with pytest.raises(AcquireTimeout) as raised:
        await c.acquire_account("fp1", limit=1, timeout_s=0.2)
    assert raised.value.scope == "account_concurrency"
    other = await c.acquire_account("fp2", limit=1, timeout_s=1)  # accounts are independent
    await a.release()
    await other.release()
    assert (await c.take_account_rate("fp1", limit_per_minute=2, timeout_s=0)).admitted
    assert (await c.take_account_rate("fp1", limit_per_minute=2, timeout_s=0)).admitted
    with pytest.raises(AcquireTimeout) as raised:
        await c.take_account_rate("fp1", limit_per_minute=2, timeout_s=0.5)
    assert raised.value.scope == "account_rate"
    assert 59 <= raised.value.retry_after_s <= 60.1
    await c.close()


async def test_redis_down_fails_fast_with_a_specific_error(own_redis_server: RedisServer) -> None:
    c = await connect(own_redis_server.url, redis_timeout_s=0.5)
    await c.registry.create("down", 1)
    own_redis_server.stop()
    started = time.monotonic()
    with pytest.raises(CoordinationUnavailable):
        await c.acquire("down", timeout_s=10)
    with pytest.raises(CoordinationUnavailable):
        await c.take_account_rate("fp", limit_per_minute=5, timeout_s=10)
    assert time.monotonic() - started < 5
    assert not await c.ping()
    own_redis_server.start()
    deadline = time.monotonic() + 10
    while not await c.ping():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.1)
    await c.close()


async def test_a_redis_restart_that_loses_data_never_over_admits(
    own_redis_server: RedisServer,
) -> None:
    """Holders keep running across the restart; a replica that starts right after it must not
    get slots those holders still use."""
    declared = {"restart": 2}
    established = aioredis.Redis.from_url(own_redis_server.url)
    await established.set("rcg:epoch", "established-store")  # not a young, empty store
    await established.aclose()
    holder = await connect(own_redis_server.url, lease_ttl_s=1.5, declared=declared, replica_id="h")
    leases = [await holder.acquire("restart", timeout_s=1) for _ in range(2)]
    own_redis_server.restart()  # empty: the leases are gone from Redis, not from the holders
    newcomer = await connect(own_redis_server.url, lease_ttl_s=1.5, declared=declared)
    got = asyncio.create_task(newcomer.acquire("restart", timeout_s=10))
    client = aioredis.Redis.from_url(own_redis_server.url)
    holders_key = newcomer.keyspace.semaphore("restart").holders
    # Through the grace period and the holders' re-assertion, nobody else gets in.
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:
        assert not got.done()
        await asyncio.sleep(0.05)
    assert all(lease.is_valid() for lease in leases)
    assert await client.zcard(holders_key) == 2
    await leases[0].release()
    lease = await asyncio.wait_for(got, 5)
    assert await client.zcard(holders_key) == 2
    await lease.release()
    await leases[1].release()
    await client.aclose()
    await holder.close()
    await newcomer.close()


async def test_window_cost_does_not_grow_with_the_limit(redis_url: str) -> None:
    c = await connect(redis_url)
    client = aioredis.Redis.from_url(redis_url)
    await client.config_set("slowlog-log-slower-than", 1000)  # 1 ms
    await client.slowlog_reset()
    for _ in range(10_000):
        await c.window.take("acct:big", 10_000)
    result = await c.window.take("acct:big", 10_000)
    assert not result.admitted and 50 <= result.wait_s <= 60.1
    slow = [
        entry for entry in await client.slowlog_get(128) if b"evalsha" in entry["command"].lower()
    ]
    assert slow == []
    await client.config_set("slowlog-log-slower-than", 10000)
    await client.aclose()
    await c.close()


async def test_deleting_a_semaphore_with_live_holders_is_not_undone_by_their_renewal(
    redis_url: str,
) -> None:
    c = await connect(redis_url, lease_ttl_s=0.9)
    await c.registry.create("doomed", 2)
    lease = await c.acquire("doomed", timeout_s=1)
    await c.registry.delete("doomed")
    await asyncio.wait_for(lease.lost.wait(), 3)  # its next renewal finds it gone
    with pytest.raises(SemaphoreNotFound):
        await c.registry.view("doomed")
    assert await c.registry.list() == []
    await c.close()


async def test_force_release_frees_the_slot_and_counts_it(redis_url: str) -> None:
    c = await connect(redis_url, lease_ttl_s=0.9)
    await c.registry.create("stuck", 1)
    lease = await c.acquire("stuck", timeout_s=1)
    assert await c.registry.force_release("stuck", lease.lease_id)
    await asyncio.wait_for(lease.lost.wait(), 3)
    view = await c.registry.view("stuck", detail=True)
    assert view.counters["force_released"] == 1 and view.in_use == 0
    await c.close()
