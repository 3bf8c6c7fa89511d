"""A pinned lease re-asserted after its node lost it comes back pinned (docs/redis-ha.md, "What
cannot be re-asserted"): renew_leases on fakeredis with a controlled Redis clock, and the
holder's side, which reckons what is left of its pin on its own monotonic clock."""

from __future__ import annotations

import json
import time
import types
from collections.abc import Sequence
from typing import Any

import fakeredis
import pytest
import redis.asyncio as aioredis

from service.coordination import lease as lease_module
from service.coordination.book import LeaseBook
from service.coordination.keys import GLOBAL
from service.coordination.lease import Holder, Lease
from service.coordination.nodes import NodeWatch
from service.coordination.renewal import Renewer
from service.coordination.script_calls import (
    Admitted,
    LeaseToRenew,
    Queued,
    Renewal,
    RenewCode,
    ScriptCalls,
)
from tests.unit.script_harness import HOLDER, FakeClock, FakeScripts, Harness, done

PIN_MS = 60_000


def renew(
    harness: Harness, *leases: LeaseToRenew, limit: int = 1, recreate_always: bool = True
) -> Renewal:
    return done(
        harness.calls.renew_leases(
            "s",
            ttl_ms=1000,
            leases=leases,
            recreate_limit=limit,
            grace_ms=1000,
            recreate_always=recreate_always,
        )
    )


def pinned(harness: Harness, lease_id: str) -> str:
    reply = harness.acquire(lease_id, ttl_ms=1000, pin_ms=PIN_MS)
    assert isinstance(reply, Admitted), reply
    return reply.epoch


def test_a_reasserted_lease_is_pinned_for_what_its_holder_says_is_left(
    harness: Harness, clock: FakeClock
) -> None:
    harness.create(1)
    epoch = pinned(harness, "a")
    harness.restart_node()  # empty: the lease and its pin are gone
    clock.advance(0.3)
    record = json.dumps({**HOLDER, "prediction_id": "p1"})
    reply = renew(harness, LeaseToRenew("a", epoch, record, pin_left_ms=59_000))
    assert reply.codes == (RenewCode.REASSERTED,)
    assert harness.members(harness.keys.pins) == {"a": harness.now_ms() + 59_000}
    assert harness.client.hget(harness.keys.info, "a") == record.encode()
    # The keys outlive the pin, or the slot would vanish with them while its work may run.
    for key in (harness.keys.holders, harness.keys.info, harness.keys.pins):
        assert harness.client.pttl(key) > 59_000
    clock.advance(5)  # its holder died: the lease expired unrenewed, the grace is over
    waiting = harness.acquire("b", queue=False)
    assert isinstance(waiting, Queued) and waiting.orphans == 1  # an orphan, not freed
    assert harness.live_holders() == 1


def test_a_reasserted_lease_with_no_pin_left_is_freed_at_expiry(
    harness: Harness, clock: FakeClock
) -> None:
    harness.create(1)
    epoch = pinned(harness, "a")
    harness.restart_node()
    assert renew(harness, LeaseToRenew("a", epoch, "{}")).codes == (RenewCode.REASSERTED,)
    assert harness.client.zcard(harness.keys.pins) == 0
    clock.advance(5)
    assert isinstance(harness.acquire("b", queue=False), Admitted)


def test_the_leases_node_is_read_from_each_lease_sent(harness: Harness) -> None:
    """The semaphore is gone; only the second lease's epoch began on another node: re-created
    (a node lost it), not taken for deleted."""
    harness.create(2)
    epoch = pinned(harness, "a")
    harness.restart_node()
    here = f"1:x@{harness.node_tag()}"
    reply = renew(
        harness,
        LeaseToRenew("b", here, "{}", pin_left_ms=PIN_MS),
        LeaseToRenew("a", epoch, "{}", pin_left_ms=PIN_MS),
        limit=2,
        recreate_always=False,
    )
    assert reply.codes == (RenewCode.REASSERTED, RenewCode.REASSERTED)


def test_a_lease_counts_its_pin_down_on_the_local_monotonic_clock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    monkeypatch.setattr(lease_module, "time", types.SimpleNamespace(monotonic=lambda: now[0]))

    def lease(pin_s: float) -> Lease:
        return Lease(
            owner=Owner(),
            semaphore_id="s",
            kind=GLOBAL,
            lease_id="a",
            expires_at_ms=0,
            epoch="",
            limit=1,
            ttl_s=1.0,
            holder=Holder(replica="r"),
            keys_ttl_ms=0,
            pin_s=pin_s,
        )

    unpinned, pinned_lease = lease(0.0), lease(60.0)
    assert (unpinned.pin_left_ms(), pinned_lease.pin_left_ms()) == (0, 60_000)
    now[0] += 20.0004
    assert pinned_lease.pin_left_ms() == 40_000  # rounded up: never shorter than Redis' pin
    now[0] += 40
    assert (unpinned.pin_left_ms(), pinned_lease.pin_left_ms()) == (0, 0)


class Owner:
    """A lease owner whose annotation writes through the scripts (Semaphores.annotate)."""

    def __init__(self, calls: ScriptCalls | None = None) -> None:
        self.calls = calls

    async def release(self, lease: Lease) -> bool:
        return False

    async def annotate(self, lease: Lease) -> bool:
        assert self.calls is not None
        return await self.calls.annotate_lease(
            lease.semaphore_id,
            lease.kind,
            lease_id=lease.lease_id,
            holder_json=lease.holder.to_json(),
        )

    def forget(self, lease: Lease) -> None:
        pass


class AnnotatedInFlight(FakeScripts):
    """The holder learns its prediction id while its renewal is in flight; the annotation, run
    first on the node that lost the lease, found nothing to write."""

    def __init__(self, client: fakeredis.FakeRedis, holder: Holder) -> None:
        super().__init__(client)
        self.holder = holder

    async def call(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        if name == "renew_leases":
            self.holder.prediction_id = "p1"
        return await super().call(name, keys, args)


async def test_the_renewer_reasserts_a_lease_with_its_pin_and_latest_record(
    harness: Harness,
) -> None:
    harness.create(1)
    epoch = pinned(harness, "a")
    holder = Holder(replica="r")
    scripts = AnnotatedInFlight(harness.client, holder)
    lease = Lease(
        owner=Owner(ScriptCalls(scripts, harness.keyspace)),
        semaphore_id="s",
        kind=GLOBAL,
        lease_id="a",
        expires_at_ms=0,
        epoch=epoch,
        limit=1,
        ttl_s=1.0,
        holder=holder,
        keys_ttl_ms=0,
        pin_s=PIN_MS / 1000,
    )
    learned_at = time.monotonic()
    harness.restart_node()
    keyspace = harness.keyspace
    client = aioredis.Redis()  # never connects here
    book = LeaseBook(keyspace=keyspace, lease_ttl_s=1.0)
    nodes = NodeWatch(client=client, calls=ScriptCalls(scripts, keyspace), lease_ttl_s=1.0)
    renewer = Renewer(
        scripts=scripts,  # type: ignore[arg-type]
        keyspace=keyspace,
        book=book,
        nodes=nodes,
    )
    await renewer.renew_group([lease])
    assert not lease.lost.is_set()
    left_ms = harness.members(harness.keys.pins)["a"] - harness.now_ms()
    assert PIN_MS - (time.monotonic() - learned_at) * 1000 - 1 <= left_ms <= PIN_MS
    assert json.loads(harness.client.hget(harness.keys.info, "a"))["prediction_id"] == "p1"
    await client.aclose()
