"""Acquiring and releasing leased slots, with first-come-first-served waiting across replicas.

The grant protocol (this is its one description; wake.py, keys.py, redis_scripts/lib/
semaphore.lua and docs/redis-keys.md point here). Grant on release: a release gives the freed
slot straight to the queue head, in the same Lua script (grant_heads), and tells the head's
process; the waiter returns its lease on that message without a second call. A lease id is
"<random>-<process token>", and a grant goes to "<semaphore wake channel>:<token>", which only
that process subscribes to (WakeDispatcher: one pub/sub connection per process). A worked
timeline, limit 1, lease TTL 30 s, queue entry TTL 10 s (Redis time):

    t=0.000  A: acquire_slot  → free=1, queue empty  → A holds L1 until t=30
    t=0.100  B: acquire_slot(L2) → free=0            → B queued at position 1; its entry expires
                                                       at t=10.1 unless kept: B's process's
                                                       keeper calls keep_waiting for all its
                                                       waiters of the semaphore by t≈3.4 (queue
                                                       TTL/3) → t=13.4; B itself waits
    t=0.150  C: acquire_slot  → free=0               → C queued at position 2
    t=5.000  A: release_slot(L1) → free=1 → granted to the head: B leaves the queue and holds L2
             until t=13.4 (its entry's expiry, sooner than t+30); publishes
             "grant 5000 1 <epoch> L2:13400" on the wake channel + ":<B's process token>"
             (had B been in A's own process, the same message would come back in A's release
             reply instead, one hop sooner)
    t=5.001  B's process reads it and B returns its lease (expires_at t=13.4, epoch, limit 1);
             its Renewer renews L2 to a full TTL (30 s from then) within TTL/10 (3 s), in one
             call with every other lease granted to this process meanwhile
    t=5.002  D arrives: queue [C] not shorter than free=0 → queued behind C (no barging)

    If B's process had died at t=4, nobody renews L2: it lapses at t=13.4, exactly when B's
    queue entry would have, and the keeper of C's process, whose call never waits past the
    nearest lease expiry, purges it then and grants the slot to C (as a poll of C would).
    (Had B asked for a pinned lease, L2 would be pinned only once B confirmed it, by a renewal
    at t=5.001 before anything uses it: a grant nobody confirmed guards no work, so it is freed
    at its lapse, never orphaned. See _complete_grant.) If the message to B is lost, the next
    keep_waiting call of B's process (at t≈6.8) reports B no longer queued; B polls, finds the
    slot "already held" by L2 and extends it to a full TTL (pinned if B asked for a pin, as any
    admission). If A's replica had died instead, nobody releases: L1 expires at t=30, and the
    keeper call of B's process at t≈30 purges it and grants the slot to B (in its reply, for
    B's process).

So no waiter relies on a message: pub/sub can lose one (a dropped connection, a restart: after
a reconnect every local waiter re-checks once), a release reply can be lost (then every waiter
of the releasing process re-checks at once), and a lease that expires sends none. Every wait is
also bounded by a call that never sleeps past the nearest lease expiry or the end of a grace: the
keeper's (Semaphores._keep_waiting: one per process and semaphore with waiters, so N waiters
cost Redis one call per interval, not N), or, when the keeper's call fails, each waiter's own
poll, as the keeper wakes them all.
Any script that frees slots grants them the same way: release_slot (also an operator's
force-release), acquire_slot when it purged expired holders or raised an account's limit,
keep_waiting when it purged expired holders or a grace ended, set_limit and create_semaphore
("ensure") when they raise a limit. A delete publishes the waiters' ids on the wake channel
itself: each re-checks and learns the semaphore is gone (a keeper's next call also reports
them all gone).

Every acquire has a random lease id chosen before the first call, so a cancelled or failed
acquire can always clean up after itself (release_slot removes the id from holders and queue,
whichever it is in; a slot granted to it meanwhile goes on to the next head) without knowing
whether its last call reached Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from service.aio import Background, shielded

from .book import LeaseBook
from .book import LeaseListener as LeaseListener  # re-exported
from .errors import AcquireTimeout, CoordinationUnavailable, SemaphoreNotFound
from .keys import GLOBAL, KeySpace
from .lease import Holder, Lease
from .redis_errors import guarded
from .renewal import Renewer
from .script_calls import Admitted, Missing, ReleaseOutcome, ScriptCalls
from .script_calls import WindowAsk as WindowAsk  # AcquireOptions.window; re-exported
from .scripts import Scripts
from .wake import Grant, Wake, WakeDispatcher

log = logging.getLogger("service.coordination.semaphore")

CLOSING = "this process is shutting down its coordination (Coordinator.close)"
CLOSE_WAIT_S = 10.0  # longest close() waits for the failing acquires to clean up
# A grant read later than this share of its validity after Redis made it (by this host's clock
# against Redis TIME) is confirmed by a renewal before it is handed over. Half of the 10 % margin
# Lease.is_valid keeps; the other half covers clock skew between this host and Redis.
GRANT_LATE_SHARE = 0.05


def grant_is_late(grant: Grant, now_s: float) -> bool:
    """Whether a grant was read too late to trust its validity without asking Redis."""
    return now_s - grant.granted_at_ms / 1000 > grant.valid_s * GRANT_LATE_SHARE


@dataclass(frozen=True)
class AcquireOptions:
    """How one acquisition behaves. `create_limit` > 0 creates the semaphore on first use (a
    kind created on demand, or a declared one); 0 means it must have been registered."""

    timeout_s: float
    kind: str = GLOBAL
    create_limit: int = 0
    keys_ttl_ms: int = 0
    scope: str = "semaphore"
    # Also take one entry of this window (same hash tag as the semaphore) whenever acquire_slot
    # itself admits the caller: its first use of the slot then needs no call of its own for it.
    window: WindowAsk | None = None
    # The lease guards work that may go on elsewhere until this long after admission (a
    # prediction at Replicate): expired unrenewed before then, it is orphaned, not freed.
    pin_ms: int = 0


@dataclass(frozen=True)
class Orphan:
    """An orphaned slot this process adopted: `lease` is now its own (renewed, to be released
    once the work it guards is known finished); `record` is what its first holder wrote."""

    lease: Lease
    previous_lease_id: str
    record: dict[str, Any]
    pin_in_s: float  # until the work cannot be running any more
    orphaned_for_s: float


@dataclass(eq=False)
class _Keeper:
    """This process's waiters of one semaphore, kept in its queue by one background task
    (Semaphores._keep_waiting) with one keep_waiting call per interval for all of them."""

    waiters: dict[str, Wake] = field(default_factory=dict)  # waiter id -> its wake-up
    keys_ttl_ms: int = 0
    due: float = 0.0  # monotonic time of the next call
    changed: Wake = field(default_factory=Wake)  # a waiter came with an earlier due, or left


class Semaphores:
    """Acquires, adopts and releases slots; enters what it holds in the `book` it shares with
    the `renewer`, which brings a slot granted by a release to a full TTL.

    Waiting: a waiter polls acquire_slot when it starts, when it is woken (a grant or wake
    message, a reconnect, a lost release reply) and when its keeper says it is no longer queued;
    in between, its queue entry is kept alive by its process's keeper of that semaphore: one
    task per (kind, semaphore) with waiters here, started by the first, ending with the last,
    which calls keep_waiting for all of them at the hint (queue TTL / 3, or the nearest lease
    expiry or grace end, when that call grants the freed slots to the heads as a poll would).
    So Redis sees one call per process and semaphore per interval, not one per waiter. A
    keeper whose call fails logs it and wakes its waiters, which poll on their own meanwhile."""

    def __init__(
        self,
        *,
        scripts: Scripts,
        keyspace: KeySpace,
        dispatcher: WakeDispatcher,
        replica_id: str,
        queue_entry_ttl_s: float,
        book: LeaseBook,
        renewer: Renewer,
    ) -> None:
        self._calls = ScriptCalls(scripts, keyspace)
        self._keyspace = keyspace
        self._dispatcher = dispatcher
        self._replica_id = replica_id
        self._queue_entry_ttl_ms = int(queue_entry_ttl_s * 1000)
        self._book = book
        self._renewer = renewer
        self._keepers: dict[tuple[str, str], _Keeper] = {}
        self._keeper_tasks = Background("semaphore-keepers")
        self.keepalive_calls = 0  # keep_waiting calls made (answered or not)
        self.keepalive_failures = 0
        # Once closing, no acquire starts, a waiting one fails (close wakes it), and no keeper
        # starts: nothing this process no longer renews can be handed out after close().
        self._closing = False
        self._acquiring = 0
        self._none_acquiring = asyncio.Event()
        self._none_acquiring.set()

    @property
    def lease_ttl_s(self) -> float:
        return self._book.lease_ttl_s

    @property
    def lease_ttl_ms(self) -> int:
        return self._book.lease_ttl_ms

    async def _first_use_grace(self, kind: str, semaphore_id: str) -> int:
        if not self._book.is_known(kind, semaphore_id):
            # Re-read the epoch before this process first uses a semaphore, so that one it
            # creates right after an unnoticed Redis restart still gets its grace. Unreachable
            # (the node holding the epoch is down): the tags known so far stand; a creation on
            # a node whose tag is stale gets a full TTL (acquire_slot.lua).
            with contextlib.suppress(CoordinationUnavailable):
                await self._renewer.refresh_epoch()
        return self._book.grace_ms_for(kind, semaphore_id)

    async def acquire(
        self, semaphore_id: str, options: AcquireOptions, holder: Holder | None = None
    ) -> Lease:
        if self._closing:
            raise CoordinationUnavailable(CLOSING)
        self._acquiring += 1
        self._none_acquiring.clear()
        try:
            return await self._acquire(semaphore_id, options, holder)
        finally:
            self._acquiring -= 1
            if self._acquiring == 0:
                self._none_acquiring.set()

    async def _acquire(
        self, semaphore_id: str, options: AcquireOptions, holder: Holder | None
    ) -> Lease:
        stamped: Holder = holder or Holder(replica=self._replica_id)
        lease_id = self._dispatcher.new_waiter_id()
        wake = self._dispatcher.register(lease_id)
        started = time.monotonic()
        deadline = started + options.timeout_s
        waiting_since = time.time()
        queue = options.timeout_s > 0
        # What Redis keeps of the holder, but for `acquired_at`, which each attempt stamps.
        holder_json = stamped.to_json(acquired_at=False)
        window_entry_id = secrets.token_hex(8)
        acquired = False
        kept = False  # queued, and kept in the queue by this process's keeper

        def lease_of(expires_at_ms: int, epoch: str, limit: int, valid_s: float | None) -> Lease:
            return Lease(
                owner=self,
                semaphore_id=semaphore_id,
                kind=options.kind,
                lease_id=lease_id,
                expires_at_ms=expires_at_ms,
                epoch=epoch,
                limit=limit,
                ttl_s=self.lease_ttl_s,
                holder=stamped,
                keys_ttl_ms=options.keys_ttl_ms,
                valid_s=valid_s,
                # Counted from now, when this process learned of its admission or grant: Redis
                # pinned an admission just before; a grant is pinned by its confirmation
                # (_complete_grant) for what is left of this, from when Redis runs it.
                pin_s=options.pin_ms / 1000,
            )

        try:
            grace_ms = await self._first_use_grace(options.kind, semaphore_id)
            while True:
                if self._closing:  # woken by close(): a grant that came meanwhile goes back
                    raise CoordinationUnavailable(CLOSING)
                grant = self._dispatcher.take_grant(lease_id)
                if grant is not None:
                    # A cancellation may have come with the wake-up; no Redis call follows
                    # (guarded() would catch it), so check here: a cancelled acquire must never
                    # hand back a lease.
                    task = asyncio.current_task()
                    if task is not None and task.cancelling():
                        raise asyncio.CancelledError
                    # A release gave us the slot; Redis stamped the holder with the grant time.
                    stamped = dataclasses.replace(stamped, acquired_at=grant.granted_at_ms / 1000)
                    # Built now that this process learned of the grant: its pin counts from here.
                    lease = lease_of(grant.expires_at_ms, grant.epoch, grant.limit, grant.valid_s)
                    # A pinned grant is confirmed (and pinned) before it is handed over; so is
                    # one read late (this process was frozen, or its loop stalled, after Redis
                    # made it): its lapse may have freed it for another holder meanwhile, and
                    # the lease's local clock starts only now (Lease.is_valid).
                    late = grant_is_late(grant, time.time())
                    if await self._complete_grant(lease, confirm=options.pin_ms > 0 or late):
                        acquired = True
                        return self._admitted(lease, started)
                    continue  # lost before it could be renewed: ask again
                wake.clear()
                # Each lease gets its own copy, stamped with the moment of this attempt (the one
                # that admits it is the one Redis keeps; a grant re-stamps it).
                stamped = dataclasses.replace(stamped, acquired_at=time.time())
                reply = await guarded(
                    self._calls.acquire_slot(
                        semaphore_id,
                        options.kind,
                        lease_id=lease_id,
                        ttl_ms=self.lease_ttl_ms,
                        pin_ms=options.pin_ms,
                        holder_json=holder_json,
                        acquired_at=stamped.acquired_at,
                        replica=self._replica_id,
                        waiting_since=waiting_since,
                        queue=queue,
                        queue_ttl_ms=self._queue_entry_ttl_ms,
                        create_limit=options.create_limit,
                        grace_ms=grace_ms,
                        node_hint=self._book.node_hint(options.kind, semaphore_id),
                        keys_ttl_ms=options.keys_ttl_ms,
                        window=options.window,
                        window_request_id=window_entry_id,
                    )
                )
                if isinstance(reply, Missing):
                    raise SemaphoreNotFound(semaphore_id)
                # Known from now on (grace_ms_for): remembered once Redis has the semaphore, not
                # before, so that concurrent first uses in this process all ask for the same
                # grace (one remembered before another's creation reached Redis asked for a
                # full TTL on a store nothing had lost).
                self._book.remember(options.kind, semaphore_id)
                if reply.orphans > 0:
                    self._book.orphans_seen(options.kind, semaphore_id)
                if isinstance(reply, Admitted):
                    # Admitted, or granted earlier (then extended to a full TTL by this call):
                    # a grant message still on its way is stale.
                    self._dispatcher.take_grant(lease_id)
                    lease = lease_of(reply.expires_at_ms, reply.epoch, reply.limit, None)
                    lease.window_entry = reply.window_entry
                    lease.window_entry_id = window_entry_id if reply.window_entry else None
                    lease.window_wait_s = reply.window_wait_ms / 1000
                    acquired = True
                    return self._admitted(lease, started)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AcquireTimeout(
                        scope=options.scope,
                        limit_id=semaphore_id,
                        limit=reply.limit,
                        waited_s=time.monotonic() - started,
                        retry_after_s=max(1.0, reply.retry_hint_ms / 1000),
                        position=reply.position,
                    )
                if reply.position > 0:
                    # Queued: the keeper keeps the entry alive (and grants what expiry frees);
                    # this waiter waits for a wake-up, which may be the keeper's.
                    kept = (
                        self._keep(
                            options.kind,
                            semaphore_id,
                            lease_id,
                            wake,
                            hint_s=reply.retry_hint_ms / 1000,
                            keys_ttl_ms=options.keys_ttl_ms,
                        )
                        or kept
                    )
                await wake.wait(remaining if kept else min(reply.retry_hint_ms / 1000, remaining))
                # Should the semaphore vanish meanwhile, the next attempt re-creates it with
                # the grace known now (the node's tag may have changed since).
                grace_ms = self._book.grace_ms_for(options.kind, semaphore_id)
        except BaseException as exc:
            if not acquired and (queue or not isinstance(exc, AcquireTimeout)):
                # Also frees a slot granted to this id that it never took (or took too late).
                # (A try-once that found no slot never queued: nothing to clean up, and it did
                # not time out.)
                counter = "timed_out" if isinstance(exc, AcquireTimeout) else ""
                await shielded(self._release_id(semaphore_id, options.kind, lease_id, counter))
            raise
        finally:
            if kept:
                self._unkeep(options.kind, semaphore_id, lease_id)
            self._dispatcher.unregister(lease_id)

    def _keep(
        self,
        kind: str,
        semaphore_id: str,
        waiter_id: str,
        wake: Wake,
        *,
        hint_s: float,
        keys_ttl_ms: int,
    ) -> bool:
        """Have this process's keeper of the semaphore keep `waiter_id` queued, calling no later
        than `hint_s` from now (the hint of the waiter's last poll); start the keeper if none.
        False once closing (the waiter is woken and fails)."""
        if self._closing:
            return False
        key = (kind, semaphore_id)
        keeper = self._keepers.get(key)
        due = time.monotonic() + hint_s
        if keeper is None:
            keeper = self._keepers[key] = _Keeper(due=due)
            self._keeper_tasks.spawn(self._keep_waiting(kind, semaphore_id, keeper))
        keeper.waiters[waiter_id] = wake
        keeper.keys_ttl_ms = max(keeper.keys_ttl_ms, keys_ttl_ms)
        if due < keeper.due:
            keeper.due = due
            keeper.changed.set()
        return True

    def _unkeep(self, kind: str, semaphore_id: str, waiter_id: str) -> None:
        keeper = self._keepers.get((kind, semaphore_id))
        if keeper is None:
            return
        keeper.waiters.pop(waiter_id, None)
        if not keeper.waiters:
            keeper.changed.set()  # the last one left: the keeper ends now

    async def _keep_waiting(self, kind: str, semaphore_id: str, keeper: _Keeper) -> None:
        """The keeper's task: keep_waiting for all its waiters at the hint, until none is left.
        Grants it made to them are handed to the dispatcher; the ids no longer queued (granted,
        dropped) are woken to poll. A failed call is logged and its waiters poll on their own
        (a Redis that is down fails their acquires, as their own polls would have)."""
        fallback_s = self._queue_entry_ttl_ms / 3000
        try:
            while keeper.waiters:
                delay = keeper.due - time.monotonic()
                if delay > 0:
                    keeper.changed.clear()
                    await keeper.changed.wait(delay)
                    continue
                ids = list(keeper.waiters)
                started = time.monotonic()
                keeper.due = started + fallback_s  # a waiter may bring it forward meanwhile
                self.keepalive_calls += 1
                try:
                    reply = await guarded(
                        self._calls.keep_waiting(
                            semaphore_id,
                            kind,
                            waiter_ids=ids,
                            queue_ttl_ms=self._queue_entry_ttl_ms,
                            local_token=self._dispatcher.token,
                            keys_ttl_ms=keeper.keys_ttl_ms,
                        )
                    )
                except Exception as exc:
                    self.keepalive_failures += 1
                    log.warning(
                        "keeping waiters queued failed; they poll on their own",
                        extra={
                            "semaphore": semaphore_id,
                            "kind": kind,
                            "waiters": len(ids),
                            "error": f"{type(exc).__name__}: {exc}",
                        },
                    )
                    self._wake(keeper, ids)
                    continue
                keeper.due = min(keeper.due, started + reply.retry_hint_ms / 1000)
                if reply.orphans > 0:
                    # As an acquire's poll would: orphans wait for a replica to adopt them (the
                    # slot a waiter here waits for may be one).
                    self._book.orphans_seen(kind, semaphore_id)
                if reply.local_grants:
                    self._dispatcher.handle(reply.local_grants, local=True)
                self._wake(keeper, reply.gone)
        finally:
            if self._keepers.get((kind, semaphore_id)) is keeper:
                del self._keepers[(kind, semaphore_id)]
            # Stopped with waiters left (cancelled, or a bug): they poll, and start a new one.
            self._wake(keeper, list(keeper.waiters))

    @staticmethod
    def _wake(keeper: _Keeper, ids: Sequence[str]) -> None:
        for waiter_id in ids:
            wake = keeper.waiters.get(waiter_id)
            if wake is not None:
                wake.set()

    def _admitted(self, lease: Lease, started: float) -> Lease:
        self._book.acquired(lease, time.monotonic() - started)
        return lease

    async def _complete_grant(self, lease: Lease, *, confirm: bool = False) -> bool:
        """A grant lapses with the waiter's queue entry when that comes before one TTL: renew
        it to a full TTL. In the background for this process's own leases; before handing it
        over for a detached one (its client renews on its own, by the TTL it is told). False
        if the lease turned out lost meanwhile.

        `confirm` (a pinned lease: work that may outlive this process follows at once): renew
        before handing it over, whatever the message said. This renewal is also what pins the
        grant: grant_heads (redis_scripts/lib/semaphore.lua) grants it unpinned, and
        renew_leases pins it (ZADD NX) for `lease.pin_left_ms()`, counted from when this process
        learned of the grant. So a grant whose waiter never confirms it (its process died with
        its place in the queue) guards no work and is freed at its lapse like any unpinned
        lease, not orphaned and held until an adopter settles it; no create can follow a grant
        that was not confirmed. The renewal is also the atomic check that the grant is still
        ours: a message read late (this process was frozen while it waited) may name a grant
        that lapsed and was freed, or freed and granted again, meanwhile; that renewal then
        finds it lost. The caller also confirms an unpinned grant read late (grant_is_late):
        handed over unconfirmed, it could be held here and by its next holder at once.
        (A waiter that learns of its grant by its own poll instead takes it in acquire_slot,
        which pins it as it does any admission.)"""
        if confirm:
            await self._renewer.renew_now(lease)
            return not lease.lost.is_set()
        if lease.valid_s >= lease.ttl_s:
            return True
        if not lease.holder.detached:
            self._renewer.renew_soon(lease)
            return True
        await self._renewer.renew_now(lease)
        return not lease.lost.is_set()

    async def close(self) -> None:
        """Fail every acquire still waiting (each gives its place, or a slot granted to it
        meanwhile, back on its way out), refuse new ones, then stop the keepers. Call before
        this process's leases are released, so that none of their slots is granted to a waiter
        here that nobody would renew."""
        self._closing = True
        self._dispatcher.wake_all()
        with contextlib.suppress(TimeoutError):
            # Each failing acquire's cleanup is one release_slot call, bounded by its timeout.
            await asyncio.wait_for(self._none_acquiring.wait(), CLOSE_WAIT_S)
        await self._keeper_tasks.close()

    async def adopt(self, semaphore_id: str, kind: str, count: int) -> list[Orphan]:
        """Claim up to `count` orphans of a semaphore (adopt_orphans.lua): each becomes a lease
        of this process, renewed like its own, until its holder releases it."""
        adoption = await guarded(
            self._calls.adopt_orphans(
                semaphore_id,
                kind,
                ttl_ms=self.lease_ttl_ms,
                adopter=self._replica_id,
                new_ids=[self._dispatcher.new_waiter_id() for _ in range(count)],
            )
        )
        orphans: list[Orphan] = []
        for claimed in adoption.claimed:
            record = claimed.record
            pin_in_s = (claimed.pin_ms - adoption.now_ms) / 1000
            lease = Lease(
                owner=self,
                semaphore_id=semaphore_id,
                kind=kind,
                lease_id=claimed.lease_id,
                expires_at_ms=adoption.now_ms + self.lease_ttl_ms,
                epoch=adoption.epoch,
                limit=adoption.limit,
                ttl_s=self.lease_ttl_s,
                # What the next adopter needs, should this process die too (its account's
                # sealed token, the work), kept in the record it renews and may re-assert.
                holder=Holder(
                    replica=self._replica_id,
                    purpose=f"adopted: {record.get('purpose', '')}",
                    prediction_id=record.get("prediction_id"),
                    account=record.get("account"),
                    sealed_token=record.get("sealed_token"),
                    model=record.get("model"),
                    input=record.get("input"),
                    create_unknown=bool(record.get("create_unknown", False)),
                ),
                keys_ttl_ms=0,
                pin_s=pin_in_s,
            )
            self._book.adopted(lease)
            orphans.append(
                Orphan(
                    lease=lease,
                    previous_lease_id=claimed.previous_lease_id,
                    record=record,
                    pin_in_s=pin_in_s,
                    orphaned_for_s=max(0, adoption.now_ms - claimed.orphaned_at_ms) / 1000,
                )
            )
        return orphans

    def forget(self, lease: Lease) -> None:
        """Stop renewing a lease without releasing it (Lease.abandon)."""
        self._book.forget(lease)

    async def release(self, lease: Lease) -> bool:
        self._book.released(lease)
        return await self._release_id(lease.semaphore_id, lease.kind, lease.lease_id, "")

    async def _release_id(self, semaphore_id: str, kind: str, lease_id: str, counter: str) -> bool:
        # With this process's token, a slot granted to one of its own waiters comes back in the
        # reply rather than over pub/sub: the waiter gets it as soon as the releaser hears back.
        try:
            released = await guarded(
                self._calls.release_slot(
                    semaphore_id,
                    kind,
                    lease_id=lease_id,
                    counter=counter,
                    local_token=self._dispatcher.token,
                )
            )
        except BaseException:
            # The script may have run and granted a slot to a waiter here whose news was in the
            # lost reply: every local waiter re-checks now rather than at its next poll.
            self._dispatcher.wake_all()
            raise
        if released.local_grants:
            self._dispatcher.handle(released.local_grants, local=True)
        return released.outcome == ReleaseOutcome.SLOT

    async def annotate(self, lease: Lease) -> bool:
        return await guarded(
            self._calls.annotate_lease(
                lease.semaphore_id,
                lease.kind,
                lease_id=lease.lease_id,
                holder_json=lease.holder.to_json(),
            )
        )
