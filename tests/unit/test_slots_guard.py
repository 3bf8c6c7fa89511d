"""Slots.guard: a lost slot cancels the run it guards, unless its prediction already ended."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from service.limits import LeaseLostError, Slots


class FakeLease:
    """What guard uses of a Lease: on_lost, is_valid, and what LeaseLostError names."""

    kind = "sem"
    semaphore_id = "s"

    def __init__(self) -> None:
        self.callbacks: list[Callable[[FakeLease], None]] = []
        self.valid = True

    def on_lost(self, callback: Callable[[FakeLease], None]) -> None:
        self.callbacks.append(callback)

    def is_valid(self) -> bool:
        return self.valid

    def why_invalid(self) -> str:
        return "it could not be renewed in time"

    def lose(self) -> None:
        self.valid = False
        for callback in self.callbacks:
            callback(self)


def slots_of(lease: FakeLease) -> Slots:
    return Slots(limits=None, account="a", held=SimpleNamespace(leases=[lease]), deadline=0.0)  # type: ignore[arg-type]


async def run_and_lose(ended: bool) -> Any:
    lease = FakeLease()
    seen: dict[str, bool] = {"ended": False}
    cancelled = asyncio.Event()

    async def work() -> str:
        seen["ended"] = ended  # the prediction seen terminal (or still running)
        try:
            await asyncio.sleep(0.2)  # what is left: a durable job's record, slowed by Redis
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "the result"

    guarded = asyncio.create_task(slots_of(lease).guard(work(), ended=lambda: seen["ended"]))
    await asyncio.sleep(0.05)
    lease.lose()
    try:
        return await guarded
    finally:
        assert cancelled.is_set() is not ended


async def test_a_slot_lost_after_its_prediction_ended_keeps_the_result() -> None:
    """Measured from outside: a job's task whose prediction had succeeded was reported failed,
    "cancelled", when a Redis shard stalled for a TTL while its id was being recorded."""
    assert await run_and_lose(ended=True) == "the result"


async def test_a_slot_lost_while_its_prediction_runs_cancels_it() -> None:
    with pytest.raises(LeaseLostError, match="could not be renewed in time"):
        await run_and_lose(ended=False)
