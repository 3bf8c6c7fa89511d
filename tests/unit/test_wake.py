"""Wake: one waiter's wake-up with a timeout, resolved directly by set()."""

from __future__ import annotations

import asyncio

import pytest

from service.coordination.wake import Wake


async def test_a_wake_set_before_the_wait_returns_at_once() -> None:
    wake = Wake()
    wake.set()
    assert await wake.wait(10) is True


async def test_a_wait_times_out_unset() -> None:
    wake = Wake()
    assert await wake.wait(0.01) is False
    assert not wake.is_set()


async def test_set_resumes_the_waiter_in_the_next_iteration() -> None:
    wake = Wake()
    waiter = asyncio.ensure_future(wake.wait(10))
    await asyncio.sleep(0)  # the waiter is parked on its future
    wake.set()
    await asyncio.sleep(0)  # one iteration: it has resumed
    assert waiter.done() and waiter.result() is True


async def test_clear_rearms_and_a_cancelled_wait_raises() -> None:
    wake = Wake()
    wake.set()
    wake.clear()
    waiter = asyncio.ensure_future(wake.wait(10))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    wake.set()  # nobody waits: harmless
    assert wake.is_set()


async def test_a_timer_after_set_is_harmless_and_waits_can_follow_each_other() -> None:
    wake = Wake()
    first = asyncio.ensure_future(wake.wait(0.01))
    await asyncio.sleep(0)
    wake.set()
    assert await first is True
    await asyncio.sleep(0.02)  # the first wait's timer would have fired by now
    wake.clear()
    assert await wake.wait(0.01) is False  # a second wait times out on its own timer
    second = asyncio.ensure_future(wake.wait(10))
    await asyncio.sleep(0)
    wake.set()
    assert await second is True
