"""A leased slot of a semaphore: who holds it, until when, and whether it is still ours."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, fields
from types import TracebackType
from typing import Protocol


@dataclass
class Holder:
    """What operators see about a lease holder. Never carries secrets."""

    replica: str
    purpose: str = ""
    prediction_id: str | None = None
    acquired_at: float = field(default_factory=time.time)

    def to_json(self) -> str:
        # Every field is a plain value: a shallow dict is enough (asdict copies deeply, slowly).
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return json.dumps(values, separators=(",", ":"))

    @property
    def detached(self) -> bool:
        """A lease whose client renews it itself (service.coordination.remote marks its holders
        `remote`): this process never renews it in the background."""
        return getattr(self, "remote", False) is True


class LeaseOwner(Protocol):
    async def release(self, lease: Lease) -> bool: ...
    async def annotate(self, lease: Lease) -> bool: ...


class Lease:
    """A slot held until `release()`; renewed in the background by the process's Renewer.

    `expires_at_ms` is Redis server time. Locally, `is_valid()` uses the monotonic clock since the
    last successful renewal, so a process that was frozen (SIGSTOP, a long GC or event-loop stall)
    knows its lease may be gone before it touches Redis again. `valid_s` is how long Redis gave
    it at that moment: one TTL, except for a lease granted by a release, whose grant can lapse
    with its queue entry (sooner) until its first renewal.
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
        self.released = False
        # True when the acquiring call also took an entry of a rate window for the holder's
        # first use of the slot (AcquireOptions.window); see Coordinator.acquire_account.
        self.window_entry = False
        self.lost = asyncio.Event()
        self._on_lost: list[Callable[[Lease], Awaitable[None] | None]] = []

    def __repr__(self) -> str:
        return f"Lease({self.kind}:{self.semaphore_id} {self.lease_id} lost={self.lost.is_set()})"

    def is_valid(self) -> bool:
        """Still ours by both Redis' last word and the local clock (with a 10% safety margin)."""
        if self.released or self.lost.is_set():
            return False
        return time.monotonic() - self.renewed_at < self.valid_s * 0.9

    def on_lost(self, callback: Callable[[Lease], Awaitable[None] | None]) -> None:
        self._on_lost.append(callback)

    async def release(self) -> bool:
        """Idempotent. Returns True if a live slot was given back by this call."""
        if self.released:
            return False
        self.released = True
        return await self._owner.release(self)

    async def set_prediction_id(self, prediction_id: str) -> bool:
        self.holder.prediction_id = prediction_id
        return await self._owner.annotate(self)

    def renewed(self, expires_at_ms: int, epoch: str) -> None:
        self.expires_at_ms = expires_at_ms
        self.epoch = epoch
        self.valid_s = self.ttl_s
        self.renewed_at = time.monotonic()

    def mark_lost(self) -> None:
        if self.lost.is_set():
            return
        self.lost.set()
        for callback in self._on_lost:
            result = callback(self)
            if asyncio.iscoroutine(result):
                task: asyncio.Task[object] = asyncio.ensure_future(result)
                _background.add(task)
                task.add_done_callback(_finish_background)

    async def __aenter__(self) -> Lease:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await shielded(self.release())


_background: set[asyncio.Task[object]] = set()


async def shielded(operation: Awaitable[object]) -> None:
    """Run cleanup to completion even if the caller is cancelled meanwhile; errors are swallowed
    (a slot that cannot be released now expires with its lease)."""
    task: asyncio.Task[object] = asyncio.ensure_future(operation)
    _background.add(task)
    task.add_done_callback(_finish_background)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        raise
    except Exception:
        pass


def _finish_background(task: asyncio.Task[object]) -> None:
    _background.discard(task)
    if not task.cancelled():
        task.exception()  # mark retrieved: failures are expected while Redis is down
