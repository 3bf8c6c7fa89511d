"""The Lua scripts' logic, on fakeredis with a controlled Redis clock (TIME)."""

from __future__ import annotations

from tests.unit.script_harness import FakeClock, Harness


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


def test_release_wakes_the_head_and_new_arrivals_do_not_barge(harness: Harness) -> None:
    harness.create(1)
    harness.acquire("a")
    harness.acquire("b")
    harness.acquire("c")
    harness.published()
    assert harness.release("a") == 1
    assert harness.published() == ["b"]
    # A newcomer finds a queue as long as the free slots: it queues behind c.
    assert harness.acquire("z")[0] == 0
    # c is not the head: it cannot take the slot b is entitled to.
    assert harness.acquire("c")[0] == 0
    assert harness.acquire("b")[0] == 1
    assert harness.acquire("c")[0] == 0


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
    # b cannot come back by renewing again.
    assert harness.renew([("b", epoch)])[2:] == [0]


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


def test_set_limit_wakes_the_waiters_it_admits(harness: Harness) -> None:
    harness.create(1)
    harness.acquire("a")
    harness.acquire("b")
    harness.acquire("c")
    harness.published()
    assert int(harness.run("set_limit", harness.keys.all, [3, harness.keys.channel])) == 1
    assert harness.published() == ["b c"]


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
