"""The Lua scripts' logic, on fakeredis with a controlled Redis clock (TIME)."""

from __future__ import annotations

import json

from tests.unit.script_harness import HOLDER, FakeClock, Harness


def test_acquires_up_to_the_limit_then_queues_in_order(harness: Harness) -> None:
    harness.create(2)
    assert harness.acquire("a")[0] == 1
    assert harness.acquire("b")[0] == 1
    c = harness.acquire("c")
    d = harness.acquire("d")
    assert (c[0], c[1]) == (0, 1)
    assert (d[0], d[1]) == (0, 2)
    assert harness.live_holders() == 2


def test_try_once_does_not_queue(harness: Harness) -> None:
    harness.create(1)
    harness.acquire("a")
    reply = harness.acquire("b", queue=False)
    assert reply[:2] == [0, 0]
    assert harness.client.zcard(harness.keys.queue) == 0


def test_unknown_semaphore_is_not_found_unless_configured(harness: Harness) -> None:
    assert harness.acquire("a") == [-1]
    reply = harness.acquire("a", create_limit=3)
    assert reply[0] == 1 and reply[4] == 3


def test_configured_limit_follows_the_acquirer(harness: Harness) -> None:
    harness.acquire("a", create_limit=3)
    assert harness.acquire("b", create_limit=5)[4] == 5


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
    assert harness.acquire("z")[0] == 0
    # c is not the head of anything free: it cannot take a slot.
    assert harness.acquire("c")[0] == 0
    # b asking again (its message was lost) is told it holds the slot.
    assert harness.acquire("b")[0] == 1
    assert harness.acquire("c")[0] == 0
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
    harness.run("set_limit", harness.keys.all, [4, channel])
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
    harness.run("set_limit", harness.keys.all, [4, harness.keys.channel])
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
    status, kept = harness.run("release_slot", harness.keys.all, ["a-tok1", channel, "", "tok1"])
    x = harness.holder_expiry("x-tok1") or 0
    assert (int(status), kept.decode()) == (1, grant_message(harness, ("x-tok1", x)))
    assert harness.published_on() == []
    # Released by tok1's process again: the grantee y is another process's, so it is published.
    status, kept = harness.run("release_slot", harness.keys.all, ["b-tok2", channel, "", "tok1"])
    y = harness.holder_expiry("y-tok2") or 0
    assert (int(status), kept) == (1, b"")
    assert harness.published_on() == [(f"{channel}:tok2", grant_message(harness, ("y-tok2", y)))]
    # Nothing to release: the same two-item reply.
    assert harness.run("release_slot", harness.keys.all, ["gone", channel, "", "tok1"]) == [0, b""]


def test_an_acquire_takes_a_window_entry_with_a_free_slot_only(
    harness: Harness, clock: FakeClock
) -> None:
    log = "t:{sem:s}:window"
    harness.create(2)
    # A free slot and room in the window: both, in one call.
    first = harness.acquire("a", ttl_ms=60_000, window=(log, 2, 60_000, "r1"))
    assert first[0] == 1 and first[5:] == [0, 1, 0]  # no orphans; the entry; no wait
    assert harness.client.zrange(log, 0, -1) == [b"r1"]
    # A free slot, but the window is full after one more: the slot still, and the exact wait.
    harness.client.zadd(log, {"other": harness.now_ms()})
    clock.advance(1)
    second = harness.acquire("b", ttl_ms=60_000, window=(log, 2, 60_000, "r2"))
    assert second[0] == 1 and second[5:] == [0, 0, 60_000 - 1_000 + 1]
    assert harness.client.zcard(log) == 2
    # No free slot: queued, and the window is left alone.
    third = harness.acquire("c", window=(log, 5, 60_000, "r3"))
    assert third[0] == 0 and len(third) == 6
    assert harness.client.zcard(log) == 2


def test_a_retried_window_take_does_not_count_twice(harness: Harness) -> None:
    assert harness.take(2, "r1") == [1, 1, 0]
    assert harness.take(2, "r1") == [1, 1, 0]  # the same request id: no second entry
    assert harness.client.zcard("t:{win:a}:log") == 1
    assert harness.take(2, "r2") == [1, 0, 0]


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
    assert waiting[0] == 0
    assert waiting[2] <= entry_expiry - harness.now_ms() + 1  # polls no later than the lapse
    clock.advance(0.2)
    assert harness.live_holders() == 0
    assert harness.acquire("next", ttl_ms=60_000)[0] == 1  # the lapsed grant is purged


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
    assert reply[0] == 1 and reply[1] == harness.now_ms() + 60_000
    assert harness.holder_expiry("b") == reply[1]
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
    assert harness.acquire("c", create_limit=1)[:2] == [0, 1]
    assert harness.holder_expiry("a") is not None and harness.queued() == ["c"]


def test_an_acquire_that_finds_slots_free_grants_the_heads_first(
    harness: Harness, clock: FakeClock
) -> None:
    harness.acquire("a", create_limit=1, ttl_ms=1000)
    harness.acquire("b-tok", create_limit=1, queue_ttl_ms=60_000)
    harness.published()
    clock.advance(1.5)  # a expired: nobody was told
    # A newcomer's call purges a and grants the slot to b before looking at its own chances.
    assert harness.acquire("new", create_limit=1)[0] == 0
    assert harness.holder_expiry("b-tok") is not None
    assert [c for c, _ in harness.published_on()] == [f"{harness.keys.channel}:tok"]
    # A raised account limit (the acquirer's configuration) grants the head, then admits.
    assert harness.acquire("newer", create_limit=3)[0] == 1
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
    assert waiting[0] == 0
    assert 0 < waiting[2] <= 1001  # the poll hint never sleeps past the nearest expiry
    clock.advance(1.001)
    assert harness.acquire("b")[0] == 1
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
    assert harness.acquire("alive")[0] == 1


def test_renewal_extends_live_leases_and_reports_expired_ones_lost(
    harness: Harness, clock: FakeClock
) -> None:
    harness.create(2)
    epoch = harness.acquire("a", ttl_ms=1000)[2].decode()
    harness.acquire("b", ttl_ms=1000)
    clock.advance(0.5)
    reply = harness.renew([("a", epoch)], ttl_ms=1000)
    assert reply[2:] == [1]
    clock.advance(0.7)  # b expired (1.2 s), a renewed until 1.5 s
    reply = harness.renew([("a", epoch), ("b", epoch)], ttl_ms=1000)
    assert reply[2:] == [1, 0]
    assert harness.live_holders() == 1
    # b cannot come back by renewing again; it is no longer there at all (code 4).
    assert harness.renew([("b", epoch)])[2:] == [4]


def test_renewal_says_why_a_lease_was_lost(harness: Harness) -> None:
    """0: expired before the renewal; 4: removed (released by an operator); 3: semaphore gone."""
    harness.create(2)
    epoch = harness.acquire("a")[2].decode()
    harness.acquire("b")
    harness.release("b")  # as an operator's force release does
    assert harness.renew([("a", epoch), ("b", epoch)])[2:] == [1, 4]
    harness.client.delete(harness.keys.meta)  # as DELETE /global-semaphores/{id} does
    assert harness.renew([("a", epoch)])[2:] == [3]


def test_data_loss_grace_lets_holders_reassert_and_holds_new_acquisitions(
    harness: Harness, clock: FakeClock
) -> None:
    harness.create(1)
    epoch = harness.acquire("a", ttl_ms=1000)[2].decode()
    harness.client.flushall()  # Redis restarted without its data
    # A new acquisition that recreates the semaphore after a suspected loss sets a grace.
    blocked = harness.acquire("new", create_limit=1, grace_ms=1000)
    assert blocked[0] == 0
    reply = harness.renew([("a", epoch)], create_limit=1)
    assert reply[2:] == [2]  # re-asserted
    new_epoch = reply[1].decode()
    clock.advance(0.6)
    assert harness.renew([("a", new_epoch)])[2:] == [1]  # a plain renewal from now on
    clock.advance(0.6)  # the grace is over; a still holds the only slot
    assert harness.acquire("new", create_limit=1)[0] == 0
    assert harness.live_holders() == 1


def test_renew_recreates_a_lost_semaphore_with_grace(harness: Harness) -> None:
    harness.create(2)
    epoch = harness.acquire("a")[2].decode()
    harness.client.flushall()
    assert harness.renew([("a", epoch)], create_limit=2)[2:] == [2]
    assert harness.acquire("b")[0] == 0  # in grace


def test_set_limit_grants_the_slots_it_adds(harness: Harness) -> None:
    harness.create(1)
    harness.acquire("a")
    harness.acquire("b")
    harness.acquire("c")
    harness.acquire("d")
    harness.published()
    assert int(harness.run("set_limit", harness.keys.all, [3, harness.keys.channel])) == 1
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
    reply = harness.run("create_semaphore", harness.keys.all, [2, "ensure", harness.keys.channel])
    assert int(reply) == 2
    assert harness.holder_expiry("b") is not None
    assert len(harness.published()) == 1


def test_delete_wakes_waiters_who_then_find_nothing(harness: Harness) -> None:
    harness.create(1)
    harness.acquire("a")
    harness.acquire("b")
    harness.published()
    assert int(harness.run("delete_semaphore", harness.keys.all, [harness.keys.channel])) == 1
    assert harness.published() == ["b"]
    assert harness.acquire("b") == [-1]


def test_window_admits_n_then_names_the_exact_wait(harness: Harness, clock: FakeClock) -> None:
    assert harness.take(2, "r1") == [1, 1, 0]
    clock.advance(10)
    assert harness.take(2, "r2") == [1, 0, 0]
    clock.advance(20)
    admitted, _, wait_ms = harness.take(2, "r3")
    assert admitted == 0
    assert 30_000 <= wait_ms <= 30_001
    clock.advance(30.001)
    assert harness.take(2, "r4")[0] == 1


def test_rejected_window_attempts_consume_nothing(harness: Harness, clock: FakeClock) -> None:
    harness.take(1, "first")
    for i in range(50):
        clock.advance(1)
        assert harness.take(1, f"hammer{i}")[0] == 0
    clock.advance(10.001)  # 60 s after the only admission
    assert harness.take(1, "next")[0] == 1


def test_window_wait_accounts_for_a_lowered_limit(harness: Harness, clock: FakeClock) -> None:
    for i in range(4):
        harness.take(4, f"r{i}")
        clock.advance(1)
    # Limit lowered to 2: admission needs at most 1 left in the window, so the entry of t=2
    # must leave (at t=62); now is t=4.
    admitted, _, wait_ms = harness.take(2, "x")
    assert admitted == 0
    assert 58_000 <= wait_ms <= 58_001


def test_a_waiter_queued_by_older_scripts_is_woken_not_granted(harness: Harness) -> None:
    """Rolling upgrade: a waiter queued by the previous scripts (a plain waiter JSON, no lease
    TTL nor holder) expects a wake-up and takes the slot with its own acquire_slot call."""
    harness.create(1)
    harness.acquire("a")
    harness.client.zadd(harness.keys.queue, {"old": 0})
    harness.client.zadd(harness.keys.qexp, {"old": harness.now_ms() + 10_000})
    harness.client.hset(harness.keys.qinfo, "old", '{"replica": "r", "since": 1.0}')
    harness.acquire("new-tok")
    harness.published()
    assert harness.release("a") == 1
    assert harness.published_on() == [(harness.keys.channel, "old")]
    assert harness.live_holders() == 0
    assert harness.acquire("new-tok")[:2] == [0, 2]  # the slot stays free for the head
    assert harness.acquire("old")[0] == 1


# -- pinned leases, orphans and adoption (docs/slot-ownership.md) ---------------------------


def test_a_pinned_lease_expired_unrenewed_is_orphaned_not_freed(
    harness: Harness, clock: FakeClock
) -> None:
    harness.create(1)
    assert harness.acquire("a", ttl_ms=1000, pin_ms=60_000)[0] == 1
    clock.advance(5)  # a's holder died: its lease expired 4 s ago
    waiting = harness.acquire("b")
    assert waiting[0] == 0 and waiting[5] == 1  # queued behind it; one orphan to adopt
    assert harness.live_holders() == 1
    assert harness.client.zscore(harness.keys.orphans, "a") is not None
    stats = harness.client.hgetall(harness.keys.stats)
    assert stats[b"orphaned"] == b"1" and b"expired" not in stats


def test_an_orphan_is_freed_only_once_its_pin_passes(harness: Harness, clock: FakeClock) -> None:
    harness.create(1)
    harness.acquire("a", ttl_ms=1000, pin_ms=10_000)
    clock.advance(5)
    assert harness.acquire("b", queue=False)[0] == 0
    clock.advance(5.1)  # past the pin: its prediction cannot be running any more
    assert harness.acquire("b", queue=False)[0] == 1
    assert harness.client.zcard(harness.keys.pins) == 0
    assert harness.client.zcard(harness.keys.orphans) == 0


def test_adoption_moves_the_slot_to_a_new_lease_and_keeps_it_taken(
    harness: Harness, clock: FakeClock
) -> None:
    harness.create(1)
    record = {**HOLDER, "prediction_id": "p1", "account": "fp"}
    epoch = harness.acquire("a", ttl_ms=1000, pin_ms=60_000, holder=record)[2].decode()
    harness.acquire("b", ttl_ms=1000)  # queued
    clock.advance(2)
    reply = harness.adopt(["new-1", "new-2"], ttl_ms=1000)
    now = harness.now_ms()
    assert reply[:3] == [now, epoch.encode(), 1]
    claimed = reply[3:]
    assert claimed[0] == b"new-1" and claimed[1] == b"a"
    assert json.loads(claimed[2])["prediction_id"] == "p1"
    assert claimed[3] == now - 2000 + 60_000  # the pin, unchanged
    assert len(claimed) == 5  # one orphan, one claim
    assert harness.live_holders() == 1
    assert harness.client.zscore(harness.keys.pins, "new-1") == claimed[3]
    info = json.loads(harness.client.hget(harness.keys.info, "new-1"))
    assert info["adopted_by"] == "adopter" and info["adopted_from"] == "a"
    assert info["prediction_id"] == "p1"
    # Its first holder, back, finds it gone; a waiter is still queued: nothing was freed.
    assert harness.renew([("a", epoch)])[2:] == [4]
    assert harness.acquire("b", ttl_ms=1000)[0] == 0
    # The adopter releases it once the prediction is terminal: the waiter gets it.
    assert harness.release("new-1") == 1
    assert harness.live_holders() == 1
    assert harness.client.zscore(harness.keys.holders, "b") is not None
    assert harness.client.zcard(harness.keys.pins) == 0


def test_a_holder_back_before_adoption_keeps_its_lease(harness: Harness, clock: FakeClock) -> None:
    harness.create(1)
    epoch = harness.acquire("a", ttl_ms=1000, pin_ms=60_000)[2].decode()
    clock.advance(3)
    harness.acquire("b", queue=False)  # runs purge: a is an orphan now
    assert harness.client.zcard(harness.keys.orphans) == 1
    assert harness.renew([("a", epoch)])[2:] == [1]
    assert harness.client.zcard(harness.keys.orphans) == 0
    assert harness.adopt(["new-1"])[3:] == []  # nothing left to adopt
    # Renewed to an ordinary expiry; its release frees the slot.
    assert harness.release("a") == 1
    assert harness.live_holders() == 0


def test_an_expired_pinned_lease_not_yet_purged_is_renewed_by_its_holder(
    harness: Harness, clock: FakeClock
) -> None:
    harness.create(1)
    epoch = harness.acquire("a", ttl_ms=1000, pin_ms=60_000)[2].decode()
    clock.advance(3)  # expired, but no script has looked since: the slot was never freed
    assert harness.renew([("a", epoch)])[2:] == [1]


def test_a_grant_pins_the_waiter_it_admits(harness: Harness, clock: FakeClock) -> None:
    harness.create(1)
    harness.acquire("a", ttl_ms=1000)
    harness.acquire("b", ttl_ms=1000, pin_ms=30_000)  # queued, asks for a pin
    assert harness.release("a") == 1  # granted to b
    assert harness.client.zscore(harness.keys.pins, "b") == harness.now_ms() + 30_000


def test_delete_removes_pins_and_orphans(harness: Harness, clock: FakeClock) -> None:
    harness.create(1)
    harness.acquire("a", ttl_ms=1000, pin_ms=60_000)
    clock.advance(2)
    harness.acquire("b", queue=False)
    harness.run("delete_semaphore", harness.keys.all, [harness.keys.channel])
    assert not harness.client.exists(harness.keys.pins, harness.keys.orphans)
