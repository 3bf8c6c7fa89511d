"""The records Python writes and Lua keeps, on a real redis-server: its cjson (14 significant
digits, "/" escaped) is not fakeredis', so both sides are checked to agree here too."""

from __future__ import annotations

import json
from typing import Any

import pytest
import redis.asyncio as aioredis

from service.coordination.keys import KeySpace
from service.coordination.script_calls import (
    Admitted,
    Queued,
    ReleaseOutcome,
    ScriptCalls,
)
from service.coordination.scripts import Scripts

pytestmark = pytest.mark.redis

# Numbers cjson would round, a big integer, escapes, non-ASCII, empty containers.
AWKWARD_INPUT: dict[str, Any] = {
    "prompt": 'a "quoted" path/to é ≈ 🙂',
    "guidance": 0.30000000000000004,
    "seed": 2**53 + 1,
    "scale": 1e-7,
    "images": [],
    "extra": {},
}


def calls_on(client: aioredis.Redis) -> ScriptCalls:
    return ScriptCalls(Scripts(client), KeySpace("rec"))


async def acquire(calls: ScriptCalls, lease_id: str, holder: dict[str, Any]) -> Admitted | Queued:
    fields = {k: v for k, v in holder.items() if k != "acquired_at"}
    reply = await calls.acquire_slot(
        "s",
        lease_id=lease_id,
        ttl_ms=60_000,
        pin_ms=5_000,
        holder_json=json.dumps(fields, separators=(",", ":")),
        acquired_at=holder.get("acquired_at", 1_800_000_000.123),
        replica="replica/1",
        waiting_since=1_800_000_000.1234567,
        queue=True,
        queue_ttl_ms=60_000,
    )
    assert isinstance(reply, Admitted | Queued)
    return reply


async def test_a_holder_survives_the_queue_and_the_grant_exactly(
    redis_client: aioredis.Redis,
) -> None:
    calls = calls_on(redis_client)
    keys = KeySpace("rec").semaphore("s")
    await calls.create_semaphore("s", limit=1, mode="create")
    first = {"replica": "r", "acquired_at": 1_800_000_000.5, "input": AWKWARD_INPUT}
    assert isinstance(await acquire(calls, "a-tok", first), Admitted)
    # Admitted at once: the holder JSON as Python wrote it, acquired_at from the acquire.
    assert json.loads(await redis_client.hget(keys.info, "a-tok")) == first

    second = {"replica": "r2", "purpose": "generate x/y", "input": AWKWARD_INPUT, "remote": True}
    assert isinstance(await acquire(calls, "b-tok", second), Queued)
    record = json.loads(await redis_client.hget(keys.qinfo, "b-tok"))
    assert record == {
        "replica": "replica/1",
        "since": 1_800_000_000.123,
        "ttl_ms": 60_000,
        "pin_ms": 5_000,
        "holder": json.dumps(second, separators=(",", ":")),
    }
    reading = await calls.read_semaphore("s", detail=True)
    assert reading is not None
    assert [(w.waiter_id, w.record["replica"]) for w in reading.waiters] == [("b-tok", "replica/1")]

    released = await calls.release_slot("s", lease_id="a-tok", local_token="tok")
    assert released.outcome == ReleaseOutcome.SLOT
    granted_at_ms = int(released.local_grants.split()[1])
    info = json.loads(await redis_client.hget(keys.info, "b-tok"))
    assert info == {**second, "acquired_at": granted_at_ms / 1000}


async def test_an_empty_holder_and_an_adopted_record(redis_client: aioredis.Redis) -> None:
    calls = calls_on(redis_client)
    keys = KeySpace("rec").semaphore("s")
    await calls.create_semaphore("s", limit=1, mode="create")
    await acquire(calls, "a-tok", {"acquired_at": 1_800_000_000.25})
    assert json.loads(await redis_client.hget(keys.info, "a-tok")) == {
        "acquired_at": 1_800_000_000.25
    }
    # The holder stops renewing: expire its lease by hand, then adopt it.
    await calls.annotate_lease(
        "s", lease_id="a-tok", holder_json=json.dumps({"model": "m", "input": AWKWARD_INPUT})
    )
    await redis_client.zadd(keys.holders, {"a-tok": 1})
    adoption = await calls.adopt_orphans("s", ttl_ms=60_000, adopter="b/2", new_ids=["n-tok"])
    [claimed] = adoption.claimed
    assert claimed.record == {"model": "m", "input": AWKWARD_INPUT}
    info = json.loads(await redis_client.hget(keys.info, "n-tok"))
    assert info == {
        "adopted_by": "b/2",
        "adopted_from": "a-tok",
        "orphaned_at": claimed.orphaned_at_ms / 1000,
        "model": "m",
        "input": AWKWARD_INPUT,
    }
