"""Registered global semaphores: create, read, list, change the limit, delete, inspect."""

from __future__ import annotations

import builtins
import re
from dataclasses import dataclass, field

from .connection import RedisClient
from .errors import InvalidLimit, SemaphoreExists, SemaphoreNotFound
from .keys import GLOBAL, KeySpace
from .redis_errors import guarded
from .script_calls import CreateOutcome, ReleaseOutcome, ScriptCalls, text
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
    holders: list[HolderView] = field(default_factory=list)  # with detail only
    waiters: list[WaiterView] = field(default_factory=list)  # with detail only
    counters: dict[str, int] = field(default_factory=dict)


_GLOB_SPECIAL = re.compile(r"([*?\[\]\\])")


def check_limit(limit: object) -> int:
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise InvalidLimit(limit)
    return limit


class SemaphoreRegistry:
    def __init__(self, *, client: RedisClient, scripts: Scripts, keyspace: KeySpace) -> None:
        self._client = client
        self._calls = ScriptCalls(scripts, keyspace)
        self._keyspace = keyspace

    async def create(self, semaphore_id: str, limit: int) -> None:
        outcome = await guarded(
            self._calls.create_semaphore(semaphore_id, limit=check_limit(limit), mode="create")
        )
        await guarded(self._client.sadd(self._keyspace.registry, semaphore_id))
        if outcome == CreateOutcome.EXISTED:
            raise SemaphoreExists(semaphore_id)

    async def ensure(self, semaphore_id: str, limit: int, grace_ms: int = 0) -> bool:
        """Create, or set the limit of, a declared semaphore. True if it was (re)created; a
        re-creation after a data loss gets `grace_ms` before its first acquisition."""
        outcome = await guarded(
            self._calls.create_semaphore(
                semaphore_id, limit=check_limit(limit), mode="ensure", grace_ms=grace_ms
            )
        )
        await guarded(self._client.sadd(self._keyspace.registry, semaphore_id))
        return outcome == CreateOutcome.CREATED

    async def exists(self, semaphore_id: str) -> bool:
        keys = self._keyspace.semaphore(semaphore_id, GLOBAL)
        return bool(await guarded(self._client.exists(keys.meta)))

    async def list(self) -> list[str]:
        """Registered ids, sorted. Ids whose semaphore is gone are dropped from the index."""
        raw = await guarded(self._client.smembers(self._keyspace.registry))
        ids = sorted(text(m) for m in raw)
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

    async def scan(self, kind: str) -> builtins.list[str]:
        """Ids of every semaphore of `kind` that exists, sorted: found with SCAN in pages (never
        KEYS), on every primary of a Cluster. For kinds created on demand, which no index
        lists (a semaphore created with a keys TTL exists until its keys expire)."""
        template = self._keyspace.semaphore("\0", kind).meta
        head, _, tail = template.partition("\0")
        pattern = _GLOB_SPECIAL.sub(r"\\\1", head) + "*" + _GLOB_SPECIAL.sub(r"\\\1", tail)
        found: set[str] = set()

        async def scan() -> None:
            # scan_iter follows one server's cursor, or on a Cluster each primary's own cursor
            # in turn (a Cluster's cursors are per node: one integer cursor would cover one node).
            async for raw in self._client.scan_iter(match=pattern, count=1000):
                name = text(raw)
                if name.startswith(head) and name.endswith(tail):
                    found.add(name[len(head) : len(name) - len(tail)])

        await guarded(scan())
        return sorted(found)

    async def set_limit(self, semaphore_id: str, limit: int) -> int:
        """The previous limit."""
        previous = await guarded(self._calls.set_limit(semaphore_id, limit=check_limit(limit)))
        if previous is None:
            raise SemaphoreNotFound(semaphore_id)
        return previous

    async def delete(self, semaphore_id: str) -> None:
        """Remove the semaphore, its holders, queue and counters. Waiters are woken and fail
        with not found; each holder's next renewal reports its lease lost (the renewal only
        re-creates a missing semaphore while its replica suspects a Redis data loss). A
        semaphore declared in a replica's configuration comes back on that replica's next
        acquire: the service refuses to delete those (service.api.semaphores)."""
        existed = await guarded(self._calls.delete_semaphore(semaphore_id))
        await guarded(self._client.srem(self._keyspace.registry, semaphore_id))
        if not existed:
            raise SemaphoreNotFound(semaphore_id)

    async def force_release(self, semaphore_id: str, lease_id: str, kind: str = GLOBAL) -> bool:
        """Operator action: free a slot whose holder is stuck. Its holder learns at next renewal.

        Counts `force_released` when a live lease (or a queue entry) was removed; the holder's
        next renewal then counts `lost` as well."""
        released = await guarded(
            self._calls.release_slot(
                semaphore_id, kind, lease_id=lease_id, counter="force_released"
            )
        )
        return released.outcome == ReleaseOutcome.SLOT

    async def view(
        self, semaphore_id: str, kind: str = GLOBAL, detail: bool = False
    ) -> SemaphoreView:
        """The semaphore as of one moment of Redis' clock (read_semaphore.lua: one read-only
        script, so also on Redis Cluster, which refuses TIME inside MULTI). Expired holders and
        waiters not yet purged are left out; the counts are counted in Redis (what metrics
        need). `detail` adds the holders and the first 100 waiters."""
        reading = await guarded(self._calls.read_semaphore(semaphore_id, kind, detail=detail))
        if reading is None:
            raise SemaphoreNotFound(semaphore_id)
        now_ms = reading.now_ms
        holders = [
            HolderView(
                lease_id=row.lease_id,
                expires_in_s=round((row.expires_at_ms - now_ms) / 1000, 3),
                replica=str(row.record.get("replica", "")),
                purpose=str(row.record.get("purpose", "")),
                prediction_id=row.record.get("prediction_id"),
                acquired_at=row.record.get("acquired_at"),
                orphaned=row.orphaned,
                adopted_by=row.record.get("adopted_by"),
            )
            for row in reading.holders
        ]
        waiters = [
            WaiterView(
                position=position,
                waiter_id=row.waiter_id,
                replica=str(row.record.get("replica", "")),
                waiting_since=row.record.get("since"),
                expires_in_s=round((row.entry_expires_at_ms - now_ms) / 1000, 3),
            )
            for position, row in enumerate(reading.waiters, start=1)
        ]
        return SemaphoreView(
            semaphore_id=semaphore_id,
            limit=reading.limit,
            in_use=reading.in_use,
            waiting=reading.waiting,
            grace_remaining_s=max(0.0, reading.grace_until_ms - now_ms) / 1000,
            orphans=reading.orphans,
            holders=holders,
            waiters=waiters,
            counters=reading.counters,
        )
