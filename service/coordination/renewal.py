"""Background renewal of every lease this process holds, and detection of a Redis data loss.

Every TTL/3 the renewer makes one renew_leases call per semaphore (all of this replica's leases
on it at once). A lease that Redis no longer has is marked lost (its holder is told and must stop
using the slot); it is never silently re-added, except when Redis lost its data, where the
semaphore comes back with a grace period and old holders re-assert their leases (a pinned one
with what is left of its pin, by this process's monotonic clock).

A lease granted by a release lapses with its waiter's queue entry when that comes first (so a
grant to a dead waiter frees its slot as soon as the waiter's place in the queue would have):
the renewer brings it to a full TTL soon after the grant, within TTL/10 (or a quarter of what
the grant has left, if sooner), in one renew_leases call per semaphore for every lease that came
due together. Most short holds are released before then and need no call at all. A grant of a
pinned lease is renewed at once instead, before its waiter uses it (Semaphores._complete_grant):
that renewal confirms it and pins it (a grant is never pinned when it is made). Every renewal
sends what is left of each lease's pin; the script pins only a lease that has no pin yet.

A data loss is seen per node: each semaphore notices in its scripts that the node serving it
changed (a restart, a failover) and opens a grace in which its holders re-assert what the node
forgot; `check_epoch` reads every node's tag and youth for the semaphores that are gone
(nodes.py). The epoch key, a random token set once beside the nodes' registry, is the last
resort: if it vanishes or changes (its node lost it, or an operator flushed Redis), this
process suspects every semaphore for one TTL. Either way it re-creates the declared
semaphores, with the grace their node needs.
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

from service.aio import stop_task

from .book import LeaseBook
from .errors import CoordinationError, CoordinationUnavailable
from .keys import KeySpace
from .lease import LOST_REASONS, UNRENEWED, Lease
from .nodes import NodeWatch
from .redis_errors import guarded
from .script_calls import LeaseToRenew, RenewCode, ScriptCalls
from .scripts import Scripts

log = logging.getLogger("service.coordination.renewal")


class Renewer:
    """Renews what the `book` holds (which it shares with Semaphores), strikes out what it
    loses, and records in it a suspected data loss."""

    def __init__(
        self,
        *,
        scripts: Scripts,
        keyspace: KeySpace,
        book: LeaseBook,
        nodes: NodeWatch,
        on_data_loss: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self._calls = ScriptCalls(scripts, keyspace)
        self._keyspace = keyspace
        self._book = book
        self._nodes = nodes
        self._on_data_loss = on_data_loss
        self._task: asyncio.Task[None] | None = None
        self._soon_task: asyncio.Task[None] | None = None
        self._epoch_check: asyncio.Task[None] | None = None
        self._soon: dict[str, Lease] = {}
        self._soon_due = math.inf
        self._soon_changed = asyncio.Event()
        self.epoch: str | None = None
        self.last_epoch_check = float("-inf")
        self.data_losses_seen = 0
        self.node_changes_seen = 0
        self.lost_total = 0

    @property
    def interval_s(self) -> float:
        return self._book.lease_ttl_s / 3

    async def start(self) -> None:
        with contextlib.suppress(CoordinationUnavailable):
            await self.check_epoch()
        self._task = asyncio.create_task(self._run(), name="lease-renewer")
        self._soon_task = asyncio.create_task(self._run_soon(), name="grant-renewer")

    async def close(self) -> None:
        for task in (self._task, self._soon_task, self._epoch_check):
            if task is not None:
                await stop_task(task)
        self._task = self._soon_task = self._epoch_check = None

    async def _run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                # Epoch first, when it answers promptly: after a data loss, this tick's renewals
                # may re-create semaphores. One that takes longer (a node stopped or failing
                # over: it reads every primary) goes on beside the renewals, which must not
                # wait for it: each renewal's script checks its own node.
                epoch = self._epoch_check
                if epoch is None or epoch.done():
                    if epoch is not None and (error := _failure(epoch)) is not None:
                        log.warning("epoch check failed", extra={"error": type(error).__name__})
                    epoch = self._epoch_check = asyncio.ensure_future(self.check_epoch())
                    await asyncio.wait([epoch], timeout=min(1.0, self.interval_s / 2))
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
        for lease in list(self._book.held.values()):
            if lease.released or lease.lost.is_set() or lease.is_valid():
                continue
            self.lost_total += 1
            log.warning(
                "lease given up: not renewed in time",
                extra={"semaphore_id": lease.semaphore_id, "kind": lease.kind},
            )
            self._book.lost(lease, UNRENEWED)

    def renew_soon(self, lease: Lease) -> None:
        """Renew a lease granted with less than a full TTL, soon and together with others."""
        self._soon[lease.lease_id] = lease
        delay = min(self._book.lease_ttl_s / 10, lease.valid_s / 4)
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
        """Notice a node that lost data, or a store that is new (nodes.py, note_nodes.lua).

        Reads every primary's tag and uptime and notes them beside the epoch key, which holds
        a random token. A node whose tag this process had not seen restarted or failed over:
        the declared semaphores are ensured again (on that node they may be gone; each gets
        the grace its node needs). When the epoch itself changes, the node that holds it lost
        its data, or an operator emptied Redis: every semaphore is suspect for one TTL. (An
        operator who starts a deployment on a new store skips the start-up grace with
        `SET <prefix>:epoch new`: every node then is trusted.)
        """
        self.last_epoch_check = time.monotonic()
        noted, changed = await self._nodes.refresh(secrets.token_hex(8))
        lost = self.epoch is not None and noted.epoch != self.epoch
        if lost:
            self.data_losses_seen += 1
            self._book.suspect_all(self._book.lease_ttl_s)
            log.warning("Redis lost its data (epoch changed); holding new acquisitions for one TTL")
        if changed:
            self.node_changes_seen += len(changed)
            log.warning(
                "Redis node restarted or failed over; its semaphores hold new acquisitions "
                "for one TTL while their holders re-assert their leases",
                extra={"nodes": changed},
            )
        self.epoch = noted.epoch
        if (lost or changed) and self._on_data_loss is not None:
            # Not retried if it fails (a node still down): an acquire re-creates a declared
            # semaphore on demand, with the same grace.
            with contextlib.suppress(CoordinationUnavailable):
                await self._on_data_loss()

    async def refresh_epoch(self) -> None:
        """At most once a second, for callers about to create a semaphore."""
        if time.monotonic() - self.last_epoch_check >= 1.0:
            await self.check_epoch()

    async def renew_all(self) -> None:
        groups: dict[tuple[str, str], list[Lease]] = defaultdict(list)
        for lease in list(self._book.held.values()):
            if not lease.released and not lease.lost.is_set():
                groups[(lease.kind, lease.semaphore_id)].append(lease)
        if groups:
            await asyncio.gather(*(self.renew_group(leases) for leases in groups.values()))

    async def renew_group(self, leases: list[Lease]) -> None:
        first = leases[0]
        # A missing semaphore is re-created if its node lost it (the script sees the leases'
        # epochs began on another node), or whenever this process suspects a loss there;
        # otherwise it was deleted and its leases are lost.
        sent_at = time.monotonic()
        suspected = sent_at < self._book.suspected_until(first.kind, first.semaphore_id)
        sent = [
            # A lease this process no longer trusts (not renewed in time: it stalled) may be
            # renewed if Redis still has it, never re-asserted ('').
            LeaseToRenew(
                lease.lease_id,
                lease.epoch if lease.is_valid() else "",
                lease.holder.to_json(),
                lease.pin_left_ms(),
            )
            for lease in leases
        ]
        renewal = await guarded(
            self._calls.renew_leases(
                first.semaphore_id,
                first.kind,
                ttl_ms=self._book.lease_ttl_ms,
                leases=sent,
                recreate_limit=first.limit,
                grace_ms=self._book.lease_ttl_ms,
                keys_ttl_ms=first.keys_ttl_ms,
                recreate_always=suspected,
            )
        )
        outdated: list[Lease] = []
        for lease, asked, code in zip(leases, sent, renewal.codes, strict=True):
            if code == RenewCode.REASSERTED and lease.holder.to_json() != asked.holder_json:
                outdated.append(lease)  # annotated meanwhile (abandoned too, maybe)
            if lease.released or lease.lost.is_set():
                continue  # released while the renewal was in flight (not lost, just gone), or
                # already reported lost by a concurrent renewal
            if not code.kept:
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
                self._book.lost(lease, reason)
            else:
                lease.renewed(renewal.expires_at_ms, renewal.epoch, sent_at)
        # A lease annotated (its prediction id, create_unknown) while this renewal was in flight
        # was re-asserted with its older record: that annotation may have run first, found no
        # lease and written nothing. Write it again.
        for lease in outdated:
            with contextlib.suppress(CoordinationError):
                await lease.annotate()


def _failure(task: asyncio.Task[None]) -> BaseException | None:
    """A finished task's exception (None if it succeeded or was cancelled)."""
    return None if task.cancelled() else task.exception()
