"""Background renewal of every lease this process holds, and detection of a Redis data loss.

Every TTL/3 the renewer makes one renew_leases call per semaphore (all of this replica's leases
on it at once). A lease that Redis no longer has is marked lost (its holder is told and must stop
using the slot); it is never silently re-added, except when Redis lost its data, where the
semaphore comes back with a grace period and old holders re-assert their leases.

A lease granted by a release lapses with its waiter's queue entry when that comes first (so a
grant to a dead waiter frees its slot as soon as the waiter's place in the queue would have):
the renewer brings it to a full TTL soon after the grant, within TTL/10 (or a quarter of what
the grant has left, if sooner), in one renew_leases call per semaphore for every lease that came
due together. Most short holds are released before then and need no call at all.

Data loss is also seen through the epoch key: a random token set once; if it vanishes or
changes, this process suspects every semaphore for one TTL (new acquisitions that recreate a
semaphore set a grace period), and re-creates the declared semaphores.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import secrets
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable

import redis.asyncio as aioredis
from redis import exceptions as redis_exceptions

from service.aio import stop_task

from .errors import CoordinationUnavailable
from .keys import KeySpace
from .lease import LOST_REASONS, UNRENEWED, Lease
from .redis_errors import guarded
from .script_calls import LeaseToRenew, ScriptCalls, text
from .scripts import Scripts
from .semaphore import Semaphores

log = logging.getLogger("service.coordination.renewal")


class Renewer:
    def __init__(
        self,
        *,
        client: aioredis.Redis,
        scripts: Scripts,
        keyspace: KeySpace,
        semaphores: Semaphores,
        on_data_loss: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._client = client
        self._calls = ScriptCalls(scripts, keyspace)
        self._keyspace = keyspace
        self._semaphores = semaphores
        self._on_data_loss = on_data_loss
        self._task: asyncio.Task[None] | None = None
        self._soon_task: asyncio.Task[None] | None = None
        self._soon: dict[str, Lease] = {}
        self._soon_due = math.inf
        self._soon_changed = asyncio.Event()
        self.epoch: str | None = None
        self.last_epoch_check = float("-inf")
        self.data_losses_seen = 0
        self.lost_total = 0
        self.on_lost: list[Callable[[Lease], None]] = []
        semaphores.renew_soon = self.renew_soon
        semaphores.renew_now = self.renew_now

    @property
    def interval_s(self) -> float:
        return self._semaphores.lease_ttl_s / 3

    async def start(self) -> None:
        with contextlib.suppress(CoordinationUnavailable):
            await self.check_epoch()
        self._task = asyncio.create_task(self._run(), name="lease-renewer")
        self._soon_task = asyncio.create_task(self._run_soon(), name="grant-renewer")

    async def close(self) -> None:
        for task in (self._task, self._soon_task):
            if task is not None:
                await stop_task(task)
        self._task = self._soon_task = None

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                # Epoch first: after a data loss, this tick's renewals may re-create semaphores.
                await self.check_epoch()
                await self.renew_all()
                delay = self.interval_s
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Leases stay valid locally only while renewals succeed (Lease.is_valid); retry
                # soon so a short Redis blip does not cost them.
                log.warning("lease renewal failed", extra={"error": type(exc).__name__})
                delay = min(1.0, self.interval_s)
            self.fence()
            await asyncio.sleep(max(0.0, delay - (time.monotonic() - started)))

    def fence(self) -> None:
        """Give up, locally, every lease whose last confirmed renewal is too old to trust (Redis
        unreachable, or this process stalled): its holder stops the work it guards (a
        generation cancels its prediction) before Redis could count the lease expired."""
        for lease in list(self._semaphores.held.values()):
            if lease.released or lease.lost.is_set() or lease.is_valid():
                continue
            self._semaphores.held.pop(lease.lease_id, None)
            self.lost_total += 1
            log.warning(
                "lease given up: not renewed in time",
                extra={"semaphore_id": lease.semaphore_id, "kind": lease.kind},
            )
            lease.mark_lost(UNRENEWED)
            for listener in self.on_lost:
                listener(lease)

    def renew_soon(self, lease: Lease) -> None:
        """Renew a lease granted with less than a full TTL, soon and together with others."""
        self._soon[lease.lease_id] = lease
        delay = min(self._semaphores.lease_ttl_s / 10, lease.valid_s / 4)
        due = time.monotonic() + delay
        if due < self._soon_due:
            self._soon_due = due
            self._soon_changed.set()

    async def renew_now(self, lease: Lease) -> None:
        await self.renew_group([lease])

    async def _run_soon(self) -> None:
        while True:
            delay = self._soon_due - time.monotonic()
            if delay > 0:
                self._soon_changed.clear()
                with contextlib.suppress(TimeoutError):
                    timeout = None if math.isinf(delay) else delay
                    await asyncio.wait_for(self._soon_changed.wait(), timeout)
                continue
            batch = [
                lease
                for lease in self._soon.values()
                if not lease.released and not lease.lost.is_set()
            ]
            self._soon.clear()
            self._soon_due = math.inf
            groups: dict[tuple[str, str], list[Lease]] = defaultdict(list)
            for lease in batch:
                groups[(lease.kind, lease.semaphore_id)].append(lease)
            try:
                await asyncio.gather(*(self.renew_group(leases) for leases in groups.values()))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("granted lease renewal failed", extra={"error": type(exc).__name__})
                for lease in batch:
                    self._soon.setdefault(lease.lease_id, lease)
                retry = time.monotonic() + min(1.0, self.interval_s)
                self._soon_due = min(self._soon_due, retry)

    async def check_epoch(self) -> None:
        """Notice a Redis that lost its data, or is new.

        The epoch key holds a random token. When it changes, Redis lost its data while this
        process was running: every semaphore is suspect for one TTL. When this process is the
        one that sets it, the store is new: if Redis itself started less than one TTL ago it
        may have restarted empty under live holders, so a `fresh` key with the rest of that TTL
        tells every process to give re-created semaphores a grace period. (An operator who
        starts a deployment on a new Redis can skip the wait: `SET <prefix>:epoch any`.)
        """
        self.last_epoch_check = time.monotonic()
        token = secrets.token_hex(8)
        ttl_ms = self._semaphores.lease_ttl_ms
        pipe = self._client.pipeline(transaction=False)
        pipe.set(self._keyspace.epoch, token, nx=True)
        pipe.get(self._keyspace.epoch)
        pipe.pttl(self._keyspace.fresh)
        created, current_raw, fresh_ms = await guarded(pipe.execute())
        current = text(current_raw)
        if created:
            young_ms = ttl_ms - int(await self._uptime_s() * 1000)
            if young_ms > 0:
                await guarded(self._client.set(self._keyspace.fresh, "1", px=young_ms, nx=True))
                fresh_ms = young_ms
        if int(fresh_ms) > 0:
            self._suspect(int(fresh_ms) / 1000)
        if self.epoch is not None and current != self.epoch:
            self.data_losses_seen += 1
            self._suspect(self._semaphores.lease_ttl_s)
            log.warning("Redis lost its data (epoch changed); holding new acquisitions for one TTL")
            if self._on_data_loss is not None:
                await self._on_data_loss()
        self.epoch = current

    async def _uptime_s(self) -> float:
        """Redis' uptime; 0 (assume young: the safe side) where INFO is not available."""
        try:
            info = await guarded(self._client.info("server"))
            return float(info["uptime_in_seconds"])
        except (redis_exceptions.ResponseError, KeyError, ValueError):
            return 0.0

    def _suspect(self, seconds: float) -> None:
        until = time.monotonic() + seconds
        self._semaphores.loss_suspected_until = max(self._semaphores.loss_suspected_until, until)

    async def refresh_epoch(self) -> None:
        """At most once a second, for callers about to create a semaphore."""
        if time.monotonic() - self.last_epoch_check >= 1.0:
            await self.check_epoch()

    async def renew_all(self) -> None:
        groups: dict[tuple[str, str], list[Lease]] = defaultdict(list)
        for lease in list(self._semaphores.held.values()):
            if not lease.released and not lease.lost.is_set():
                groups[(lease.kind, lease.semaphore_id)].append(lease)
        if groups:
            await asyncio.gather(*(self.renew_group(leases) for leases in groups.values()))

    async def renew_group(self, leases: list[Lease]) -> None:
        first = leases[0]
        # Re-create a missing semaphore only when Redis lost data; otherwise it was deleted
        # and its leases are lost.
        suspected = time.monotonic() < self._semaphores.loss_suspected_until
        sent_at = time.monotonic()
        renewal = await guarded(
            self._calls.renew_leases(
                first.semaphore_id,
                first.kind,
                ttl_ms=self._semaphores.lease_ttl_ms,
                leases=[
                    LeaseToRenew(lease.lease_id, lease.epoch, lease.holder.to_json())
                    for lease in leases
                ],
                recreate_limit=first.limit if suspected else 0,
                grace_ms=self._semaphores.lease_ttl_ms,
                keys_ttl_ms=first.keys_ttl_ms,
            )
        )
        for lease, code in zip(leases, renewal.codes, strict=True):
            if lease.released or lease.lost.is_set():
                continue  # released while the renewal was in flight (not lost, just gone), or
                # already reported lost by a concurrent renewal
            if not code.kept:
                self._semaphores.held.pop(lease.lease_id, None)
                self.lost_total += 1
                reason = LOST_REASONS.get(code, UNRENEWED)
                log.warning(
                    "lease lost",
                    extra={
                        "semaphore_id": lease.semaphore_id,
                        "kind": lease.kind,
                        "lease_id": lease.lease_id,
                        "reason": reason,
                    },
                )
                lease.mark_lost(reason)
                for listener in self.on_lost:
                    listener(lease)
            else:
                lease.renewed(renewal.expires_at_ms, renewal.epoch, sent_at)
