"""keep_waiting.lua: one call keeps a process's waiters queued, and grants what expiry frees."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from service.coordination.script_calls import Admitted, KeptWaiting, Queued
from service.coordination.semaphore import grant_is_late
from service.coordination.wake import Grant
from tests.unit.script_harness import FakeClock, Harness, done, redis_clock


def keep(
    harness: Harness,
    ids: Sequence[str],
    *,
    queue_ttl_ms: int = 3000,
    token: str = "tok1",
    keys_ttl_ms: int = 0,
) -> KeptWaiting:
    return done(
        harness.calls.keep_waiting(
            "s",
            waiter_ids=list(ids),
            queue_ttl_ms=queue_ttl_ms,
            local_token=token,
            keys_ttl_ms=keys_ttl_ms,
        )
    )


def grant_message(harness: Harness, *granted: tuple[str, int]) -> str:
    epoch = harness.client.hget(harness.keys.meta, "epoch").decode()
    limit = harness.client.hget(harness.keys.meta, "limit").decode()
    items = " ".join(f"{lease_id}:{expiry}" for lease_id, expiry in granted)
    return f"grant {harness.now_ms()} {limit} {epoch} {items}"


def test_refreshes_only_the_queued_ids_and_names_the_others(
    harness: Harness, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    redis_clock(monkeypatch, clock)
    harness.create(1)
    harness.acquire("h", ttl_ms=60_000)
    for waiter in ("a-tok1", "b-tok2", "c-tok1"):
        harness.acquire(waiter, queue_ttl_ms=3000)
    before = harness.members(harness.keys.qexp)
    clock.advance(1)
    kept = keep(harness, ["a-tok1", "c-tok1", "never-tok1"])
    after = harness.members(harness.keys.qexp)
    now = harness.now_ms()
    assert after == {"a-tok1": now + 3000, "b-tok2": before["b-tok2"], "c-tok1": now + 3000}
    # Nothing added for an id that was never queued: it is reported gone instead.
    assert kept.gone == ("never-tok1",)
    assert harness.queued() == ["a-tok1", "b-tok2", "c-tok1"]  # order untouched
    assert kept.local_grants == ""
    assert harness.published() == []
    # Its keys live on as an acquire_slot poll would keep them.
    assert harness.client.pttl(harness.keys.qexp) >= 9000


def test_a_kept_waiter_outlives_its_queue_ttl_and_an_unkept_one_lapses(
    harness: Harness, clock: FakeClock
) -> None:
    harness.create(1)
    harness.acquire("h", ttl_ms=60_000)
    harness.acquire("kept-tok1", queue_ttl_ms=3000)
    harness.acquire("dropped-tok1", queue_ttl_ms=3000)
    for _ in range(5):  # 5 s: longer than the queue TTL
        clock.advance(1)
        kept = keep(harness, ["kept-tok1"])
        assert kept.gone == ()
    assert harness.queued() == ["kept-tok1"]
    # The one no longer kept is gone for good: not revived if its process asks again late.
    assert keep(harness, ["kept-tok1", "dropped-tok1"]).gone == ("dropped-tok1",)
    assert harness.queued() == ["kept-tok1"]


def test_an_entry_already_expired_is_not_revived(harness: Harness, clock: FakeClock) -> None:
    harness.create(1)
    harness.acquire("h", ttl_ms=60_000)
    harness.acquire("late-tok1", queue_ttl_ms=1000)
    harness.acquire("next-tok2", queue_ttl_ms=60_000)
    clock.advance(1.5)
    assert keep(harness, ["late-tok1"]).gone == ("late-tok1",)
    assert harness.queued() == ["next-tok2"]


def test_grants_slots_freed_by_expiry_to_the_heads_in_order_with_messages(
    harness: Harness, clock: FakeClock
) -> None:
    harness.create(2)
    harness.acquire("h1", ttl_ms=1000)
    harness.acquire("h2", ttl_ms=1000)
    for waiter in ("a-tok2", "b-tok1", "c-tok1", "d-tok2"):
        harness.acquire(waiter, ttl_ms=60_000, queue_ttl_ms=60_000)
    harness.published()
    clock.advance(1.5)  # both holders expired: nobody released, no message was sent
    kept = keep(harness, ["b-tok1", "c-tok1"], queue_ttl_ms=60_000)
    now = harness.now_ms()
    # The two heads (a from another process, b from this one), first come first served; each
    # grant until its entry's expiry (b's refreshed by this call, a's not).
    a_expiry = now - 1500 + 60_000
    assert harness.holder_expiry("a-tok2") == a_expiry
    assert harness.holder_expiry("b-tok1") == now + 60_000
    assert harness.queued() == ["c-tok1", "d-tok2"]
    # The other process's grant is published to it; this process's comes back in the reply.
    assert harness.published_on() == [
        (f"{harness.keys.channel}:tok2", grant_message(harness, ("a-tok2", a_expiry)))
    ]
    assert kept.local_grants == grant_message(harness, ("b-tok1", now + 60_000))
    # The granted waiter is no longer queued: reported, so it polls (or takes its grant).
    assert kept.gone == ("b-tok1",)
    assert harness.client.hget(harness.keys.stats, "expired") == b"2"
    # No barging: a newcomer queues behind c and d.
    assert isinstance(harness.acquire("z"), Queued)
    assert isinstance(harness.acquire("b-tok1", ttl_ms=60_000), Admitted)


def test_a_grant_lasts_until_the_refreshed_entry_expiry(harness: Harness, clock: FakeClock) -> None:
    harness.create(1)
    harness.acquire("h", ttl_ms=1000)
    harness.acquire("w-tok1", ttl_ms=60_000, queue_ttl_ms=3000)
    clock.advance(1.5)
    kept = keep(harness, ["w-tok1"], queue_ttl_ms=3000)
    # Refreshed before the grant: a grant to a waiter whose process then dies lapses one queue
    # TTL from now, with the entry it replaced.
    assert harness.holder_expiry("w-tok1") == harness.now_ms() + 3000
    assert kept.gone == ("w-tok1",)


def test_the_hint_is_acquire_slots(harness: Harness, clock: FakeClock) -> None:
    harness.create(1)
    harness.acquire("h", ttl_ms=60_000)
    harness.acquire("w-tok1", queue_ttl_ms=3000)
    assert keep(harness, ["w-tok1"]).retry_hint_ms == 1000  # queue TTL / 3
    assert keep(harness, ["w-tok1"], queue_ttl_ms=300_000).retry_hint_ms == 60_001  # lease expiry
    harness.release("h")  # granted to w
    harness.acquire("h2", ttl_ms=60_000)
    clock.advance(0.5)
    # The nearest holder expiry: w's grant, until its entry's expiry.
    expiry = harness.holder_expiry("w-tok1") or 0
    assert keep(harness, [], queue_ttl_ms=300_000).retry_hint_ms == expiry - harness.now_ms() + 1
    # Same hint as an acquire_slot poll at that moment.
    reply = harness.acquire("q", queue_ttl_ms=300_000)
    assert isinstance(reply, Queued)
    assert keep(harness, [], queue_ttl_ms=300_000).retry_hint_ms == reply.retry_hint_ms


def test_the_end_of_a_grace_is_hinted_and_then_granted(harness: Harness, clock: FakeClock) -> None:
    harness.acquire("first", create_limit=1, grace_ms=2000, ttl_ms=60_000)  # created in grace
    harness.acquire("w-tok1", ttl_ms=60_000, queue_ttl_ms=60_000)
    harness.release("first")
    grace_until = int(harness.client.hget(harness.keys.meta, "grace_until"))
    assert harness.queued() == ["w-tok1"]  # no grant during the grace
    assert keep(harness, ["w-tok1"], queue_ttl_ms=60_000).retry_hint_ms == (
        grace_until - harness.now_ms() + 1
    )
    clock.advance(2.1)
    kept = keep(harness, ["w-tok1"], queue_ttl_ms=60_000)
    assert kept.gone == ("w-tok1",)
    assert kept.local_grants.startswith("grant ")
    assert harness.holder_expiry("w-tok1") is not None


def test_a_missing_semaphore_sends_every_waiter_to_poll(harness: Harness) -> None:
    harness.create(1)
    harness.acquire("h")
    harness.acquire("w-tok1")
    harness.delete()
    kept = keep(harness, ["w-tok1", "v-tok1"])
    assert kept.gone == ("w-tok1", "v-tok1")
    assert harness.client.exists(harness.keys.meta) == 0  # nothing written


def test_many_ids_in_one_call(harness: Harness, clock: FakeClock) -> None:
    harness.create(1)
    harness.acquire("h", ttl_ms=60_000)
    ids = [f"w{i}-tok1" for i in range(2500)]  # more than one chunk of the script
    for waiter in ids:
        harness.acquire(waiter, ttl_ms=60_000, queue_ttl_ms=3000)
    clock.advance(2)
    kept = keep(harness, [*ids, "x-tok1"])
    assert kept.gone == ("x-tok1",)
    assert set(harness.members(harness.keys.qexp).values()) == {harness.now_ms() + 3000}


def test_keys_ttl_is_kept_as_an_attempt_would(harness: Harness) -> None:
    harness.acquire("h", create_limit=1, ttl_ms=60_000)
    harness.acquire("w-tok1", create_limit=1, queue_ttl_ms=3000)
    harness.client.pexpire(harness.keys.meta, 1000)
    keep(harness, ["w-tok1"], keys_ttl_ms=86_400_000)
    assert harness.client.pttl(harness.keys.meta) > 1000


def test_reports_the_orphans_its_purge_made(harness: Harness, clock: FakeClock) -> None:
    harness.create(1)
    harness.acquire("pinned", ttl_ms=1000, pin_ms=60_000)  # its prediction may run a minute
    harness.acquire("w-tok1", ttl_ms=60_000, queue_ttl_ms=60_000)
    assert keep(harness, ["w-tok1"], queue_ttl_ms=60_000).orphans == 0
    clock.advance(1.5)  # expired unrenewed: orphaned, not freed, and not granted to w
    kept = keep(harness, ["w-tok1"], queue_ttl_ms=60_000)
    assert kept.orphans == 1
    assert kept.gone == ()
    assert harness.queued() == ["w-tok1"]


def test_an_expired_entry_the_purge_has_not_reached_is_gone_and_not_refreshed(
    harness: Harness, clock: FakeClock
) -> None:
    # An outside attack: after a freeze, a process's own expired entries that the purge's batch
    # had not reached yet were neither refreshed nor reported gone: their waiters learnt it only
    # calls later.
    harness.create(1)
    harness.acquire("h", ttl_ms=60_000)
    for i in range(100):  # more expired entries than one purge removes, all expiring first
        harness.acquire(f"old{i:03d}-tok2", queue_ttl_ms=1000)
    clock.advance(0.1)
    harness.acquire("w-tok1", queue_ttl_ms=1000)
    clock.advance(1.5)
    expired_at = harness.members(harness.keys.qexp)["w-tok1"]
    kept = keep(harness, ["w-tok1"])
    assert kept.gone == ("w-tok1",)
    assert harness.members(harness.keys.qexp).get("w-tok1") in (None, expired_at)


def test_a_slot_free_behind_more_dead_heads_than_one_call_drops_is_hinted_at_once(
    harness: Harness, clock: FakeClock
) -> None:
    # An outside attack: a live waiter behind 3,000 dead ones (their process died) got a freed
    # slot ~9 keepalive intervals late: each call drops a few hundred, then hinted the usual.
    harness.create(1)
    harness.acquire("h", ttl_ms=1000)
    for i in range(1000):
        harness.acquire(f"dead{i:04d}-tok2", queue_ttl_ms=1000)
    harness.acquire("w-tok1", ttl_ms=60_000, queue_ttl_ms=60_000)
    clock.advance(1.5)  # h expired (its slot is free), the 1,000 dead entries too
    first = keep(harness, ["w-tok1"], queue_ttl_ms=60_000)
    assert first.gone == () and first.local_grants == ""
    assert first.retry_hint_ms == 1  # dead heads left ahead of a free slot: call again at once
    # So does a poll that finds a slot free that is not its own (try-once here).
    polled = harness.acquire("z", queue=False)
    assert isinstance(polled, Queued) and polled.retry_hint_ms == 1
    calls = 1
    while not (kept := keep(harness, ["w-tok1"], queue_ttl_ms=60_000)).gone:
        assert kept.retry_hint_ms == 1
        calls += 1
    assert calls <= 3  # each call (and the poll) dropped a few hundred
    assert kept.gone == ("w-tok1",)
    assert kept.local_grants.startswith("grant ")
    assert kept.retry_hint_ms > 1
    assert harness.queued() == []


def test_a_grant_is_late_past_five_percent_of_its_validity() -> None:
    grant = Grant(granted_at_ms=100_000, expires_at_ms=110_000, epoch="e", limit=1)  # valid 10 s
    assert not grant_is_late(grant, 100.0)
    assert not grant_is_late(grant, 100.5)  # 0.5 s late: inside the local clock's margin
    assert grant_is_late(grant, 100.501)
    assert not grant_is_late(grant, 99.0)  # this host's clock behind Redis: read on time
