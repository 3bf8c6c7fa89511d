"""A leased slot of a semaphore: who holds it, until when, and whether it is still ours."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields
from types import TracebackType
from typing import Any, ClassVar, Protocol

from service.aio import Background, shielded

from .script_calls import RenewCode


@dataclass
class Holder:
    """Who holds a lease and what it guards: what operators see, and what a replica that adopts
    the lease (docs/slot-ownership.md) needs to settle its prediction. Never a plain secret:
    `sealed_token` is the caller's token sealed with TOKEN_SEALING_KEY, shown to nobody."""

    replica: str
    purpose: str = ""
    prediction_id: str | None = None
    acquired_at: float = field(default_factory=time.time)
    account: str | None = None
    sealed_token: str | None = field(default=None, repr=False)
    # What the work was, so that it can be found again if its id was never learned (a create
    # whose answer never arrived): the model and the exact input.
    model: str | None = None
    input: dict[str, Any] | None = field(default=None, repr=False)
    # The create was sent but its answer never came: it may still land at Replicate, so only
    # the prediction's hard deadline ends it (docs/slot-ownership.md).
    create_unknown: bool = False

    def to_json(self, *, acquired_at: bool = True) -> str:
        """The JSON Redis keeps in the lease's record. Without `acquired_at` for acquire_slot,
        which stamps it itself (the moment of the attempt that admits, or of the grant)."""
        # Every field is a plain value: a shallow dict is enough (asdict copies deeply, slowly).
        values = {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if acquired_at or f.name != "acquired_at"
        }
        return json.dumps(values, separators=(",", ":"))

    # A lease whose client renews it itself (service.coordination.remote's RemoteHolder): this
    # process never renews it in the background.
    detached: ClassVar[bool] = False


# Why renew_leases lost a lease, in words for its holder.
LOST_REASONS = {
    RenewCode.EXPIRED: (
        "it expired before it could be renewed (this replica stalled or was cut off from Redis)"
    ),
    RenewCode.DELETED: "its semaphore was deleted by an operator",
    RenewCode.GONE: (
        "it was no longer there: taken over by another replica after this one stopped renewing "
        "it, released by an operator, or expired and purged"
    ),
}
# Said when the local clock, not Redis, finds a lease past its last confirmed validity.
UNRENEWED = "it could not be renewed in time (Redis unreachable or this replica stalled)"


class LeaseOwner(Protocol):
    async def release(self, lease: Lease) -> bool: ...
    async def annotate(self, lease: Lease) -> bool: ...
    def forget(self, lease: Lease) -> None: ...


class Lease:
    """A slot held until `release()`; renewed in the background by the process's Renewer.

    `expires_at_ms` is Redis server time. Locally, `is_valid()` uses the monotonic clock since the
    last successful renewal, so a process that was frozen (SIGSTOP, a long GC or event-loop stall)
    knows its lease may be gone before it touches Redis again. `valid_s` is how long Redis gave
    it at that moment: one TTL, except for a lease granted by a release, whose grant can lapse
    with its queue entry (sooner) until its first renewal.

    `pin_s`: the lease is pinned (the work it guards may run that long from now), counted from
    when this process learned of the admission or the grant. An admitted lease was pinned by
    acquire_slot just before (Redis' pin ends up to a round trip sooner than this deadline); a
    granted one is pinned only by the renewal that confirms it (Semaphores._complete_grant), for
    what is left of this deadline when the renewal is sent (pin_left_ms), from when Redis runs
    it (up to a round trip later). A renewal that re-asserts the lease after a node lost it pins
    it the same way; an existing pin is never moved. Either pin outlasts the work, whose own
    deadline (Cancel-After) counts from before the acquisition, and no clock is compared across
    processes or nodes.
    """

    def __init__(
        self,
        *,
        owner: LeaseOwner,
        semaphore_id: str,
        kind: str,
        lease_id: str,
        expires_at_ms: int,
        epoch: str,
        limit: int,
        ttl_s: float,
        holder: Holder,
        keys_ttl_ms: int,
        valid_s: float | None = None,
        pin_s: float = 0.0,
    ) -> None:
        self._owner = owner
        self.semaphore_id = semaphore_id
        self.kind = kind
        self.lease_id = lease_id
        self.expires_at_ms = expires_at_ms
        self.epoch = epoch
        self.limit = limit
        self.ttl_s = ttl_s
        self.holder = holder
        self.keys_ttl_ms = keys_ttl_ms
        self.valid_s = ttl_s if valid_s is None else min(ttl_s, valid_s)
        self.renewed_at = time.monotonic()
        self.pinned_until = self.renewed_at + pin_s  # monotonic
        self.released = False
        # True when the acquiring call also took an entry of a rate window for the holder's
        # first use of the slot (AcquireOptions.window); see Coordinator.acquire's window_limit.
        self.window_entry = False
        self.window_entry_id: str | None = None  # its id, to give it back unused
        self.window_wait_s = 0.0  # when no entry came: how long until the window has room
        self.lost = asyncio.Event()
        self.lost_reason = ""
        self._on_lost: list[Callable[[Lease], Awaitable[None] | None]] = []

    def __repr__(self) -> str:
        return f"Lease({self.kind}:{self.semaphore_id} {self.lease_id} lost={self.lost.is_set()})"

    def is_valid(self) -> bool:
        """Still ours by both Redis' last word and the local clock (with a 10% safety margin)."""
        if self.released or self.lost.is_set():
            return False
        return time.monotonic() - self.renewed_at < self.valid_s * 0.9

    def pin_left_ms(self) -> int:
        """What is left of its pin, in ms rounded up (0: not pinned, or the pin passed)."""
        return max(0, math.ceil((self.pinned_until - time.monotonic()) * 1000))

    def on_lost(self, callback: Callable[[Lease], Awaitable[None] | None]) -> None:
        self._on_lost.append(callback)

    async def release(self) -> bool:
        """Idempotent. Returns True if a live slot was given back by this call."""
        if self.released:
            return False
        self.released = True
        return await self._owner.release(self)

    def abandon(self) -> None:
        """Stop renewing without giving the slot back: for a lease whose prediction may still
        be running. It expires into an orphan that another replica adopts and settles."""
        if self.released:
            return
        self.released = True
        self._owner.forget(self)

    async def set_prediction_id(self, prediction_id: str) -> bool:
        self.holder.prediction_id = prediction_id
        return await self.annotate()

    async def annotate(self) -> bool:
        """Write `holder` to Redis again (operators' view, and what an adopter reads)."""
        return await self._owner.annotate(self)

    def renewed(self, expires_at_ms: int, epoch: str, sent_at: float | None = None) -> None:
        """Redis renewed it for one TTL from when it ran the call; `sent_at` (monotonic), before
        that moment, is the safe local start of the new validity."""
        self.expires_at_ms = expires_at_ms
        self.epoch = epoch
        self.valid_s = self.ttl_s
        self.renewed_at = time.monotonic() if sent_at is None else sent_at

    def why_invalid(self) -> str:
        """Why `is_valid()` is False, in words for the caller (empty while it is valid)."""
        if self.lost.is_set():
            return self.lost_reason or UNRENEWED
        if self.released:
            return "it was already released"
        return "" if self.is_valid() else UNRENEWED

    def mark_lost(self, reason: str = UNRENEWED) -> None:
        if self.lost.is_set():
            return
        self.lost_reason = reason
        self.lost.set()
        for callback in self._on_lost:
            result = callback(self)
            if asyncio.iscoroutine(result):
                _callbacks.spawn(result)

    async def __aenter__(self) -> Lease:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await shielded(self.release(), what="releasing a lease")


# Lost-lease callbacks that are coroutines run beside the holder's work.
_callbacks = Background("lost-lease callbacks")
