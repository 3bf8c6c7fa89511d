"""The semaphore across real processes on a real redis-server."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import pytest
import redis.asyncio as aioredis

from service.coordination import Coordinator
from tests.fixtures.procs import LineProcess
from tests.fixtures.redis_server import queued_ids, redis_ms

pytestmark = pytest.mark.redis


def worker(url: str, mode: str, *args: str) -> LineProcess:
    return LineProcess.python_module("tests.integration.sem_worker", mode, "--url", url, *args)


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = [(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals]
    events.sort(key=lambda item: (item[0], item[1]))  # ends before starts at equal times
    current = peak = 0
    for _, delta in events:
        current += delta
        peak = max(peak, current)
    return peak


async def coordinator(url: str, **options: object) -> Coordinator:
    return await Coordinator.connect(url, replica_id="test", **options)


async def test_three_processes_of_eight_workers_never_exceed_the_limit(redis_url: str) -> None:
    c = await coordinator(redis_url)
    await c.registry.create("shared", 4)
    procs = [
        worker(
            redis_url,
            "loop",
            "--semaphore",
            "shared",
            "--tag",
            f"p{i}",
            "--workers",
            "8",
            "--hold-ms",
            "15",
            "--duration",
            "3",
        )
        for i in range(3)
    ]
    try:
        for p in procs:
            p.wait_for("DONE", timeout=60)
    finally:
        for p in procs:
            p.stop()
    holds = [json.loads(line) for p in procs for line in p.drain() if line.startswith("{")]
    assert len(holds) > 100
    assert max_overlap([(h["start"], h["end"]) for h in holds]) <= 4
    assert {h["w"].split("-")[0] for h in holds} == {"p0", "p1", "p2"}
    view = await c.registry.view("shared")
    assert view.in_use == 0 and view.waiting == 0
    await c.close()


async def test_waiters_are_served_first_come_first_served_across_processes(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    c = await coordinator(redis_url)
    await c.registry.create("fifo", 1)
    blocker = await c.acquire("fifo", timeout_s=1)
    queue_key = c.keyspace.semaphore("fifo").queue
    procs = []
    try:
        for i in range(6):
            procs.append(
                worker(
                    redis_url, "queue", "--semaphore", "fifo", "--tag", f"w{i}", "--hold-ms", "30"
                )
            )
            procs[-1].wait_for("READY")
            deadline = time.monotonic() + 10
            while await redis_client.zcard(queue_key) < i + 1:  # w{i} is queued before w{i+1}
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
        await blocker.release()
        got = [
            (float(p.wait_for("GOT").split()[2]), p.wait_for("DONE") and p.history) for p in procs
        ]
    finally:
        for p in procs:
            p.stop()
    times = [t for t, _ in got]
    assert times == sorted(times)
    await c.close()


async def test_a_killed_holders_slots_come_back_within_one_ttl(redis_url: str) -> None:
    c = await coordinator(redis_url, lease_ttl_s=1.5)
    await c.registry.create("crash", 2)
    holder = worker(redis_url, "hold", "--semaphore", "crash", "--count", "2", "--ttl", "1.5")
    try:
        holder.wait_for("HELD")
        killed_at = time.monotonic()
        holder.signal(signal.SIGKILL)
        lease = await c.acquire("crash", timeout_s=10)
        waited = time.monotonic() - killed_at
        assert waited <= 1.5 + 1.0  # one TTL, plus scheduling slack on a busy machine
        await lease.release()
    finally:
        holder.stop()
    await c.close()


async def test_a_frozen_holder_learns_its_lease_is_lost_and_cannot_reenter(redis_url: str) -> None:
    c = await coordinator(redis_url, lease_ttl_s=1.0)
    await c.registry.create("freeze", 1)
    holder = worker(redis_url, "hold", "--semaphore", "freeze", "--ttl", "1.0", "--report-valid")
    try:
        held_id = holder.wait_for("HELD").split()[1]
        holder.signal(signal.SIGSTOP)
        replacement = await c.acquire("freeze", timeout_s=10)  # the frozen lease expired
        holder.signal(signal.SIGCONT)
        assert holder.wait_for("LOST", timeout=10) == f"LOST {held_id}"
        assert holder.wait_for("VALID 0", timeout=5)
        view = await c.registry.view("freeze", detail=True)
        assert [h.lease_id for h in view.holders] == [replacement.lease_id]
        await asyncio.sleep(1.0)  # more renewal rounds: the lost lease never comes back
        view = await c.registry.view("freeze", detail=True)
        assert [h.lease_id for h in view.holders] == [replacement.lease_id]
        assert view.counters.get("lost") == 1
        await replacement.release()
    finally:
        holder.stop()
    await c.close()


async def test_waiters_progress_when_the_wake_connection_drops(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    c = await coordinator(redis_url, queue_entry_ttl_s=1.5)
    # The holder is another process's (a release hands a grant to its own process's waiters in
    # its reply, without pub/sub).
    other = await coordinator(redis_url)
    await c.registry.create("drop", 1)
    first = await other.acquire("drop", timeout_s=1)
    waiter = asyncio.create_task(c.acquire("drop", timeout_s=10))
    await asyncio.sleep(0.1)
    await redis_client.client_kill_filter(_type="pubsub")
    await first.release()  # its grant message has nobody to reach
    lease = await asyncio.wait_for(waiter, 5)
    await lease.release()
    assert c.dispatcher.reconnects >= 1
    assert c.dispatcher.local_grants == 0
    await other.close()
    await c.close()


async def test_cancellation_at_random_points_leaves_no_holder_or_waiter(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    c = await coordinator(redis_url)
    await c.registry.create("cancel", 3)
    import random

    rng = random.Random(7)

    async def use() -> None:
        async with await c.acquire("cancel", timeout_s=10):
            await asyncio.sleep(rng.random() * 0.02)

    for _ in range(10):
        tasks = [asyncio.create_task(use()) for _ in range(30)]
        await asyncio.sleep(rng.random() * 0.03)
        cancelled = [task for task in tasks if rng.random() < 0.6 and task.cancel()]
        await asyncio.gather(*tasks, return_exceptions=True)
        # A cancelled acquire never hands back a lease (redis-py can swallow a cancel on 3.11).
        assert all(task.cancelled() for task in cancelled)
    keys = c.keyspace.semaphore("cancel")
    holders = await redis_client.zrange(keys.holders, 0, -1, withscores=True)
    queue = await redis_client.zrange(keys.queue, 0, -1)
    # What a failure needs to be diagnosed: whose slot or place was left, and the counters.
    left = (holders, queue, await redis_client.hgetall(keys.info))
    assert holders == [] and queue == [], (left, await redis_client.hgetall(keys.stats))
    assert c.book.held == {}
    await c.close()


async def test_script_flush_is_survived(redis_url: str, redis_client: aioredis.Redis) -> None:
    c = await coordinator(redis_url)
    await c.registry.create("flush", 1)
    await (await c.acquire("flush", timeout_s=1)).release()
    await redis_client.script_flush()
    lease = await c.acquire("flush", timeout_s=1)
    assert await lease.release()
    await c.close()


async def test_a_grant_to_a_killed_waiter_lapses_at_its_queue_entry_expiry(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    # Lease TTL 30 s: a grant for a full TTL would idle that long. This process's waiter polls
    # every 0.5 s (nobody tells it when the dead waiter's grant lapses, as nobody told it
    # before grants when a dead head's queue entry expired).
    c = await coordinator(redis_url, queue_entry_ttl_s=1.5)
    await c.registry.create("dead-waiter", 1)
    keys = c.keyspace.semaphore("dead-waiter")
    first = await c.acquire("dead-waiter", timeout_s=1)
    doomed = worker(
        redis_url, "queue", "--semaphore", "dead-waiter", "--tag", "doomed", "--queue-ttl", "1.0"
    )
    try:
        doomed.wait_for("READY")
        [doomed_id] = await queued_ids(redis_client, keys.queue, 1)
        behind = asyncio.create_task(c.acquire("dead-waiter", timeout_s=10))
        await queued_ids(redis_client, keys.queue, 2)
        doomed.signal(signal.SIGKILL)
        killed_at = time.monotonic()
        await first.release()  # granted to the head, whose process is gone
        expiry = await redis_client.zscore(keys.holders, doomed_id)
        assert expiry is not None
        # Until its queue entry's expiry (its last poll + 1 s), not for a lease TTL.
        assert expiry - await redis_ms(redis_client) <= 1000
        lease = await asyncio.wait_for(behind, 5)
        waited = time.monotonic() - killed_at
        assert waited <= 1.0 + 0.5 + 1.0  # entry TTL, poll interval, slack on a busy machine
        holders = [m.decode() for m in await redis_client.zrange(keys.holders, 0, -1)]
        assert holders == [lease.lease_id]
        await lease.release()
    finally:
        doomed.stop()
    await c.close()


async def test_a_release_tells_only_the_grantees_process(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    holder, waiting, bystander = [
        await Coordinator.connect(redis_url, replica_id=name) for name in ("h", "w", "b")
    ]
    await holder.registry.create("targeted", 1)
    keys = holder.keyspace.semaphore("targeted")
    lease = await holder.acquire("targeted", timeout_s=1)
    waiter = asyncio.create_task(waiting.acquire("targeted", timeout_s=5))
    await queued_ids(redis_client, keys.queue, 1)
    assert waiting.dispatcher.token not in (holder.dispatcher.token, bystander.dispatcher.token)
    before = bystander.dispatcher.messages
    await lease.release()
    granted = await asyncio.wait_for(waiter, 5)
    assert granted.lease_id.endswith("-" + waiting.dispatcher.token)
    assert waiting.dispatcher.grants_received == 1
    await asyncio.sleep(0.1)
    assert bystander.dispatcher.messages == before
    await granted.release()
    for c in (holder, waiting, bystander):
        await c.close()
