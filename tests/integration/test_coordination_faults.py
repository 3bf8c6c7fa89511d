"""Redis faults and the registry, on a real redis-server."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

import pytest
import redis.asyncio as aioredis
import redis.exceptions

from service.coordination import (
    AcquireTimeout,
    CoordinationUnavailable,
    Coordinator,
    InvalidLimit,
    SemaphoreExists,
    SemaphoreNotFound,
)
from service.coordination.remote import acquire_remote, release_remote
from service.limits import AccountLimits
from tests.fixtures.redis_server import RedisServer, queued_ids, redis_ms

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
    a = await AccountLimits(c).acquire("fp1", limit=1, timeout_s=1)
    with pytest.raises(AcquireTimeout) as raised:
        await AccountLimits(c).acquire("fp1", limit=1, timeout_s=0.2)
    assert raised.value.scope == "account_concurrency"
    other = await AccountLimits(c).acquire("fp2", limit=1, timeout_s=1)  # accounts are independent
    await a.release()
    await other.release()
    assert (await AccountLimits(c).take_rate("fp1", limit_per_minute=2, timeout_s=0)).admitted
    assert (await AccountLimits(c).take_rate("fp1", limit_per_minute=2, timeout_s=0)).admitted
    with pytest.raises(AcquireTimeout) as raised:
        await AccountLimits(c).take_rate("fp1", limit_per_minute=2, timeout_s=0.5)
    assert raised.value.scope == "account_rate"
    assert 60 <= raised.value.retry_after_s <= 61.1  # 60 s window + 1 s margin for skew
    await c.close()


async def test_a_free_account_slot_comes_with_a_window_entry_in_the_same_call(
    redis_url: str,
) -> None:
    c = await connect(redis_url)
    calls: list[str] = []
    plain_call = c.scripts.call

    async def call(name: str, keys: Any, args: Any) -> Any:
        calls.append(name)
        return await plain_call(name, keys, args)

    c.scripts.call = call  # type: ignore[method-assign]
    a = await AccountLimits(c).acquire("fpw", limit=2, timeout_s=1, limit_per_minute=1)
    assert calls == ["acquire_slot"]  # slot and window entry: one call
    assert a.window_entry
    assert await c.window.count(AccountLimits.window("fpw"), window_s=61) == 1
    # The window is full: a second slot comes without an entry, and the window still says no.
    b = await AccountLimits(c).acquire("fpw", limit=2, timeout_s=1, limit_per_minute=1)
    assert not b.window_entry
    with pytest.raises(AcquireTimeout):
        await AccountLimits(c).take_rate("fpw", limit_per_minute=1, timeout_s=0.2)
    await a.release()
    await b.release()
    await c.close()


async def test_redis_down_fails_fast_with_a_specific_error(own_redis_server: RedisServer) -> None:
    c = await connect(own_redis_server.url, redis_timeout_s=0.5)
    await c.registry.create("down", 1)
    own_redis_server.stop()
    started = time.monotonic()
    with pytest.raises(CoordinationUnavailable):
        await c.acquire("down", timeout_s=10)
    with pytest.raises(CoordinationUnavailable):
        await AccountLimits(c).take_rate("fp", limit_per_minute=5, timeout_s=10)
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


async def test_a_pinned_lease_reasserted_after_a_restart_is_orphaned_not_freed(
    own_redis_server: RedisServer,
) -> None:
    """A pinned lease re-asserted on a node that restarted empty comes back with its pin (no
    earlier than the one lost) and its record: should its holder then stop renewing, its slot
    stays taken, an orphan, while its prediction may still run, instead of being freed at
    expiry."""
    declared = {"pinned": 1}
    client = aioredis.Redis.from_url(own_redis_server.url)
    await client.set("rcg:epoch", "established-store")  # not a young, empty store
    holder = await connect(own_redis_server.url, lease_ttl_s=1.5, declared=declared, replica_id="h")
    keys = holder.keyspace.semaphore("pinned")
    lease = await holder.acquire("pinned", timeout_s=1, pin_s=60)
    await lease.set_prediction_id("p-1")
    pin_before = await client.zscore(keys.pins, lease.lease_id)
    assert pin_before is not None
    await client.aclose()
    own_redis_server.restart()  # empty: the lease and its pin are gone from Redis
    client = aioredis.Redis.from_url(own_redis_server.url)
    deadline = time.monotonic() + 5
    while await client.zscore(keys.holders, lease.lease_id) is None:  # re-asserted
        assert time.monotonic() < deadline, "the lease was never re-asserted"
        await asyncio.sleep(0.05)
    pin_after = await client.zscore(keys.pins, lease.lease_id)
    record = json.loads(await client.hget(keys.info, lease.lease_id))
    await holder.renewer.close()  # the holder dies: nobody renews the lease any more
    newcomer = await connect(own_redis_server.url, lease_ttl_s=1.5, declared=declared)
    got = asyncio.create_task(newcomer.acquire("pinned", timeout_s=10))
    # Past the lease's expiry and the grace: still taken, as an orphan.
    deadline = time.monotonic() + 3.5
    while time.monotonic() < deadline:
        assert not got.done()
        await asyncio.sleep(0.05)
    view = await newcomer.registry.view("pinned")
    assert (view.in_use, view.orphans) == (1, 1)
    # The holder's own reckoning of its pin: never earlier than the one Redis lost, later only
    # by the time the acquire's reply took to arrive.
    assert pin_after is not None and pin_before <= pin_after < pin_before + 1000
    assert record["prediction_id"] == "p-1"
    got.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await got
    await client.aclose()
    await holder.close()
    await newcomer.close()


async def test_window_cost_does_not_grow_with_the_limit(redis_url: str) -> None:
    c = await connect(redis_url)
    client = aioredis.Redis.from_url(redis_url)
    await client.config_set("slowlog-log-slower-than", 1000)  # 1 ms
    await client.slowlog_reset()
    for _ in range(10_000):
        await c.window.take(AccountLimits.window("big"), 10_000)
    result = await c.window.take(AccountLimits.window("big"), 10_000)
    assert not result.admitted and 50 <= result.wait_s <= 60.1
    slow = [
        entry for entry in await client.slowlog_get(128) if b"evalsha" in entry["command"].lower()
    ]
    # A cost that grew with the limit would make nearly every one of these 10,001 calls slow
    # (the slowlog keeps 128); a few outliers are this shared machine's scheduling noise.
    assert len(slow) <= 5, slow
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


async def test_a_release_hands_a_grant_to_its_own_processs_waiter_from_the_reply(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    c = await connect(redis_url)
    await c.registry.create("local-grant", 1)
    keys = c.keyspace.semaphore("local-grant")
    first = await c.acquire("local-grant", timeout_s=1)
    waiter = asyncio.create_task(c.acquire("local-grant", timeout_s=10))
    [waiter_id] = await queued_ids(redis_client, keys.queue, 1)
    await first.release()
    lease = await asyncio.wait_for(waiter, 2)
    # Delivered by the release reply: no pub/sub message carried it.
    assert lease.lease_id == waiter_id
    assert (c.dispatcher.local_grants, c.dispatcher.messages) == (1, 0)
    await lease.release()
    await c.close()


async def test_a_lost_release_reply_makes_the_local_waiters_recheck_at_once(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    # Queue entries of 30 s: a waiter's own poll would come only after 10 s.
    c = await connect(redis_url, queue_entry_ttl_s=30.0)
    await c.registry.create("lost-reply", 1)
    keys = c.keyspace.semaphore("lost-reply")
    first = await c.acquire("lost-reply", timeout_s=1)
    waiter = asyncio.create_task(c.acquire("lost-reply", timeout_s=20))
    [waiter_id] = await queued_ids(redis_client, keys.queue, 1)
    plain_call = c.scripts.call

    async def reply_lost(name: str, keys: Any, args: Any) -> Any:
        reply = await plain_call(name, keys, args)
        if name == "release_slot":  # it ran, and granted the slot; its reply never arrives
            raise redis.exceptions.ConnectionError("connection lost")
        return reply

    c.scripts.call = reply_lost  # type: ignore[method-assign]
    with pytest.raises(CoordinationUnavailable):
        await first.release()
    c.scripts.call = plain_call  # type: ignore[method-assign]
    lease = await asyncio.wait_for(waiter, 3)  # re-checked at once: "already held"
    assert lease.lease_id == waiter_id and c.dispatcher.local_grants == 0
    await lease.release()
    await c.close()


async def test_a_granted_waiter_whose_grant_message_is_lost_gets_its_lease_by_polling(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    c = await connect(redis_url, lease_ttl_s=5.0, queue_entry_ttl_s=0.9)
    dropped: list[str] = []
    c.dispatcher._grant = lambda waiter_id, grant: dropped.append(waiter_id)  # type: ignore[method-assign]
    await c.registry.create("lost-grant", 1)
    keys = c.keyspace.semaphore("lost-grant")
    first = await c.acquire("lost-grant", timeout_s=1)
    waiter = asyncio.create_task(c.acquire("lost-grant", timeout_s=10))
    [waiter_id] = await queued_ids(redis_client, keys.queue, 1)
    await first.release()
    # Granted in Redis at once; the message never reaches the waiter.
    assert await redis_client.zscore(keys.holders, waiter_id) is not None
    assert not waiter.done()
    lease = await asyncio.wait_for(waiter, 2)  # its next poll (every 0.3 s) finds it held
    assert dropped == [waiter_id] and lease.lease_id == waiter_id
    # The poll extended the grant (which lapsed with the queue entry) to a full TTL.
    now = await redis_ms(redis_client)
    assert lease.expires_at_ms - now > 4000
    assert await redis_client.zscore(keys.holders, waiter_id) == lease.expires_at_ms
    assert lease.valid_s == 5.0 and lease.is_valid()
    await lease.release()
    await c.close()


async def test_a_waiter_cancelled_right_after_its_grant_leaves_no_holder(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    c = await connect(redis_url)
    await c.registry.create("cancel-grant", 1)
    keys = c.keyspace.semaphore("cancel-grant")
    first = await c.acquire("cancel-grant", timeout_s=1)
    doomed = asyncio.create_task(c.acquire("cancel-grant", timeout_s=10))
    [doomed_id] = await queued_ids(redis_client, keys.queue, 1)
    behind = asyncio.create_task(c.acquire("cancel-grant", timeout_s=10))
    await queued_ids(redis_client, keys.queue, 2)
    deliver = c.dispatcher._grant

    def deliver_then_cancel(waiter_id: str, grant: Any) -> None:
        deliver(waiter_id, grant)  # the grant is in hand, its event set...
        if waiter_id == doomed_id:
            doomed.cancel()  # ...and the waiter is cancelled before it runs again

    c.dispatcher._grant = deliver_then_cancel  # type: ignore[method-assign]
    await first.release()
    with pytest.raises(asyncio.CancelledError):
        await doomed
    # Its cleanup released the granted slot, which went on to the next waiter.
    lease = await asyncio.wait_for(behind, 5)
    holders = [m.decode() for m in await redis_client.zrange(keys.holders, 0, -1)]
    assert holders == [lease.lease_id]
    assert doomed_id not in c.book.held
    await lease.release()
    assert await redis_client.zcard(keys.holders) == 0
    assert await redis_client.zcard(keys.queue) == 0
    assert c.book.held == {}
    await c.close()


async def test_a_granted_lease_is_renewed_to_a_full_ttl_soon(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    c = await connect(redis_url, lease_ttl_s=3.0, queue_entry_ttl_s=1.2)
    await c.registry.create("short-grant", 1)
    keys = c.keyspace.semaphore("short-grant")
    first = await c.acquire("short-grant", timeout_s=1)
    waiter = asyncio.create_task(c.acquire("short-grant", timeout_s=10))
    await queued_ids(redis_client, keys.queue, 1)
    await first.release()
    lease = await asyncio.wait_for(waiter, 2)
    assert c.dispatcher.grants_received == 1  # granted by the release, not by a poll
    now = await redis_ms(redis_client)
    # The grant ran only until the queue entry's expiry, and the lease knows it.
    assert lease.expires_at_ms - now <= 1200
    assert lease.valid_s <= 1.2
    granted_until = lease.expires_at_ms
    deadline = time.monotonic() + 1.0
    while lease.expires_at_ms == granted_until:  # renewed within TTL/10 (0.3 s)
        assert time.monotonic() < deadline, "the grant was not renewed"
        await asyncio.sleep(0.02)
    now = await redis_ms(redis_client)
    assert lease.expires_at_ms - now > 2500
    assert await redis_client.zscore(keys.holders, lease.lease_id) == lease.expires_at_ms
    assert lease.valid_s == 3.0 and lease.is_valid()
    await asyncio.sleep(1.5)  # past the grant's own expiry: still held
    assert lease.is_valid()
    assert await lease.release()
    await c.close()


async def test_a_detached_lease_is_handed_over_with_a_full_ttl(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    c = await connect(redis_url, lease_ttl_s=30.0, queue_entry_ttl_s=1.2)
    await c.registry.create("remote-grant", 1)
    keys = c.keyspace.semaphore("remote-grant")
    first = await c.acquire("remote-grant", timeout_s=1)
    waiter = asyncio.create_task(acquire_remote(c, "remote-grant", timeout_s=10, description="x"))
    await queued_ids(redis_client, keys.queue, 1)
    await first.release()
    lease = await asyncio.wait_for(waiter, 2)
    assert c.dispatcher.grants_received == 1
    # Its client renews by the TTL it is told, so the grant was renewed before it was answered.
    assert lease.expires_at_ms - await redis_ms(redis_client) > 28_000
    assert lease.lease_id not in c.book.held
    info = await redis_client.hget(keys.info, lease.lease_id)
    assert info is not None and b'"remote":true' in info and b'"purpose":"x"' in info
    assert await release_remote(c, "remote-grant", lease.lease_id)
    await c.close()
