"""The Lua scripts' logic, on fakeredis with a controlled Redis clock (TIME)."""

from __future__ import annotations

import json

import pytest

from service.coordination.script_calls import (
    AcquireReply,
    Admitted,
    LeaseToRenew,
    Missing,
    Queued,
    Released,
    ReleaseOutcome,
    RenewCode,
    WindowTake,
)
from tests.unit.script_harness import HOLDER, FakeClock, Harness, done


def admitted(reply: AcquireReply) -> Admitted:
    assert isinstance(reply, Admitted), reply
    return reply


def queued(reply: AcquireReply) -> Queued:
    assert isinstance(reply, Queued), reply
    return reply


def test_acquires_up_to_the_limit_then_queues_in_order(harness: Harness) -> None:
    harness.create(2)
    assert isinstance(harness.acquire("a"), Admitted)
    assert isinstance(harness.acquire("b"), Admitted)
    c = harness.acquire("c")
    d = harness.acquire("d")
    assert queued(c).position == 1
    assert queued(d).position == 2
    assert harness.live_holders() == 2


def test_try_once_does_not_queue(harness: Harness) -> None:
    harness.create(1)
    harness.acquire("a")
    reply = harness.acquire("b", queue=False)
    assert queued(reply).position == 0
    assert harness.client.zcard(harness.keys.queue) == 0


def test_unknown_semaphore_is_not_found_unless_configured(harness: Harness) -> None:
    assert harness.acquire("a") == Missing()
    reply = harness.acquire("a", create_limit=3)
    assert admitted(reply).limit == 3


def test_configured_limit_follows_the_acquirer(harness: Harness) -> None:
    harness.acquire("a", create_limit=3)
    assert admitted(harness.acquire("b", create_limit=5)).limit == 5


def grant_message(harness: Harness, *granted: tuple[str, int]) -> str:
    """What grant_heads publishes for `granted` (id, expiry ms) at the harness's current time."""
    epoch = harness.client.hget(harness.keys.meta, "epoch").decode()
    limit = harness.client.hget(harness.keys.meta, "limit").decode()
    items = " ".join(f"{lease_id}:{expiry}" for lease_id, expiry in granted)
    return f"grant {harness.now_ms()} {limit} {epoch} {items}"


def test_release_grants_the_head_and_new_arrivals_do_not_barge(harness: Harness) -> None:
    harness.create(1)
    harness.acquire("a")
    harness.acquire("b", ttl_ms=1000, queue_ttl_ms=3000)
    harness.acquire("c")
    harness.published()
    assert harness.release("a") == 1
    # The slot went straight to the head: b holds it (a lease of its TTL), is out of the queue,
    # and the message names it.
    expiry = harness.holder_expiry("b")
    assert expiry == harness.now_ms() + 1000
    assert harness.queued() == ["c"]
    assert harness.published() == [grant_message(harness, ("b", expiry))]
    assert harness.live_holders() == 1
    # A newcomer finds a queue as long as the free slots: it queues behind c.
    assert isinstance(harness.acquire("z"), Queued)
    # c is not the head of anything free: it cannot take a slot.
    assert isinstance(harness.acquire("c"), Queued)
    # b asking again (its message was lost) is told it holds the slot.
    assert isinstance(harness.acquire("b"), Admitted)
    assert isinstance(harness.acquire("c"), Queued)
    assert harness.client.hget(harness.keys.stats, "acquired") == b"2"


def test_a_grant_is_announced_to_the_grantees_process_only(harness: Harness) -> None:
    harness.create(3)
    for holder in ("h1", "h2", "h3"):
        harness.acquire(holder)
    harness.acquire("x-tok1")
    harness.acquire("y-tok2")
    harness.acquire("z-tok1")
    harness.acquire("plain")
    harness.published()
    harness.release("h1")
    harness.release("h2")
    harness.release("h3")
    published = harness.published_on()
    channel = harness.keys.channel
    assert [c for c, _ in published] == [
        f"{channel}:tok1",
        f"{channel}:tok2",
        f"{channel}:tok1",
    ]
    assert [m.split()[-1].split(":")[0] for _, m in published] == ["x-tok1", "y-tok2", "z-tok1"]
    # One message per process when one script grants several slots.
    harness.set_limit(4)
    assert harness.published_on() == [
        (channel, grant_message(harness, ("plain", harness.holder_expiry("plain") or 0)))
    ]


def test_one_grant_message_per_process_names_all_its_grantees(harness: Harness) -> None:
    harness.create(1)
    harness.acquire("a")
    harness.acquire("x-tok1")
    harness.acquire("y-tok2")
    harness.acquire("z-tok1")
    harness.published()
    harness.set_limit(4)
    channel = harness.keys.channel
    x, y, z = (harness.holder_expiry(i) or 0 for i in ("x-tok1", "y-tok2", "z-tok1"))
    assert harness.published_on() == [
        (f"{channel}:tok1", grant_message(harness, ("x-tok1", x), ("z-tok1", z))),
        (f"{channel}:tok2", grant_message(harness, ("y-tok2", y))),
    ]


def test_a_release_returns_the_grants_to_its_own_process_instead_of_publishing_them(
    harness: Harness,
) -> None:
    harness.create(2)
    harness.acquire("a-tok1")
    harness.acquire("b-tok2")
    harness.acquire("x-tok1")
    harness.acquire("y-tok2")
    harness.published()
    channel = harness.keys.channel
    # Released by tok1's process: its own waiter x comes back in the reply, unpublished.
    released = harness.release_as("a-tok1", "tok1")
    x = harness.holder_expiry("x-tok1") or 0
    assert released == Released(ReleaseOutcome.SLOT, grant_message(harness, ("x-tok1", x)))
    assert harness.published_on() == []
    # Released by tok1's process again: the grantee y is another process's, so it is published.
    released = harness.release_as("b-tok2", "tok1")
    y = harness.holder_expiry("y-tok2") or 0
    assert released == Released(ReleaseOutcome.SLOT, "")
    assert harness.published_on() == [(f"{channel}:tok2", grant_message(harness, ("y-tok2", y)))]
    # Nothing to release: the same reply shape.
    assert harness.release_as("gone", "tok1") == Released(ReleaseOutcome.NOTHING, "")


def test_an_acquire_takes_a_window_entry_with_a_free_slot_only(
    harness: Harness, clock: FakeClock
) -> None:
    log = "t:{sem:s}:window"
    harness.create(2)
    # A free slot and room in the window: both, in one call.
    first = harness.acquire("a", ttl_ms=60_000, window=(log, 2, 60_000, "r1"))
    # No orphans; the entry; no wait.
    assert (admitted(first).orphans, first.window_entry, first.window_wait_ms) == (0, True, 0)
    assert harness.client.zrange(log, 0, -1) == [b"r1"]
    # A free slot, but the window is full after one more: the slot still, and the exact wait.
    harness.client.zadd(log, {"other": harness.now_ms()})
    clock.advance(1)
    second = harness.acquire("b", ttl_ms=60_000, window=(log, 2, 60_000, "r2"))
    assert (admitted(second).orphans, second.window_entry, second.window_wait_ms) == (
        0,
        False,
        60_000 - 1_000 + 1,
    )
    assert harness.client.zcard(log) == 2
    # No free slot: queued, and the window is left alone.
    third = harness.acquire("c", window=(log, 5, 60_000, "r3"))
    assert isinstance(third, Queued)
    assert harness.client.zcard(log) == 2


def test_a_retried_window_take_does_not_count_twice(harness: Harness) -> None:
    assert harness.take(2, "r1") == WindowTake(True, 1, 0)
    assert harness.take(2, "r1") == WindowTake(True, 1, 0)  # the same request id: no second entry
    assert harness.client.zcard("t:{win:a}:log") == 1
    assert harness.take(2, "r2") == WindowTake(True, 0, 0)


def test_a_grant_carries_the_waiters_holder_json_stamped_with_the_grant_time(
    harness: Harness, clock: FakeClock
) -> None:
    harness.create(1)
    harness.acquire("a", ttl_ms=60_000)
    holder = {"replica": "r2", "purpose": "remote {x}", "prediction_id": None, "acquired_at": 1.0}
    harness.acquire("b", holder={**holder, "remote": True})
    clock.advance(2)
    harness.release("a")
    info = json.loads(harness.client.hget(harness.keys.info, "b"))
    assert info == {**holder, "remote": True, "acquired_at": harness.now_ms() / 1000}
    assert harness.client.hget(harness.keys.qinfo, "b") is None


def test_a_grant_to_a_dead_waiter_lapses_at_its_queue_entry_expiry(
    harness: Harness, clock: FakeClock
) -> None:
    harness.create(1)
    harness.acquire("a", ttl_ms=60_000)
    harness.acquire("dead", ttl_ms=60_000, queue_ttl_ms=3000)  # its last poll: entry until +3 s
    entry_expiry = int(harness.client.zscore(harness.keys.qexp, "dead"))
    harness.acquire("next", ttl_ms=60_000, queue_ttl_ms=60_000)
    clock.advance(1)
    harness.release("a")
    # Granted, but only until its queue entry would have expired, not for a whole lease TTL.
    assert harness.holder_expiry("dead") == entry_expiry
    assert harness.live_holders() == 1
    clock.advance(1.9)
    waiting = harness.acquire("next", ttl_ms=60_000, queue_ttl_ms=60_000)
    # It polls no later than the lapse.
    assert queued(waiting).retry_hint_ms <= entry_expiry - harness.now_ms() + 1
    clock.advance(0.2)
    assert harness.live_holders() == 0
    assert isinstance(
        harness.acquire("next", ttl_ms=60_000), Admitted
    )  # the lapsed grant is purged


def test_heads_whose_queue_entry_expired_are_skipped_not_granted(
    harness: Harness, clock: FakeClock
) -> None:
    harness.create(1)
    harness.acquire("a", ttl_ms=60_000)
    harness.acquire("gone", queue_ttl_ms=1000)
    harness.acquire("alive", queue_ttl_ms=60_000)
    clock.advance(2)
    harness.published()
    harness.release("a")
    assert harness.holder_expiry("gone") is None
    assert harness.holder_expiry("alive") is not None
    assert harness.queued() == []


def test_a_granted_waiter_that_polls_gets_a_full_ttl_and_its_latest_holder_json(
    harness: Harness, clock: FakeClock
) -> None:
    harness.create(1)
    harness.acquire("a", ttl_ms=60_000)
    harness.acquire("b", ttl_ms=60_000, queue_ttl_ms=3000)
    harness.release("a")
    assert harness.holder_expiry("b") == harness.now_ms() + 3000
    clock.advance(1)
    reply = harness.acquire("b", ttl_ms=60_000, holder={**HOLDER, "purpose": "second"})
    assert admitted(reply).expires_at_ms == harness.now_ms() + 60_000
    assert harness.holder_expiry("b") == reply.expires_at_ms
    assert json.loads(harness.client.hget(harness.keys.info, "b"))["purpose"] == "second"


def test_releasing_a_grant_never_taken_passes_the_slot_on(harness: Harness) -> None:
    harness.create(1)
    harness.acquire("a")
    harness.acquire("b")
    harness.acquire("c")
    harness.release("a")  # granted to b, whose waiter gave up before it learned of it
    harness.published()
    assert harness.release("b") == 1
    assert harness.holder_expiry("c") is not None
    assert harness.live_holders() == 1
    assert [m.split()[-1].split(":")[0] for m in harness.published()] == ["c"]


def test_the_grace_period_blocks_grants(harness: Harness, clock: FakeClock) -> None:
    harness.acquire("a", create_limit=1, grace_ms=1000)  # re-created after a suspected loss
    harness.acquire("b", create_limit=1)
    harness.acquire("c", create_limit=1)
    harness.published()
    harness.release("b")  # a queue entry leaves: still in grace, nothing is granted
    assert harness.live_holders() == 0 and harness.published() == []
    clock.advance(1.1)
    # The grace is over: the next call grants the head, a.
    assert queued(harness.acquire("c", create_limit=1)).position == 1
    assert harness.holder_expiry("a") is not None and harness.queued() == ["c"]


def test_an_acquire_that_finds_slots_free_grants_the_heads_first(
    harness: Harness, clock: FakeClock
) -> None:
    harness.acquire("a", create_limit=1, ttl_ms=1000)
    harness.acquire("b-tok", create_limit=1, queue_ttl_ms=60_000)
    harness.published()
    clock.advance(1.5)  # a expired: nobody was told
    # A newcomer's call purges a and grants the slot to b before looking at its own chances.
    assert isinstance(harness.acquire("new", create_limit=1), Queued)
    assert harness.holder_expiry("b-tok") is not None
    assert [c for c, _ in harness.published_on()] == [f"{harness.keys.channel}:tok"]
    # A raised account limit (the acquirer's configuration) grants the head, then admits.
    assert isinstance(harness.acquire("newer", create_limit=3), Admitted)
    assert harness.holder_expiry("new") is not None
    assert harness.live_holders() == 3 and harness.queued() == []


def test_release_is_idempotent_and_id_scoped(harness: Harness) -> None:
    harness.create(1)
    harness.acquire("a")
    assert harness.release("nobody") == 0
    assert harness.live_holders() == 1
    assert harness.release("a") == 1
    assert harness.release("a") == 0


def test_releasing_a_waiter_leaves_the_queue(harness: Harness) -> None:
    harness.create(1)
    harness.acquire("a")
    harness.acquire("b")
    assert harness.release("b") == 2
    assert harness.client.zcard(harness.keys.queue) == 0


def test_expired_leases_never_count(harness: Harness, clock: FakeClock) -> None:
    harness.create(1)
    harness.acquire("a", ttl_ms=1000)
    waiting = harness.acquire("b")
    # The poll hint never sleeps past the nearest expiry.
    assert 0 < queued(waiting).retry_hint_ms <= 1001
    clock.advance(1.001)
    assert isinstance(harness.acquire("b"), Admitted)
    assert harness.release("a") == 0  # late release of the expired lease frees nothing
    assert harness.live_holders() == 1


def test_dead_waiters_vanish_from_the_queue(harness: Harness, clock: FakeClock) -> None:
    harness.create(1)
    harness.acquire("a", ttl_ms=60_000)
    harness.acquire("dead", queue_ttl_ms=1000)
    harness.acquire("alive", queue_ttl_ms=60_000)
    clock.advance(2)
    harness.release("a")
    # The dead waiter's entry expired, so the live one is the head now.
    assert isinstance(harness.acquire("alive"), Admitted)


def test_renewal_extends_live_leases_and_reports_expired_ones_lost(
    harness: Harness, clock: FakeClock
) -> None:
    harness.create(2)
    epoch = admitted(harness.acquire("a", ttl_ms=1000)).epoch
    harness.acquire("b", ttl_ms=1000)
    clock.advance(0.5)
    reply = harness.renew([("a", epoch)], ttl_ms=1000)
    assert reply.codes == (1,)
    clock.advance(0.7)  # b expired (1.2 s), a renewed until 1.5 s
    reply = harness.renew([("a", epoch), ("b", epoch)], ttl_ms=1000)
    assert reply.codes == (1, 0)
    assert harness.live_holders() == 1
    # b cannot come back by renewing again; it is no longer there at all (code 4).
    assert harness.renew([("b", epoch)]).codes == (4,)


def test_renewal_says_why_a_lease_was_lost(harness: Harness) -> None:
    """0: expired before the renewal; 4: removed (released by an operator); 3: semaphore gone."""
    harness.create(2)
    epoch = admitted(harness.acquire("a")).epoch
    harness.acquire("b")
    harness.release("b")  # as an operator's force release does
    assert harness.renew([("a", epoch), ("b", epoch)]).codes == (
        1,
        4,
    )
    harness.client.delete(harness.keys.meta)  # as DELETE /global-semaphores/{id} does
    assert harness.renew([("a", epoch)]).codes == (3,)


def test_data_loss_grace_lets_holders_reassert_and_holds_new_acquisitions(
    harness: Harness, clock: FakeClock
) -> None:
    harness.create(1)
    epoch = admitted(harness.acquire("a", ttl_ms=1000)).epoch
    harness.client.flushall()  # Redis restarted without its data
    # A new acquisition that recreates the semaphore after a suspected loss sets a grace.
    blocked = harness.acquire("new", create_limit=1, grace_ms=1000)
    assert isinstance(blocked, Queued)
    reply = harness.renew([("a", epoch)], create_limit=1)
    assert reply.codes == (2,)  # re-asserted
    new_epoch = reply.epoch
    clock.advance(0.6)
    assert harness.renew([("a", new_epoch)]).codes == (1,)  # a plain renewal from now on
    clock.advance(0.6)  # the grace is over; a still holds the only slot
    assert isinstance(harness.acquire("new", create_limit=1), Queued)
    assert harness.live_holders() == 1


def test_renew_recreates_a_lost_semaphore_with_grace(harness: Harness) -> None:
    harness.create(2)
    epoch = admitted(harness.acquire("a")).epoch
    harness.client.flushall()
    assert harness.renew([("a", epoch)], create_limit=2).codes == (2,)
    assert isinstance(harness.acquire("b"), Queued)  # in grace


def test_set_limit_grants_the_slots_it_adds(harness: Harness) -> None:
    harness.create(1)
    harness.acquire("a")
    harness.acquire("b")
    harness.acquire("c")
    harness.acquire("d")
    harness.published()
    assert harness.set_limit(3) == 1
    b, c = harness.holder_expiry("b"), harness.holder_expiry("c")
    assert b is not None and c is not None
    assert harness.queued() == ["d"]
    assert harness.published() == [grant_message(harness, ("b", b), ("c", c))]
    assert harness.live_holders() == 3


def test_ensure_with_a_raised_limit_grants_too(harness: Harness) -> None:
    harness.create(1)
    harness.acquire("a")
    harness.acquire("b")
    harness.published()
    assert harness.ensure(2) == 2
    assert harness.holder_expiry("b") is not None
    assert len(harness.published()) == 1


def test_delete_wakes_waiters_who_then_find_nothing(harness: Harness) -> None:
    harness.create(1)
    harness.acquire("a")
    harness.acquire("b")
    harness.published()
    assert harness.delete() is True
    assert harness.published() == ["b"]
    assert harness.acquire("b") == Missing()


def test_window_admits_n_then_names_the_exact_wait(harness: Harness, clock: FakeClock) -> None:
    assert harness.take(2, "r1") == WindowTake(True, 1, 0)
    clock.advance(10)
    assert harness.take(2, "r2") == WindowTake(True, 0, 0)
    clock.advance(20)
    taken = harness.take(2, "r3")
    assert not taken.admitted
    assert 30_000 <= taken.wait_ms <= 30_001
    clock.advance(30.001)
    assert harness.take(2, "r4").admitted


def test_rejected_window_attempts_consume_nothing(harness: Harness, clock: FakeClock) -> None:
    harness.take(1, "first")
    for i in range(50):
        clock.advance(1)
        assert not harness.take(1, f"hammer{i}").admitted
    clock.advance(10.001)  # 60 s after the only admission
    assert harness.take(1, "next").admitted


def test_window_wait_accounts_for_a_lowered_limit(harness: Harness, clock: FakeClock) -> None:
    for i in range(4):
        harness.take(4, f"r{i}")
        clock.advance(1)
    # Limit lowered to 2: admission needs at most 1 left in the window, so the entry of t=2
    # must leave (at t=62); now is t=4.
    taken = harness.take(2, "x")
    assert not taken.admitted
    assert 58_000 <= taken.wait_ms <= 58_001


def test_a_head_without_a_waiter_record_is_dropped_not_granted(harness: Harness) -> None:
    """A grant is made from the waiter's record; a queue entry without a usable one (written by
    hand, or by scripts of another version) is dropped like an expired one, and the slot goes
    to the next head."""
    harness.create(1)
    harness.acquire("a")
    harness.client.zadd(harness.keys.queue, {"old": 0})
    harness.client.zadd(harness.keys.qexp, {"old": harness.now_ms() + 10_000})
    harness.client.hset(harness.keys.qinfo, "old", '{"replica": "r", "since": 1.0}')
    harness.acquire("new-tok")
    harness.published()
    assert harness.release("a") == 1
    new = harness.holder_expiry("new-tok")
    assert new is not None
    assert harness.published_on() == [
        (f"{harness.keys.channel}:tok", grant_message(harness, ("new-tok", new)))
    ]
    assert harness.live_holders() == 1 and harness.queued() == []
    assert harness.client.hget(harness.keys.qinfo, "old") is None
    assert isinstance(harness.acquire("old", queue=False), Queued)  # its slot went on


def test_the_waiter_record_is_cjson_that_python_reads_back(harness: Harness) -> None:
    """Python writes the waiter JSON and the holder JSON, Lua keeps them (the holder as text,
    never decoded: its numbers stay exact) in a cjson record that Python reads back."""
    harness.create(1)
    harness.acquire("a")
    holder = {
        **HOLDER,
        "purpose": 'generate "x/y" é',
        "input": {"prompt": "π ≈ 3.14", "guidance": 0.30000000000000004, "seed": 2**53 + 1},
    }
    harness.acquire("b", ttl_ms=60_000, pin_ms=5_000, holder=holder)
    record = json.loads(harness.client.hget(harness.keys.qinfo, "b"))
    fields = {k: v for k, v in holder.items() if k != "acquired_at"}
    assert record == {
        "replica": "r",
        "since": 1.5,
        "ttl_ms": 60_000,
        "pin_ms": 5_000,
        "holder": json.dumps(fields, separators=(",", ":")),
    }
    [waiter] = (harness.read() or pytest.fail("no semaphore")).waiters
    assert (waiter.waiter_id, waiter.record["replica"], waiter.record["since"]) == ("b", "r", 1.5)
    harness.release("a")  # granted to b: its holder JSON, stamped with the grant time
    info = json.loads(harness.client.hget(harness.keys.info, "b"))
    assert info == {**fields, "acquired_at": harness.now_ms() / 1000}


# -- pinned leases, orphans and adoption (docs/slot-ownership.md) ---------------------------


def test_a_pinned_lease_expired_unrenewed_is_orphaned_not_freed(
    harness: Harness, clock: FakeClock
) -> None:
    harness.create(1)
    assert isinstance(harness.acquire("a", ttl_ms=1000, pin_ms=60_000), Admitted)
    clock.advance(5)  # a's holder died: its lease expired 4 s ago
    waiting = harness.acquire("b")
    assert queued(waiting).orphans == 1  # queued behind it; one orphan to adopt
    assert harness.live_holders() == 1
    assert harness.client.zscore(harness.keys.orphans, "a") is not None
    stats = harness.client.hgetall(harness.keys.stats)
    assert stats[b"orphaned"] == b"1" and b"expired" not in stats


def test_an_orphan_is_freed_only_once_its_pin_passes(harness: Harness, clock: FakeClock) -> None:
    harness.create(1)
    harness.acquire("a", ttl_ms=1000, pin_ms=10_000)
    clock.advance(5)
    assert isinstance(harness.acquire("b", queue=False), Queued)
    clock.advance(5.1)  # past the pin: its prediction cannot be running any more
    assert isinstance(harness.acquire("b", queue=False), Admitted)
    assert harness.client.zcard(harness.keys.pins) == 0
    assert harness.client.zcard(harness.keys.orphans) == 0


def test_adoption_moves_the_slot_to_a_new_lease_and_keeps_it_taken(
    harness: Harness, clock: FakeClock
) -> None:
    harness.create(1)
    record = {**HOLDER, "prediction_id": "p1", "account": "fp"}
    epoch = admitted(harness.acquire("a", ttl_ms=1000, pin_ms=60_000, holder=record)).epoch
    harness.acquire("b", ttl_ms=1000)  # queued
    clock.advance(2)
    reply = harness.adopt(["new-1", "new-2"], ttl_ms=1000)
    now = harness.now_ms()
    assert (reply.now_ms, reply.epoch, reply.limit) == (now, epoch, 1)
    assert len(reply.claimed) == 1  # one orphan, one claim
    [claimed] = reply.claimed
    assert claimed.lease_id == "new-1" and claimed.previous_lease_id == "a"
    assert claimed.record["prediction_id"] == "p1"
    assert claimed.pin_ms == now - 2000 + 60_000  # the pin, unchanged
    assert claimed.orphaned_at_ms == now  # orphaned by the adoption's own purge
    assert harness.live_holders() == 1
    assert harness.client.zscore(harness.keys.pins, "new-1") == claimed.pin_ms
    info = json.loads(harness.client.hget(harness.keys.info, "new-1"))
    assert info["adopted_by"] == "adopter" and info["adopted_from"] == "a"
    assert info["prediction_id"] == "p1"
    # Its first holder, back, finds it gone; a waiter is still queued: nothing was freed.
    assert harness.renew([("a", epoch)]).codes == (4,)
    assert isinstance(harness.acquire("b", ttl_ms=1000), Queued)
    # The adopter releases it once the prediction is terminal: the waiter gets it.
    assert harness.release("new-1") == 1
    assert harness.live_holders() == 1
    assert harness.client.zscore(harness.keys.holders, "b") is not None
    assert harness.client.zcard(harness.keys.pins) == 0


def test_a_holder_back_before_adoption_keeps_its_lease(harness: Harness, clock: FakeClock) -> None:
    harness.create(1)
    epoch = admitted(harness.acquire("a", ttl_ms=1000, pin_ms=60_000)).epoch
    clock.advance(3)
    harness.acquire("b", queue=False)  # runs purge: a is an orphan now
    assert harness.client.zcard(harness.keys.orphans) == 1
    assert harness.renew([("a", epoch)]).codes == (1,)
    assert harness.client.zcard(harness.keys.orphans) == 0
    assert harness.adopt(["new-1"]).claimed == ()  # nothing left to adopt
    # Renewed to an ordinary expiry; its release frees the slot.
    assert harness.release("a") == 1
    assert harness.live_holders() == 0


def test_an_expired_pinned_lease_not_yet_purged_is_renewed_by_its_holder(
    harness: Harness, clock: FakeClock
) -> None:
    harness.create(1)
    epoch = admitted(harness.acquire("a", ttl_ms=1000, pin_ms=60_000)).epoch
    clock.advance(3)  # expired, but no script has looked since: the slot was never freed
    assert harness.renew([("a", epoch)]).codes == (1,)


def test_a_grant_is_pinned_by_its_waiters_confirmation_not_by_the_grant(
    harness: Harness, clock: FakeClock
) -> None:
    # (Was test_a_grant_pins_the_waiter_it_admits, which asserted the pin written at the grant.
    # A grant is now pinned when its waiter confirms it: a grant to a waiter that died guards
    # no work and must be freed at its expiry, not orphaned. tests/unit/test_grant_pins.py.)
    harness.create(1)
    harness.acquire("a", ttl_ms=1000)
    harness.acquire("b", ttl_ms=1000, pin_ms=30_000)  # queued, asks for a pin
    assert harness.release("a") == 1  # granted to b
    assert harness.client.zscore(harness.keys.pins, "b") is None
    epoch = harness.client.hget(harness.keys.meta, "epoch").decode()
    clock.advance(0.01)
    renewal = done(
        harness.calls.renew_leases(
            "s", ttl_ms=1000, leases=[LeaseToRenew("b", epoch, "{}", pin_left_ms=29_990)]
        )
    )
    assert renewal.codes == (RenewCode.RENEWED,)
    assert harness.client.zscore(harness.keys.pins, "b") == harness.now_ms() + 29_990


def test_delete_removes_pins_and_orphans(harness: Harness, clock: FakeClock) -> None:
    harness.create(1)
    harness.acquire("a", ttl_ms=1000, pin_ms=60_000)
    clock.advance(2)
    harness.acquire("b", queue=False)
    harness.delete()
    assert not harness.client.exists(harness.keys.pins, harness.keys.orphans)
