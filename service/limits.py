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
window entry keeping its slots (service.generation).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import secrets
import time
from collections.abc import Awaitable
from dataclasses import dataclass

from service.config import Settings
from service.coordination import (
    AcquireTimeout,
    CoordinationError,
    CoordinationUnavailable,
    Coordinator,
    Holder,
    Lease,
    SemaphoreNotFound,
)
from service.coordination.lease import shielded
from service.errors import LimitTimeout, NotFound, ServiceError, Unavailable

# A slot is pinned for PREDICTION_TIMEOUT_SECONDS (every create's Cancel-After is at most the
# time left of it) plus this: the create's travel, the skew between Redis' clock and
# Replicate's, and Replicate's own cancellation.
PIN_MARGIN_S = 30.0

# What each AcquireTimeout scope is called in an answer.
_LIMIT_NAMES = {
    "semaphore": "external semaphore '{id}'",
    "account_concurrency": "the account's concurrency limit (REPLICATE_CONCURRENT_LIMIT)",
    "account_rate": "the account's requests-per-minute limit (REPLICATE_REQUESTS_PER_MINUTE)",
}


@dataclass(frozen=True)
class Held:
    """The slots of one prediction; the account's lease carries the first create's entry."""

    leases: list[Lease]

    @property
    def account(self) -> Lease:
        return self.leases[-1]


class Limits:
    """Takes and gives back the three limits of one prediction (see the module timeline)."""

    def __init__(self, coordinator: Coordinator, settings: Settings) -> None:
        self._coordinator = coordinator
        self._concurrent = settings.replicate_concurrent_limit
        self._per_minute = settings.replicate_requests_per_minute
        self._poll_budget = settings.poll_budget_per_minute
        # Each slot is pinned to its prediction's hard deadline (docs/slot-ownership.md).
        self._pin_s = settings.prediction_timeout_seconds + PIN_MARGIN_S

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
                await self._coordinator.give_back_account_rate(account, entry)

    async def take_create_token(self, account: str, *, timeout_s: float) -> None:
        """A window entry for a retried create (the attempt holds its slots meanwhile)."""
        await self._coordinator.take_account_rate(
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
                lease = await self._coordinator.acquire_account(
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
                    result = await self._coordinator.take_account_rate_once(
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
    if held.leases:
        await shielded(asyncio.gather(*(lease.release() for lease in held.leases)))


def service_error(exc: CoordinationError) -> ServiceError:
    """The one mapping from the coordination library's errors to the service's answers."""
    if isinstance(exc, AcquireTimeout):
        what = _LIMIT_NAMES.get(exc.scope, exc.scope).format(id=exc.limit_id)
        return LimitTimeout(
            f"Timed out after {exc.waited_s:.1f}s waiting for {what} (limit {exc.limit}); "
            f"retry after {max(1, math.ceil(exc.retry_after_s))}s",
            scope=exc.scope,
            limit_id=exc.limit_id if exc.scope == "semaphore" else "account",
            retry_after_s=exc.retry_after_s,
        )
    if isinstance(exc, SemaphoreNotFound):
        return NotFound(f"External semaphore '{exc.semaphore_id}' not found")
    return unavailable(exc)


def unavailable(exc: CoordinationError | None = None) -> Unavailable:
    """Fail closed: no limit can be checked, so nothing starts. Says why when Redis said."""
    if not isinstance(exc, CoordinationUnavailable):
        return Unavailable(
            "Coordination store (Redis) is unreachable; no generation can start until it is back",
            headers={"Retry-After": "5"},
        )
    return Unavailable(
        f"Coordination store (Redis) cannot be used: {exc.reason}; no generation can start "
        "until it is back",
        fields={"reason": exc.reason},
        headers={"Retry-After": str(max(1, math.ceil(exc.retry_after_s)))},
    )


def _remaining(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())
