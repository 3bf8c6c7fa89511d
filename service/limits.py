"""The limits on one prediction, taken so that a caller never holds a slot while it waits.

Three limits guard every create: the external semaphore the request names (shared with other
accounts and services), the account's concurrency semaphore and the account's sliding creation
window (both the caller's own). Waiting for one limit while holding another would keep the held
slot idle: a caller whose own window is full would block every other account queued on a
shared semaphore. So each wait is done holding nothing, and slots are only *tried* while
another is held:

    1. account slot + window entry   wait in the account's FIFO queue, holding nothing; the
                                     entry comes in the same script call when the window has
                                     room, else the slot is given back and we sleep the
                                     window's exact wait, holding nothing
    2. external slot, try once       holding 1: no queue, no wait (a try never barges: it
                                     succeeds only when nobody is queued ahead)
       → taken: go (the create follows at once, so the entry is where the create is)
    3. give 1 back (the entry too)   then wait in the external semaphore's FIFO queue,
                                     holding nothing
    4. account slot + entry, once    holding 3: taken → go; else give 3 back (to the next in
                                     its queue) and start again at 1

A worked timeline: account A may create 2 per minute and has used both; account B's window
is empty; S is a shared semaphore of limit 2.

    t=0   A1: 1 → window full for 59 s: A1 sleeps, holding nothing
    t=1   B1: 1 → slot + entry; 2 → S taken (1/2); creates
    t=2   B2: 1, 2 → S taken (2/2); creates
    t=59  A1: 1 → slot + entry; 2 → S full: 3 → gives both back, queues on S
    t=70  B1 done, releases S → granted to A1; 4 → account slot + entry; creates

The slots held at any moment are used at once; no deadlock cycle can form (nothing waits while
holding). A caller sent back to step 1 loses its place in S's queue, and only then: when it
could not have used the slot anyway. The one exception to "never wait holding" is a retry of
a create that Replicate refused (429, 5xx): its attempt has begun, so it waits for its
window entry keeping its slots (Slots.before_create).

`Limits.hold()` is how a prediction uses all this:

    async with limits.hold(account, semaphore_id, timeout_s=..., holder=...) as slots:
        return await slots.guard(upstream.run_prediction(..., before_create=slots.before_create))

`guard` cancels the run when a lease is lost (the prediction would otherwise run outside the
limit) and says so; the block's exit releases the slots, shielded from cancellation, unless the
run left a prediction that may still be running (`slots.leave_running()`): its slots are then
abandoned, to expire into orphans that a replica adopts and settles (docs/slot-ownership.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from service.aio import Background, cancel_and_wait, cancelling, shielded
from service.config import Settings
from service.coordination import (
    AcquireTimeout,
    AttachedWindow,
    CoordinationError,
    CoordinationUnavailable,
    Coordinator,
    Holder,
    Lease,
    WindowResult,
)
from service.coordination_errors import service_error
from service.errors import (
    PredictionFailed,
    UpstreamError,
)
from service.fingerprint import ACCOUNT
from service.grace import GraceWatch

log = logging.getLogger("service.limits")

T = TypeVar("T")

# A slot is pinned for PREDICTION_TIMEOUT_SECONDS (every create's Cancel-After is at most the
# time left of it) plus this: the create's travel, the skew between Redis' clock and
# Replicate's, and Replicate's own cancellation.
PIN_MARGIN_S = 30.0

# The account creation window's length (ACCOUNT_WINDOW_SECONDS): Replicate's 60 s, plus 1 s for
# skew between admission here and arrival upstream; shorter only for tests or an upstream that
# counts differently.
ACCOUNT_WINDOW_S = 61.0
# An account's semaphore is created on first use; its keys expire a day after their last use.
ACCOUNT_KEYS_TTL_S = 24 * 3600.0


class AccountLimits:
    """An account's own limits on the coordination library: its concurrency semaphore (kind
    ACCOUNT, id the account's fingerprint, created on first use) and its creation window, the
    window attached to that semaphore (so that one script call takes a slot and an entry)."""

    def __init__(self, coordinator: Coordinator, *, window_s: float = ACCOUNT_WINDOW_S) -> None:
        self._coordinator = coordinator
        self.window_s = window_s

    @staticmethod
    def window(account: str) -> AttachedWindow:
        """The account's creation window."""
        return AttachedWindow(account, ACCOUNT)

    async def acquire(
        self,
        account: str,
        *,
        limit: int,
        timeout_s: float,
        holder: Holder | None = None,
        limit_per_minute: int = 0,
        pin_s: float = 0.0,
    ) -> Lease:
        """A slot of the account's concurrency semaphore (created on first use with `limit`).

        With `limit_per_minute`, a slot that acquire_slot itself admits comes with one entry of
        the account's creation window, taken in the same call when the window has room: the
        lease's `window_entry` is then True, and the first create needs no `take_rate`. (A slot
        handed over by a release comes without one: the releaser cannot know when its new
        holder will use it.)"""
        return await self._coordinator.acquire(
            account,
            kind=ACCOUNT,
            create_limit=limit,
            keys_ttl_s=ACCOUNT_KEYS_TTL_S,
            timeout_s=timeout_s,
            holder=holder,
            pin_s=pin_s,
            window_limit=limit_per_minute,
            window_s=self.window_s,
            scope="account_concurrency",
        )

    async def take_rate(
        self, account: str, *, limit_per_minute: int, timeout_s: float
    ) -> WindowResult:
        """One prediction creation from the account's sliding window.

        The window is enforced where the token is taken, but Replicate counts where the create
        lands; requests admitted at the edges of a window can travel with different delays
        (queued behind other work, a slow connection), bringing two admissions that were 60 s
        apart here closer than 60 s there. One second of margin absorbs that skew."""
        return await self._coordinator.window.wait_take(
            self.window(account),
            limit_per_minute,
            timeout_s,
            window_s=self.window_s,
            limit_scope="account_rate",
            limit_id=account,
        )

    async def take_rate_once(self, account: str, *, limit_per_minute: int) -> WindowResult:
        """One try at the account's creation window: admitted with an entry, or the exact wait."""
        return await self._coordinator.window.take(
            self.window(account), limit_per_minute, self.window_s
        )

    async def give_back_rate(self, account: str, entry_id: str) -> None:
        """Return a creation-window entry whose create never happened."""
        await self._coordinator.window.give_back(self.window(account), entry_id)


@dataclass(frozen=True)
class Held:
    """The slots of one prediction; the account's lease carries the first create's entry."""

    leases: list[Lease]

    @property
    def account(self) -> Lease:
        return self.leases[-1]


class LeaseLostError(UpstreamError):
    """A slot was lost while its prediction ran: the prediction was cancelled (see Lease)."""

    def __init__(self, lease: Lease) -> None:
        which = (
            "the account's concurrency limit (REPLICATE_CONCURRENT_LIMIT)"
            if lease.kind == ACCOUNT
            else f"external semaphore '{lease.semaphore_id}'"
        )
        why = lease.why_invalid() or "it was lost"
        super().__init__(
            f"Lost the slot of {which}: {why}. The prediction was cancelled so that the limit "
            "holds; retry the request",
            fields={"limit_scope": "account_concurrency" if lease.kind == ACCOUNT else "semaphore"},
        )


class Slots:
    """The slots of one prediction inside `Limits.hold()`: what its run calls."""

    def __init__(self, limits: Limits, account: str, held: Held, deadline: float) -> None:
        self._limits = limits
        self._account = account
        self._deadline = deadline
        self.leases = held.leases
        self._creates = 0
        self.left_running = False
        self.create_unknown = False

    async def before_create(self) -> None:
        """Before every create: our leases still hold, and a window entry is ours (the first
        came with the account slot; a retried create waits for another, keeping its slots —
        its attempt has begun)."""
        self.check()
        self._creates += 1
        if self._creates == 1:
            return
        try:
            await self._limits.take_create_token(
                self._account, timeout_s=_remaining(self._deadline)
            )
        except CoordinationError as exc:
            raise service_error(exc) from exc
        self.check()

    def check(self) -> None:
        for lease in self.leases:
            if not lease.is_valid():
                raise LeaseLostError(lease)

    async def guard(
        self, work: Coroutine[Any, Any, T], *, ended: Callable[[], bool] = lambda: False
    ) -> T:
        """`work`'s result; cancelled (and awaited while it cancels its prediction upstream)
        as soon as a lease is lost, which raises LeaseLostError — unless `ended()` says its
        prediction was already seen terminal, under a lease still valid then: nothing runs
        upstream any more, and what is left of the work (a durable job recording the id, the
        result) goes on to its result."""
        run = asyncio.ensure_future(work)
        lost: list[Lease] = []

        def cancel_on_loss(lease: Lease) -> None:
            lost.append(lease)
            if not ended():
                run.cancel()

        for lease in self.leases:
            lease.on_lost(cancel_on_loss)
        try:
            return await asyncio.shield(run)
        except asyncio.CancelledError:
            if not run.done():  # we were cancelled: the run must clean up before we go on
                await cancel_and_wait(run)
            if lost and not cancelling():
                raise LeaseLostError(lost[0]) from None
            raise
        except PredictionFailed as exc:
            # Cancelled by another replica that took over our slot while we were stalled or
            # cut off (docs/slot-ownership.md): say that, not just "canceled".
            stale = lost or [lease for lease in self.leases if not lease.is_valid()]
            if exc.status == "canceled" and stale:
                raise LeaseLostError(stale[0]) from None
            raise

    async def annotate(self, prediction_id: str) -> None:
        """Record the prediction's id on the leases, off the critical path: operators see it,
        and an adopter cancels by it if this replica dies."""
        self._limits.background.spawn(_annotate(self.leases, prediction_id))

    def leave_running(self, *, create_unknown: bool = False) -> None:
        """A prediction may still be running (its cancel did not go through; or its create's
        answer never came: `create_unknown`): its slots must stay taken, not be released."""
        self.left_running = True
        self.create_unknown = self.create_unknown or create_unknown


class Limits:
    """Takes and gives back the three limits of one prediction (see the module timeline)."""

    def __init__(self, coordinator: Coordinator, settings: Settings) -> None:
        self._coordinator = coordinator
        self.accounts = AccountLimits(coordinator, window_s=settings.account_window_seconds)
        self._concurrent = settings.replicate_concurrent_limit
        self._per_minute = settings.replicate_requests_per_minute
        self._poll_budget = settings.poll_budget_per_minute
        # Each slot is pinned to its prediction's hard deadline (docs/slot-ownership.md).
        self._pin_s = settings.prediction_timeout_seconds + PIN_MARGIN_S
        self.background = Background("lease annotations")
        self.grace = GraceWatch(coordinator)  # says when the data-loss grace delays or refuses

    @contextlib.asynccontextmanager
    async def hold(
        self, account: str, semaphore_id: str | None, *, timeout_s: float, holder: Holder
    ) -> AsyncIterator[Slots]:
        """Every slot of one prediction for the block (see the module docstring)."""
        started = time.monotonic()
        deadline = started + timeout_s
        # The grace is read only if the acquisition waits (0 unless Redis looks new).
        probe = self.grace.probe(account, semaphore_id)
        try:
            held = await self.acquire(account, semaphore_id, timeout_s=timeout_s, holder=holder)
        except AcquireTimeout as exc:  # the data-loss grace's own answer, if it is the cause
            probe.cancel()
            raise (await self.grace.refusal(exc) or service_error(exc)) from exc
        except CoordinationError as exc:
            probe.cancel()
            raise service_error(exc) from exc
        except BaseException:
            probe.cancel()
            raise
        waited_s = time.monotonic() - started
        slots = Slots(self, account, held, deadline)
        try:
            grace_s = await probe.grace_s()  # in the try: cancelled here, the slots go back
            if grace_s > 0:
                self.grace.delayed(grace_s, waited_s, semaphore_id)
            yield slots
        finally:
            if slots.left_running:
                log.warning(
                    "prediction may still be running: its slots are left to adoption",
                    extra={"prediction_id": holder.prediction_id},
                )
                await _abandon(held, create_unknown=slots.create_unknown)
            else:
                await release(held)

    async def close(self) -> None:
        await self.background.close()

    async def acquire(
        self, account: str, semaphore_id: str | None, *, timeout_s: float, holder: Holder
    ) -> Held:
        started = time.monotonic()
        deadline = started + timeout_s
        while True:  # each pass ends holding every slot, or having given back what it held
            own = await self._account(account, holder, deadline, wait=True)
            assert own is not None
            if semaphore_id is None:
                return Held([own])
            shared = await self._holding(
                Held([own]), self._external(semaphore_id, holder, deadline, wait=False)
            )
            if shared is not None:
                return Held([shared, own])
            await self.give_back(Held([own]))
            shared = await self._external(semaphore_id, holder, deadline, wait=True)
            assert shared is not None
            own = await self._holding(
                Held([shared]), self._account(account, holder, deadline, wait=False)
            )
            if own is not None:
                return Held([shared, own])
            await release(Held([shared]))

    async def _holding(self, held: Held, attempt: Awaitable[Lease | None]) -> Lease | None:
        """`attempt`'s result; if it raises (or we are cancelled), `held` is given back first."""
        try:
            return await attempt
        except BaseException:
            await self.give_back(held)
            raise

    async def give_back(self, held: Held) -> None:
        """Release the slots and return the unused window entry (no create was made)."""
        entry = held.account.window_entry_id
        account = held.account.semaphore_id
        await release(held)
        if entry:
            with contextlib.suppress(CoordinationError):
                await self.accounts.give_back_rate(account, entry)

    async def take_create_token(self, account: str, *, timeout_s: float) -> None:
        """A window entry for a retried create (the attempt holds its slots meanwhile)."""
        await self.accounts.take_rate(
            account, limit_per_minute=self._per_minute, timeout_s=timeout_s
        )

    async def pace_poll(self, account: str) -> None:
        """Wait for the account's poll budget. Pacing slows polling down and never fails a
        prediction: without Redis, the poll goes ahead."""
        scope = f"acct-poll:{account}"
        with contextlib.suppress(CoordinationUnavailable):
            result = await self._coordinator.window.take(scope, self._poll_budget)
            while not result.admitted:
                await asyncio.sleep(result.wait_s + secrets.randbelow(20) / 1000)
                result = await self._coordinator.window.take(scope, self._poll_budget)

    async def _account(
        self, account: str, holder: Holder, deadline: float, *, wait: bool
    ) -> Lease | None:
        """An account slot with a window entry; None when `wait` is False and either is not
        free at once. Waits (when asked) holding nothing."""
        started = time.monotonic()
        while True:
            try:
                lease = await self.accounts.acquire(
                    account,
                    limit=self._concurrent,
                    timeout_s=_remaining(deadline) if wait else 0.0,
                    holder=holder,
                    limit_per_minute=self._per_minute,
                    pin_s=self._pin_s,
                )
            except AcquireTimeout:
                if wait:
                    raise
                return None
            if lease.window_entry:
                return lease
            wait_s = lease.window_wait_s
            if lease.window_wait_s <= 0:
                # Granted by a release, which cannot take an entry for us: try for one now.
                try:
                    result = await self.accounts.take_rate_once(
                        account, limit_per_minute=self._per_minute
                    )
                except BaseException:
                    await release(Held([lease]))
                    raise
                if result.admitted:
                    lease.window_entry = True
                    lease.window_entry_id = result.entry_id
                    return lease
                wait_s = result.wait_s
            await release(Held([lease]))
            if not wait:
                return None
            if wait_s > _remaining(deadline):
                raise AcquireTimeout(
                    scope="account_rate",
                    limit_id=account,
                    limit=self._per_minute,
                    waited_s=time.monotonic() - started,
                    retry_after_s=wait_s,
                )
            await asyncio.sleep(wait_s + secrets.randbelow(20) / 1000)

    async def _external(
        self, semaphore_id: str, holder: Holder, deadline: float, *, wait: bool
    ) -> Lease | None:
        try:
            return await self._coordinator.acquire(
                semaphore_id,
                timeout_s=_remaining(deadline) if wait else 0.0,
                holder=holder,
                pin_s=self._pin_s,
            )
        except AcquireTimeout:
            if wait:
                raise
            return None


async def release(held: Held) -> None:
    """Release every lease at once (one round trip of latency), shielded from cancellation."""
    if len(held.leases) == 1:  # the usual case: its release is the task, no gathering
        await shielded(held.leases[0].release(), what="releasing slots")
    elif held.leases:
        await shielded(
            asyncio.gather(*(lease.release() for lease in held.leases)), what="releasing slots"
        )


async def _abandon(held: Held, *, create_unknown: bool) -> None:
    """Stop renewing without releasing. A create whose answer never came may still land at
    Replicate, later than any lookup could see: its record says so, and an adopter then keeps
    the slot until the prediction's hard deadline."""
    if create_unknown:
        for lease in held.leases:
            lease.holder.create_unknown = True
        await shielded(
            asyncio.gather(*(lease.annotate() for lease in held.leases)),
            what="marking a create of unknown outcome",
        )
    for lease in held.leases:
        lease.abandon()


async def _annotate(leases: list[Lease], prediction_id: str) -> None:
    """Best effort: a failure here never touches the generation (a coordination error is
    expected while Redis is away; anything else is logged by the background group)."""
    for lease in leases:
        with contextlib.suppress(CoordinationError):
            await lease.set_prediction_id(prediction_id)


def _remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())
