"""Acquiring and releasing leased slots, with first-come-first-served waiting across replicas.

A worked timeline, limit 1, lease TTL 30 s (times are Redis server time):

    t=0.000  A: acquire_slot  → free=1, queue empty  → A holds L1 until t=30
    t=0.100  B: acquire_slot  → free=0               → B queued at position 1, told to re-check
                                                       by t≈3.3 (queue TTL/3) or when woken
    t=0.150  C: acquire_slot  → free=0               → C queued at position 2
    t=5.000  A: release_slot(L1) → free=1; publishes "B" (the head) on the wake channel
    t=5.001  B's process gets the message, sets B's event; B: acquire_slot → rank 0 < free 1 → holds
    t=5.002  D arrives: queue [C] not shorter than free=0 → queued behind C (no barging)
    If A's replica had died instead, nobody publishes: L1 expires at t=30, and B's poll, which
    never sleeps past the nearest lease expiry, takes the slot at t≈30.

Every acquire has a random lease id chosen before the first call, so a cancelled or failed
acquire can always clean up after itself (release_slot removes the id from holders and queue,
whichever it is in) without knowing whether its last call reached Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .errors import AcquireTimeout, SemaphoreNotFound
from .keys import GLOBAL, KeySpace, SemaphoreKeys
from .lease import Holder, Lease, shielded
from .redis_errors import guarded
from .scripts import Scripts
from .wake import WakeDispatcher

KNOWN_FOR_S = 3600.0
KNOWN_MAX = 10_000

# Called with (lease, seconds waited) on acquire and release, for metrics; must not block.
LeaseListener = Callable[[Lease, float], None]


@dataclass(frozen=True)
class AcquireOptions:
    """How one acquisition behaves. `create_limit` > 0 creates the semaphore on first use (account
    semaphores); 0 means it must have been registered."""

    timeout_s: float
    kind: str = GLOBAL
    create_limit: int = 0
    keys_ttl_ms: int = 0
    scope: str = "semaphore"


class Semaphores:
    def __init__(
        self,
        *,
        scripts: Scripts,
        keyspace: KeySpace,
        dispatcher: WakeDispatcher,
        replica_id: str,
        lease_ttl_s: float,
        queue_entry_ttl_s: float,
    ) -> None:
        self._scripts = scripts
        self._keyspace = keyspace
        self._dispatcher = dispatcher
        self._replica_id = replica_id
        self.lease_ttl_s = lease_ttl_s
        self._queue_entry_ttl_ms = int(queue_entry_ttl_s * 1000)
        self.held: dict[str, Lease] = {}
        self.loss_suspected_until = 0.0
        # Semaphores this process used lately: if one of them is found missing, Redis lost it.
        self._known: OrderedDict[tuple[str, str], float] = OrderedDict()
        # Re-reads the epoch; awaited before this process first uses a semaphore, so that a
        # semaphore it creates right after an unnoticed Redis restart still gets its grace.
        self.refresh_epoch: Callable[[], Awaitable[None]] | None = None
        self.on_acquired: list[LeaseListener] = []
        self.on_released: list[LeaseListener] = []

    @property
    def lease_ttl_ms(self) -> int:
        return int(self.lease_ttl_s * 1000)

    def keys_for(self, lease: Lease) -> SemaphoreKeys:
        return self._keyspace.semaphore(lease.semaphore_id, lease.kind)

    def grace_ms_for(self, kind: str, semaphore_id: str) -> int:
        """Grace to set if this call finds the semaphore gone. Any hint that Redis lost data
        (the store is young and its epoch new, or this process used the semaphore within the
        hour, which is far less than the keys' TTL) means old holders may still run, so new
        acquisitions must wait one TTL while those re-assert their leases."""
        if time.monotonic() < self.loss_suspected_until:
            return self.lease_ttl_ms
        seen = self._known.get((kind, semaphore_id))
        if seen is not None and time.monotonic() - seen < KNOWN_FOR_S:
            return self.lease_ttl_ms
        return 0

    async def _grace_and_remember(self, kind: str, semaphore_id: str) -> int:
        key = (kind, semaphore_id)
        if key not in self._known and self.refresh_epoch is not None:
            await self.refresh_epoch()
        grace_ms = self.grace_ms_for(kind, semaphore_id)
        self._known[key] = time.monotonic()
        self._known.move_to_end(key)
        while len(self._known) > KNOWN_MAX:
            self._known.popitem(last=False)
        return grace_ms

    async def acquire(
        self, semaphore_id: str, options: AcquireOptions, holder: Holder | None = None
    ) -> Lease:
        keys = self._keyspace.semaphore(semaphore_id, options.kind)
        holder = holder or Holder(replica=self._replica_id)
        lease_id = secrets.token_hex(12)
        wake = self._dispatcher.register(lease_id)
        started = time.monotonic()
        deadline = started + options.timeout_s
        waiter_json = json.dumps({"replica": self._replica_id, "since": time.time()})
        queue = "1" if options.timeout_s > 0 else "0"
        acquired = False
        try:
            grace_ms = await self._grace_and_remember(options.kind, semaphore_id)
            while True:
                wake.clear()
                # Each lease gets its own copy, stamped with the moment of this attempt (the one
                # that admits it is the one Redis keeps).
                holder = dataclasses.replace(holder, acquired_at=time.time())
                reply = await guarded(
                    self._scripts.call(
                        "acquire_slot",
                        keys.all,
                        [
                            lease_id,
                            self.lease_ttl_ms,
                            holder.to_json(),
                            queue,
                            self._queue_entry_ttl_ms,
                            options.create_limit,
                            grace_ms,
                            options.keys_ttl_ms,
                            keys.channel,
                            waiter_json,
                        ],
                    )
                )
                status = int(reply[0])
                if status == -1:
                    raise SemaphoreNotFound(semaphore_id)
                if status == 1:
                    lease = Lease(
                        owner=self,
                        semaphore_id=semaphore_id,
                        kind=options.kind,
                        lease_id=lease_id,
                        expires_at_ms=int(reply[1]),
                        epoch=_text(reply[2]),
                        limit=int(reply[4]),
                        ttl_s=self.lease_ttl_s,
                        holder=holder,
                        keys_ttl_ms=options.keys_ttl_ms,
                    )
                    self.held[lease_id] = lease
                    acquired = True
                    for listener in self.on_acquired:
                        listener(lease, time.monotonic() - started)
                    return lease
                position, hint_ms, limit = int(reply[1]), int(reply[2]), int(reply[4])
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AcquireTimeout(
                        scope=options.scope,
                        limit_id=semaphore_id,
                        limit=limit,
                        waited_s=time.monotonic() - started,
                        retry_after_s=max(1.0, hint_ms / 1000),
                        position=position,
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), min(hint_ms / 1000, remaining))
        except BaseException as exc:
            if not acquired:
                counter = "timed_out" if isinstance(exc, AcquireTimeout) else ""
                await shielded(self._release_id(keys, lease_id, counter))
            raise
        finally:
            self._dispatcher.unregister(lease_id)

    async def release(self, lease: Lease) -> bool:
        self.held.pop(lease.lease_id, None)
        for listener in self.on_released:
            listener(lease, 0.0)
        return await self._release_id(self.keys_for(lease), lease.lease_id, "")

    async def _release_id(self, keys: SemaphoreKeys, lease_id: str, counter: str) -> bool:
        reply = await guarded(
            self._scripts.call("release_slot", keys.all, [lease_id, keys.channel, counter])
        )
        return int(reply) == 1

    async def annotate(self, lease: Lease) -> bool:
        keys = self.keys_for(lease)
        reply = await guarded(
            self._scripts.call(
                "annotate_lease",
                [keys.holders, keys.info],
                [lease.lease_id, lease.holder.to_json()],
            )
        )
        return int(reply) == 1


def _text(value: object) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
