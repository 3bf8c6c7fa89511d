"""Waiters kept in the queue by one keeper per process and semaphore, on a real redis-server."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import pytest
import redis.asyncio as aioredis

from service.coordination import AcquireTimeout, CoordinationUnavailable, Coordinator, Lease
from tests.fixtures.procs import LineProcess
from tests.fixtures.redis_server import RedisServer, queued_ids, redis_ms

pytestmark = pytest.mark.redis


def count_script_calls(c: Coordinator) -> Counter[str]:
    """Counts every script call `c` makes, by script name, from now on."""
    counts: Counter[str] = Counter()
    call = c.scripts.call

    async def counted(name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        counts[name] += 1
        return await call(name, keys, args)

    c.scripts.call = counted  # type: ignore[method-assign]
    return counts


async def evalsha_calls(client: aioredis.Redis) -> int:
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_two_hundred_waiters_make_one_call_per_keepalive_interval(
    own_redis_server: RedisServer,
) -> None:
    url = own_redis_server.url
    client = aioredis.from_url(url)
    # Queue entry TTL 1.5 s: a waiter's entry needs keeping every 0.5 s. The slots are held by
    # another process for a lease TTL of 30 s: no expiry to wake anyone meanwhile.
    holder = await Coordinator.connect(url, replica_id="holder")
    c = await Coordinator.connect(url, replica_id="waiters", queue_entry_ttl_s=1.5)
    await holder.registry.create("crowd", 2)
    keys = c.keyspace.semaphore("crowd")
    leases = [await holder.acquire("crowd", timeout_s=1) for _ in range(2)]
    calls = count_script_calls(c)
    waiters = [asyncio.create_task(c.acquire("crowd", timeout_s=60)) for _ in range(200)]
    try:
        queued = await queued_ids(client, keys.queue, 200)
        await asyncio.sleep(0.2)  # the last first polls answered
        polls_before = calls["acquire_slot"]
        assert polls_before == 200  # each waiter polled once, to join
        await client.config_resetstat()
        kept_before = calls["keep_waiting"]
        await asyncio.sleep(3.0)  # 6 keepalive intervals, two queue TTLs
        server_calls = await evalsha_calls(client)
        kept = calls["keep_waiting"] - kept_before
        # No waiter polled on its own: one keep_waiting per interval kept all 200 alive.
        assert calls["acquire_slot"] == polls_before
        assert 4 <= kept <= 12, kept
        # On the server too: O(1) script calls per interval (the keeper's; the holder's renewals
        # every 3 s), not O(200) (1,200 polls in 3 s before the keeper).
        assert server_calls <= kept + 6, (server_calls, kept)
        # Every entry outlived its queue TTL, in its place.
        assert [m.decode() for m in await client.zrange(keys.queue, 0, -1)] == queued
        assert c.semaphores.keepalive_failures == 0
        # They are still served first come first served, by grant on release.
        await leases[0].release()
        first = await asyncio.wait_for(asyncio.shield(waiters_done(waiters, 1)), 5)
        assert [lease.lease_id for lease in first] == queued[:1]
    finally:
        for task in waiters:
            task.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        for lease in leases:
            await lease.release()
        await c.close()
        await holder.close()
        await client.aclose()
    # The keeper ended with its last waiter.
    assert c.semaphores._keepers == {}


async def waiters_done(tasks: list[asyncio.Task[Lease]], count: int) -> list[Lease]:
    while sum(task.done() for task in tasks) < count:
        await asyncio.sleep(0.01)
    return [task.result() for task in tasks if task.done()]


async def test_a_waiter_whose_process_stops_keeping_it_loses_its_place_after_the_queue_ttl(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    c = await Coordinator.connect(redis_url, replica_id="alive", queue_entry_ttl_s=1.0)
    await c.registry.create("frozen", 1)
    keys = c.keyspace.semaphore("frozen")
    first = await c.acquire("frozen", timeout_s=1)
    frozen = LineProcess.python_module(
        "tests.integration.sem_worker",
        "queue",
        "--url",
        redis_url,
        "--semaphore",
        "frozen",
        "--tag",
        "frozen",
        "--queue-ttl",
        "1.0",
    )
    try:
        frozen.wait_for("READY")
        [frozen_id] = await queued_ids(redis_client, keys.queue, 1)
        behind = asyncio.create_task(c.acquire("frozen", timeout_s=20))
        [_, behind_id] = await queued_ids(redis_client, keys.queue, 2)
        frozen.signal(signal.SIGSTOP)  # alive but frozen: its keeper calls no more
        # Its entry lapses within the queue TTL (plus one keepalive interval of ours, whose
        # call purges it); ours, kept by this process, stays.
        deadline = asyncio.get_running_loop().time() + 10.0  # generous: a busy machine
        while frozen_id.encode() in await redis_client.zrange(keys.queue, 0, -1):
            assert asyncio.get_running_loop().time() < deadline, "the frozen entry never lapsed"
            await asyncio.sleep(0.05)
        await asyncio.sleep(2.0)  # two more queue TTLs: ours is kept all along
        assert [m.decode() for m in await redis_client.zrange(keys.queue, 0, -1)] == [behind_id]
        await first.release()
        lease = await asyncio.wait_for(behind, 5)
        assert lease.lease_id == behind_id
        await lease.release()
    finally:
        frozen.stop()
    await c.close()


async def test_a_failing_keeper_is_logged_and_its_waiters_poll_on_their_own(
    redis_url: str, redis_client: aioredis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    c = await Coordinator.connect(redis_url, replica_id="broken", queue_entry_ttl_s=0.9)
    await c.registry.create("broken-keeper", 1)
    keys = c.keyspace.semaphore("broken-keeper")
    held = await c.acquire("broken-keeper", timeout_s=1)
    calls = count_script_calls(c)
    call = c.scripts.call

    async def failing(name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        if name == "keep_waiting":
            raise RuntimeError("keep_waiting broke")
        return await call(name, keys, args)

    c.scripts.call = failing  # type: ignore[method-assign]
    waiter = asyncio.create_task(c.acquire("broken-keeper", timeout_s=20))
    try:
        [waiter_id] = await queued_ids(redis_client, keys.queue, 1)
        await asyncio.sleep(2.5)  # almost three queue TTLs
        # Still queued: woken by each failed keepalive, it polled on its own.
        assert [m.decode() for m in await redis_client.zrange(keys.queue, 0, -1)] == [waiter_id]
        assert c.semaphores.keepalive_failures >= 2
        assert calls["acquire_slot"] >= 3
        assert "keeping waiters queued failed" in caplog.text
        await held.release()
        lease = await asyncio.wait_for(waiter, 5)
        await lease.release()
    finally:
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)
        await c.close()


async def test_a_kept_waiter_still_times_out_on_time_and_leaves_no_entry(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    c = await Coordinator.connect(redis_url, replica_id="t", queue_entry_ttl_s=0.6)
    await c.registry.create("short", 1)
    keys = c.keyspace.semaphore("short")
    held = await c.acquire("short", timeout_s=1)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(AcquireTimeout):
        await c.acquire("short", timeout_s=1.2)  # longer than the queue TTL: kept meanwhile
    assert loop.time() - started >= 1.2  # not before its deadline
    assert await redis_client.zcard(keys.queue) == 0
    assert c.semaphores._keepers == {}
    await held.release()
    await c.close()


async def test_a_grant_read_after_its_lapse_is_never_handed_over(
    own_redis_server: RedisServer,
) -> None:
    # An outside attack: a waiter's process frozen (SIGSTOP) while its grant was published read
    # the message after the grant had lapsed with its queue entry, and handed over a lease Redis
    # no longer had (is_valid() True, its slot free for anyone). Here the freeze is this
    # process's event loop blocked while the grant waits unread on the wake connection.
    url = own_redis_server.url
    client = aioredis.from_url(url)
    releaser = await Coordinator.connect(url, replica_id="releaser")
    c = await Coordinator.connect(url, replica_id="frozen", queue_entry_ttl_s=1.0)
    await releaser.registry.create("late", 1)
    keys = c.keyspace.semaphore("late")
    held = await releaser.acquire("late", timeout_s=1)
    waiter = asyncio.create_task(c.acquire("late", timeout_s=30))
    try:
        [waiter_id] = await queued_ids(client, keys.queue, 1)
        await asyncio.sleep(0.1)  # its keeper has its first keepalive due
        await held.release()  # granted to the waiter: until its queue entry's expiry, <= 1 s
        time.sleep(1.5)  # the loop blocked: the grant lapses unread
        lease = await asyncio.wait_for(waiter, 10)
        expiry = await client.zscore(keys.holders, lease.lease_id)
        now_ms = await redis_ms(client)
        # Whatever it got is what Redis holds for it now, not the lapsed grant.
        assert lease.is_valid()
        assert expiry is not None and expiry > now_ms, (waiter_id, lease.expires_at_ms, now_ms)
        await lease.release()
    finally:
        waiter.cancel()
        await releaser.close()
        await c.close()
        await client.aclose()


async def test_close_fails_the_waiting_acquires_and_leaves_no_keeper_or_entry(
    own_redis_server: RedisServer,
) -> None:
    # An outside attack: close() with acquires waiting left a keeper running (the woken waiters
    # polled and started a new one), kept their entries alive, and one of them was handed a
    # lease after close that nobody renewed.
    url = own_redis_server.url
    client = aioredis.from_url(url)
    holder = await Coordinator.connect(url, replica_id="holder")
    c = await Coordinator.connect(url, replica_id="closing", queue_entry_ttl_s=1.5)
    await holder.registry.create("closing", 1)
    keys = c.keyspace.semaphore("closing")
    held = await holder.acquire("closing", timeout_s=1)
    waiters = [asyncio.create_task(c.acquire("closing", timeout_s=30)) for _ in range(5)]
    try:
        await queued_ids(client, keys.queue, 5)
        await c.close()
        results = await asyncio.wait_for(asyncio.gather(*waiters, return_exceptions=True), 5)
        assert all(isinstance(r, CoordinationUnavailable) for r in results), results
        assert await client.zcard(keys.queue) == 0
        calls = c.semaphores.keepalive_calls
        await held.release()  # nobody here may be granted it any more
        await asyncio.sleep(1.0)  # two keepalive intervals
        assert c.semaphores.keepalive_calls == calls
        assert await client.zcard(keys.holders) == 0
        with pytest.raises(CoordinationUnavailable):
            await c.acquire("closing", timeout_s=1)
    finally:
        for waiter in waiters:
            waiter.cancel()
        await holder.close()
        await client.aclose()


async def test_a_live_waiter_behind_thousands_of_dead_ones_gets_a_freed_slot_at_once(
    own_redis_server: RedisServer,
) -> None:
    # An outside attack: a process died with 3,000 waiters queued; a live waiter behind them
    # got a freed slot only 27 s later (default TTLs): each call drops a few hundred dead heads,
    # and its keeper called again only at the usual hint. Here the dead entries are written
    # directly (the process that "died" never existed), already expired.
    url = own_redis_server.url
    client = aioredis.from_url(url)
    holder = await Coordinator.connect(url, replica_id="holder")
    c = await Coordinator.connect(url, replica_id="live", queue_entry_ttl_s=9.0)
    await holder.registry.create("crowd-of-dead", 1)
    keys = c.keyspace.semaphore("crowd-of-dead")
    held = await holder.acquire("crowd-of-dead", timeout_s=1)
    seconds, _ = await client.time()
    expired_ms = (int(seconds) - 60) * 1000
    dead = [f"dead{i:05d}-0000000000" for i in range(3000)]
    await client.zadd(keys.queue, {d: i for i, d in enumerate(dead)})
    await client.zadd(keys.qexp, {d: expired_ms for d in dead})
    await client.hset(keys.meta, "seq", 3000)
    waiter = asyncio.create_task(c.acquire("crowd-of-dead", timeout_s=30))
    try:
        # Joined (its poll purged a first batch of the dead): the one live entry.
        while not await client.zrangebyscore(keys.qexp, expired_ms + 1, "+inf"):
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.2)
        loop = asyncio.get_running_loop()
        released_at = loop.time()
        await held.release()
        lease = await asyncio.wait_for(waiter, 20)
        # It took ~9 keepalive intervals (3 s each here), each call dropping a few hundred of
        # the dead: now the keeper's next call, which calls again at once while a slot is free
        # behind dead heads, and so on until they are gone. (The release itself drops 256 and
        # tells nobody: nobody it could tell is known before the live head is reached.)
        assert loop.time() - released_at < 3.0 + 1.5
        await lease.release()
        assert await client.zcard(keys.queue) == 0
    finally:
        waiter.cancel()
        await holder.close()
        await c.close()
        await client.aclose()
