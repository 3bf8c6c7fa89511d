"""A slot granted by a release is pinned when its waiter confirms it, not when it is granted
(docs/slot-ownership.md, "When a lease is pinned"): the real Lua scripts on fakeredis, with a
controlled Redis clock (TIME and key expiry alike).

A granted waiter confirms a pinned grant with a renewal (Semaphores._complete_grant) before it
creates anything; that renewal carries what is left of the pin by the waiter's own clock, and
renew_leases pins the lease then. A grant its waiter never confirms (the waiter's process died
with its place in the queue) guards nothing: it lapses and is freed, not orphaned, and the slot
goes on to the next waiter.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from service.coordination.script_calls import (
    Admitted,
    LeaseToRenew,
    Queued,
    Renewal,
    RenewCode,
)
from tests.unit.script_harness import FakeClock, Harness, done, redis_clock

TTL_MS = 1000
PIN_MS = 30_000


@pytest.fixture
def h(monkeypatch: pytest.MonkeyPatch, clock: FakeClock) -> Iterator[Harness]:
    redis_clock(monkeypatch, clock)  # key expiry too, by the same clock as TIME
    harness = Harness(clock)
    yield harness
    harness.pubsub.close()


def renew(harness: Harness, lease_id: str, epoch: str, pin_left_ms: int) -> Renewal:
    """One lease's renewal as Renewer.renew_group sends it: with what is left of its pin."""
    return done(
        harness.calls.renew_leases(
            "s", ttl_ms=TTL_MS, leases=[LeaseToRenew(lease_id, epoch, "{}", pin_left_ms)]
        )
    )


def grant_to(harness: Harness, waiter: str, *, queue_ttl_ms: int = 3000) -> str:
    """`waiter` queues (asking for a pinned lease) behind a holder whose release grants it the
    slot. Returns the epoch."""
    harness.create(1)
    epoch = admitted(harness.acquire("holder", ttl_ms=60_000, pin_ms=PIN_MS)).epoch
    assert isinstance(
        harness.acquire(waiter, ttl_ms=TTL_MS, pin_ms=PIN_MS, queue_ttl_ms=queue_ttl_ms), Queued
    )
    assert harness.release("holder") == 1
    assert harness.holder_expiry(waiter) is not None  # granted
    return epoch


def admitted(reply: object) -> Admitted:
    assert isinstance(reply, Admitted), reply
    return reply


def stats(harness: Harness) -> dict[str, int]:
    return {k.decode(): int(v) for k, v in harness.client.hgetall(harness.keys.stats).items()}


def test_a_grant_is_not_pinned_until_its_waiter_confirms_it(h: Harness) -> None:
    grant_to(h, "w-tok")
    assert h.members(h.keys.pins) == {}


def test_a_grant_never_confirmed_lapses_and_is_freed_and_the_next_waiter_gets_the_slot(
    h: Harness, clock: FakeClock
) -> None:
    """The measured defect: a dead replica's queued waiters were granted the slots its orphans
    gave back; pinned at grant time, each grant became an orphan in its turn, held until a
    replica adopted and settled it (no prediction existed), 6 s for nothing."""
    h.create(1)
    h.acquire("holder", ttl_ms=60_000, pin_ms=PIN_MS)
    # The dead replica's waiter: its last poll keeps its queue entry until +3 s.
    h.acquire("dead-t1", ttl_ms=TTL_MS, pin_ms=PIN_MS, queue_ttl_ms=3000)
    h.acquire("next-t2", ttl_ms=TTL_MS, pin_ms=PIN_MS, queue_ttl_ms=60_000)
    h.drain_published()
    assert h.release("holder") == 1  # granted to the dead waiter, which never reads it
    assert [channel for channel, _ in h.drain_published()] == [f"{h.keys.channel}:t1"]
    expiry = h.holder_expiry("dead-t1")
    assert expiry == h.now_ms() + TTL_MS
    assert h.queued() == ["next-t2"]
    clock.advance(TTL_MS / 1000 + 0.001)  # the grant lapsed, unconfirmed
    # Whichever script looks next (here another process's try-once) frees it and grants the
    # slot on to the next head, who is told on its own channel.
    assert isinstance(h.acquire("other-t3", queue=False), Queued)
    assert h.holder_expiry("dead-t1") is None
    assert h.members(h.keys.orphans) == {}
    counted = stats(h)
    assert counted.get("expired") == 1 and "orphaned" not in counted
    assert h.holder_expiry("next-t2") is not None
    [(channel, message)] = h.drain_published()
    assert channel == f"{h.keys.channel}:t2" and " next-t2:" in message
    # The next waiter confirms its grant: it is pinned from now on, for what it says is left.
    epoch = message.split()[3]
    assert renew(h, "next-t2", epoch, PIN_MS - 5).codes == (RenewCode.RENEWED,)
    assert h.members(h.keys.pins) == {"next-t2": h.now_ms() + PIN_MS - 5}


def test_a_waiter_that_polls_after_its_grant_lapsed_unconfirmed_queues_again(
    h: Harness, clock: FakeClock
) -> None:
    """Freed, not orphaned: the waiter's own late poll finds the slot free (nobody else
    waits) and takes it afresh, pinned by the admission."""
    grant_to(h, "w-tok")
    clock.advance(2)
    reply = admitted(h.acquire("w-tok", ttl_ms=TTL_MS, pin_ms=PIN_MS))
    assert reply.orphans == 0
    assert h.members(h.keys.pins) == {"w-tok": h.now_ms() + PIN_MS}
    assert stats(h).get("expired") == 1


def test_a_confirmation_that_comes_after_the_grant_lapsed_finds_it_lost(
    h: Harness, clock: FakeClock
) -> None:
    """A waiter that read its grant message too late (frozen) is told it lost the slot before
    it creates anything; the lapsed grant was never an orphan, whatever script ran first."""
    epoch = grant_to(h, "w-tok")
    clock.advance(2)
    assert renew(h, "w-tok", epoch, PIN_MS).codes == (RenewCode.EXPIRED,)
    assert h.holder_expiry("w-tok") is None
    assert h.members(h.keys.pins) == {}


def test_a_confirmed_grant_is_pinned_and_orphaned_when_its_holder_stops_renewing(
    h: Harness, clock: FakeClock
) -> None:
    epoch = grant_to(h, "w-tok")
    clock.advance(0.01)  # the waiter reads the message: its pin counts from now
    pin_left = PIN_MS - 1
    assert renew(h, "w-tok", epoch, pin_left).codes == (RenewCode.RENEWED,)
    pin = h.now_ms() + pin_left
    assert h.members(h.keys.pins) == {"w-tok": pin}
    # The keys outlive the pin, or the slot would vanish with them while its work may run.
    for key in (h.keys.holders, h.keys.info, h.keys.pins):
        assert h.client.pttl(key) >= pin_left + TTL_MS - 1, key
    # Its holder dies after its create; nothing touches the semaphore for longer than the
    # keys' ordinary TTL (3 lease TTLs).
    clock.advance(10)
    waiting = h.acquire("other", ttl_ms=TTL_MS, queue=False)
    assert isinstance(waiting, Queued) and waiting.orphans == 1
    assert h.members(h.keys.orphans) == {"w-tok": h.now_ms()}
    assert h.holder_expiry("w-tok") == pin  # still counted, until its pin at the latest
    assert stats(h).get("orphaned") == 1 and "expired" not in stats(h)
    claimed = h.adopt(["adopter-1"]).claimed
    assert [(c.previous_lease_id, c.pin_ms) for c in claimed] == [("w-tok", pin)]


def test_a_renewal_never_moves_an_existing_pin(h: Harness, clock: FakeClock) -> None:
    # Pinned by its admission...
    h.create(2)
    epoch = admitted(h.acquire("a", ttl_ms=TTL_MS, pin_ms=PIN_MS)).epoch
    admission_pin = h.now_ms() + PIN_MS
    clock.advance(0.3)
    for pin_left in (PIN_MS + 5_000, PIN_MS - 10_000, 1):
        assert renew(h, "a", epoch, pin_left).codes == (RenewCode.RENEWED,)
        assert h.members(h.keys.pins)["a"] == admission_pin
    # ...or by its confirmation.
    h.acquire("b", ttl_ms=60_000)
    assert isinstance(h.acquire("w", ttl_ms=TTL_MS, pin_ms=PIN_MS), Queued)
    h.release("a")
    assert renew(h, "w", epoch, PIN_MS).codes == (RenewCode.RENEWED,)
    confirmed_pin = h.now_ms() + PIN_MS
    clock.advance(0.3)
    assert renew(h, "w", epoch, PIN_MS + 60_000).codes == (RenewCode.RENEWED,)
    assert h.members(h.keys.pins) == {"w": confirmed_pin}


def test_a_renewal_without_a_pin_pins_nothing(h: Harness) -> None:
    epoch = grant_to(h, "w-tok")
    assert renew(h, "w-tok", epoch, 0).codes == (RenewCode.RENEWED,)
    assert h.members(h.keys.pins) == {}


def test_a_granted_waiter_that_learns_of_its_grant_by_polling_is_pinned_by_the_poll(
    h: Harness, clock: FakeClock
) -> None:
    """acquire_slot's `held` branch (the grant message was lost): the poll takes the lease for
    a full TTL and pins it, as an admission does."""
    grant_to(h, "w-tok")
    clock.advance(0.5)
    reply = admitted(h.acquire("w-tok", ttl_ms=TTL_MS, pin_ms=PIN_MS))
    assert reply.expires_at_ms == h.now_ms() + TTL_MS
    assert h.members(h.keys.pins) == {"w-tok": h.now_ms() + PIN_MS}
    for key in (h.keys.holders, h.keys.info, h.keys.pins):
        assert h.client.pttl(key) >= PIN_MS + TTL_MS - 1, key
