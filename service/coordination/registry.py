"""Registered global semaphores: create, read, list, change the limit, delete, inspect."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from .errors import InvalidLimit, SemaphoreExists, SemaphoreNotFound
from .keys import GLOBAL, KeySpace
from .redis_errors import guarded
from .scripts import Scripts


@dataclass(frozen=True)
class HolderView:
    lease_id: str
    expires_in_s: float
    replica: str
    purpose: str
    prediction_id: str | None
    acquired_at: float | None
    # docs/slot-ownership.md: its holder stopped renewing while its prediction may run (waiting
    # for a replica to adopt it), or a replica adopted it and is settling its prediction.
    orphaned: bool = False
    adopted_by: str | None = None


@dataclass(frozen=True)
class WaiterView:
    position: int
    waiter_id: str
    replica: str
    waiting_since: float | None
    expires_in_s: float


@dataclass(frozen=True)
class SemaphoreView:
    semaphore_id: str
    limit: int
    in_use: int
    waiting: int
    grace_remaining_s: float = 0.0
    orphans: int = 0  # slots whose holder vanished, still taken until adopted and settled
    holders: list[HolderView] = field(default_factory=list)
    waiters: list[WaiterView] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)


def check_limit(limit: object) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidLimit(limit)
    return limit


class SemaphoreRegistry:
    def __init__(self, *, client: aioredis.Redis, scripts: Scripts, keyspace: KeySpace) -> None:
        self._client = client
        self._scripts = scripts
        self._keyspace = keyspace

    async def create(self, semaphore_id: str, limit: int) -> None:
        keys = self._keyspace.semaphore(semaphore_id, GLOBAL)
        reply = await guarded(
            self._scripts.call(
                "create_semaphore", keys.all, [check_limit(limit), "create", keys.channel, 0]
            )
        )
        await guarded(self._client.sadd(self._keyspace.registry, semaphore_id))
        if int(reply) == 0:
            raise SemaphoreExists(semaphore_id)

    async def ensure(self, semaphore_id: str, limit: int, grace_ms: int = 0) -> bool:
        """Create, or set the limit of, a declared semaphore. True if it was (re)created; a
        re-creation after a data loss gets `grace_ms` before its first acquisition."""
        keys = self._keyspace.semaphore(semaphore_id, GLOBAL)
        reply = await guarded(
            self._scripts.call(
                "create_semaphore", keys.all, [check_limit(limit), "ensure", keys.channel, grace_ms]
            )
        )
        await guarded(self._client.sadd(self._keyspace.registry, semaphore_id))
        return int(reply) == 1

    async def exists(self, semaphore_id: str) -> bool:
        keys = self._keyspace.semaphore(semaphore_id, GLOBAL)
        return bool(await guarded(self._client.exists(keys.meta)))

    async def list(self) -> list[str]:
        """Registered ids, sorted. Ids whose semaphore is gone are dropped from the index."""
        raw = await guarded(self._client.smembers(self._keyspace.registry))
        ids = sorted(m.decode() if isinstance(m, bytes) else str(m) for m in raw)
        if not ids:
            return []
        pipe = self._client.pipeline(transaction=False)
        for semaphore_id in ids:
            pipe.exists(self._keyspace.semaphore(semaphore_id, GLOBAL).meta)
        present = await guarded(pipe.execute())
        stale = [i for i, ok in zip(ids, present, strict=True) if not ok]
        if stale:
            await guarded(self._client.srem(self._keyspace.registry, *stale))
        return [i for i, ok in zip(ids, present, strict=True) if ok]

    async def set_limit(self, semaphore_id: str, limit: int) -> int:
        keys = self._keyspace.semaphore(semaphore_id, GLOBAL)
        reply = int(
            await guarded(
                self._scripts.call("set_limit", keys.all, [check_limit(limit), keys.channel])
            )
        )
        if reply < 0:
            raise SemaphoreNotFound(semaphore_id)
        return reply

    async def delete(self, semaphore_id: str) -> None:
        """Remove the semaphore, its holders, queue and counters. Waiters are woken and fail
        with not found; each holder's next renewal reports its lease lost (the renewal only
        re-creates a missing semaphore while its replica suspects a Redis data loss). A
        semaphore declared in a replica's configuration comes back on that replica's next
        acquire: the service refuses to delete those (service.api.semaphores)."""
        keys = self._keyspace.semaphore(semaphore_id, GLOBAL)
        existed = int(
            await guarded(self._scripts.call("delete_semaphore", keys.all, [keys.channel]))
        )
        await guarded(self._client.srem(self._keyspace.registry, semaphore_id))
        if not existed:
            raise SemaphoreNotFound(semaphore_id)

    async def force_release(self, semaphore_id: str, lease_id: str, kind: str = GLOBAL) -> bool:
        """Operator action: free a slot whose holder is stuck. Its holder learns at next renewal.

        Counts `force_released` when a live lease (or a queue entry) was removed; the holder's
        next renewal then counts `lost` as well."""
        keys = self._keyspace.semaphore(semaphore_id, kind)
        reply = await guarded(
            self._scripts.call("release_slot", keys.all, [lease_id, keys.channel, "force_released"])
        )
        return int(reply) == 1

    async def view(
        self, semaphore_id: str, kind: str = GLOBAL, detail: bool = False
    ) -> SemaphoreView:
        keys = self._keyspace.semaphore(semaphore_id, kind)
        # Expired holders and waiters stay in Redis until the next acquire or release purges
        # them: count only the live ones, by Redis time.
        seconds, micros = await guarded(self._client.time())
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        pipe = self._client.pipeline(transaction=True)
        pipe.time()
        pipe.hgetall(keys.meta)
        pipe.zrange(keys.holders, 0, -1, withscores=True)
        pipe.zcount(keys.qexp, f"({now_ms}", "+inf")
        pipe.zrange(keys.orphans, 0, -1)
        pipe.zrangebyscore(keys.pins, f"({now_ms}", "+inf")
        if detail:
            pipe.hgetall(keys.info)
            pipe.zrange(keys.queue, 0, 99)
            pipe.zrange(keys.qexp, 0, -1, withscores=True)
            pipe.hgetall(keys.qinfo)
            pipe.hgetall(keys.stats)
        replies = await guarded(pipe.execute())
        seconds, micros = replies[0]
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        meta = _decode_map(replies[1])
        if "limit" not in meta:
            raise SemaphoreNotFound(semaphore_id)
        # A pinned holder whose lease expired is still counted until its pin passes: the next
        # acquire orphans it rather than freeing it (docs/slot-ownership.md).
        pinned = {_s(m) for m in replies[5]}
        live = [
            (_s(m), float(score))
            for m, score in replies[2]
            if float(score) > now_ms or _s(m) in pinned
        ]
        # Orphans, and pinned holders that expired but no script has orphaned yet.
        orphaned = {_s(m) for m in replies[4]} | {m for m, expiry in live if expiry <= now_ms}
        grace_ms = max(0.0, float(meta.get("grace_until", "0")) - now_ms)
        view = SemaphoreView(
            semaphore_id=semaphore_id,
            limit=int(meta["limit"]),
            in_use=len(live),
            waiting=int(replies[3]),
            grace_remaining_s=grace_ms / 1000,
            orphans=len(orphaned),
        )
        if not detail:
            return view
        info = _decode_map(replies[6])
        qexp = {_s(m): float(score) for m, score in replies[8]}
        qinfo = _decode_map(replies[9])
        holders = []
        for lease_id, expiry in sorted(live, key=lambda item: item[1]):
            data = _json(info.get(lease_id))
            holders.append(
                HolderView(
                    lease_id=lease_id,
                    expires_in_s=round((expiry - now_ms) / 1000, 3),
                    replica=str(data.get("replica", "")),
                    purpose=str(data.get("purpose", "")),
                    prediction_id=data.get("prediction_id"),
                    acquired_at=data.get("acquired_at"),
                    orphaned=lease_id in orphaned,
                    adopted_by=data.get("adopted_by"),
                )
            )
        waiters = []
        live_waiters = [_s(raw) for raw in replies[7] if qexp.get(_s(raw), 0) > now_ms]
        for position, waiter_id in enumerate(live_waiters, start=1):
            data = _json(qinfo.get(waiter_id))
            waiters.append(
                WaiterView(
                    position=position,
                    waiter_id=waiter_id,
                    replica=str(data.get("replica", "")),
                    waiting_since=data.get("since"),
                    expires_in_s=round((qexp.get(waiter_id, now_ms) - now_ms) / 1000, 3),
                )
            )
        counters = {k: int(v) for k, v in _decode_map(replies[10]).items()}
        return SemaphoreView(
            semaphore_id=view.semaphore_id,
            limit=view.limit,
            in_use=view.in_use,
            waiting=view.waiting,
            grace_remaining_s=view.grace_remaining_s,
            orphans=view.orphans,
            holders=holders,
            waiters=waiters,
            counters=counters,
        )


def _s(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _decode_map(raw: dict[Any, Any]) -> dict[str, str]:
    return {_s(k): _s(v) for k, v in raw.items()}


def _json(text: str | None) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
