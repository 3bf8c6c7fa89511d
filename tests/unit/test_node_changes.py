"""Per-node loss detection in the scripts (check_node, node_tag in lib/semaphore.lua;
note_nodes.lua), on fakeredis with a controlled clock and a node identity the tests change:
a restart keeps or loses the data, a failover promotes a replica that missed some writes."""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from service.coordination.book import LeaseBook
from service.coordination.keys import GLOBAL, KeySpace
from service.coordination.nodes import ONE_NODE, NodeState, NodeWatch
from service.coordination.script_calls import (
    Admitted,
    NodesNoted,
    Queued,
    RenewCode,
    ScriptCalls,
)
from service.coordination.scripts import Scripts
from tests.unit.script_harness import FakeClock, Harness, done

TTL_MS = 1000


def epoch_of(harness: Harness) -> str:
    return harness.client.hget(harness.keys.meta, "epoch").decode()


def grace_until(harness: Harness) -> int:
    return int(harness.client.hget(harness.keys.meta, "grace_until") or 0)


def note(harness: Harness, *nodes: tuple[str, int]) -> NodesNoted:
    return done(harness.calls.note_nodes(token="tok", ttl_ms=TTL_MS, nodes=list(nodes)))


def test_every_epoch_names_the_node_it_began_on(harness: Harness) -> None:
    harness.create(1)
    assert epoch_of(harness).endswith("@" + harness.node_tag())
    assert harness.client.hget(harness.keys.meta, "node").decode() == harness.node_tag()


def test_a_failover_that_lost_a_grant_admits_nobody_until_its_holder_reasserts(
    harness: Harness, clock: FakeClock
) -> None:
    harness.create(1)
    held = harness.acquire("a", ttl_ms=TTL_MS)
    assert isinstance(held, Admitted)
    # The replica promoted never received the grant of "a".
    harness.promote_replica(lost=[(harness.keys.holders, "a"), (harness.keys.info, "a")])
    reply = harness.acquire("b", ttl_ms=TTL_MS)
    assert isinstance(reply, Queued), "a second holder on a limit of 1"
    assert epoch_of(harness) != held.epoch and epoch_of(harness).endswith(harness.node_tag())
    assert grace_until(harness) == harness.now_ms() + TTL_MS
    assert harness.client.hget(harness.keys.stats, "node_changed") == b"1"
    clock.advance(0.3)
    renewal = harness.renew([("a", held.epoch)], ttl_ms=TTL_MS, create_limit=1)
    assert renewal.codes == (RenewCode.REASSERTED,)
    clock.advance(0.8)  # the grace is over: "a" holds the one slot
    assert isinstance(harness.acquire("b", ttl_ms=TTL_MS), Queued)
    harness.release("a")
    assert harness.holder_expiry("b") is not None, "the slot went to the waiter"


def test_a_failover_is_seen_by_a_release_before_it_grants(harness: Harness) -> None:
    harness.create(1)
    held = harness.acquire("a", ttl_ms=TTL_MS)
    harness.acquire("b", ttl_ms=TTL_MS)
    harness.acquire("c", ttl_ms=TTL_MS)
    assert isinstance(held, Admitted)
    # The promoted replica has everything here, but cannot know it: a lease it never received
    # would look just like a free slot. So b, next in the queue, waits out the grace.
    harness.promote_replica()
    harness.release("a")
    assert harness.holder_expiry("b") is None, "granted on a node that may have lost leases"
    assert harness.queued() == ["b", "c"]


def test_a_restart_that_kept_its_data_still_opens_a_grace(harness: Harness) -> None:
    """AOF everysec may lose the last second: the same check as a failover."""
    harness.create(1)
    before = epoch_of(harness)
    harness.restart_node(keep=True)
    assert isinstance(harness.acquire("a", ttl_ms=TTL_MS), Queued)
    assert epoch_of(harness) != before


def test_a_semaphore_of_an_older_version_records_its_node_without_a_grace(
    harness: Harness,
) -> None:
    harness.create(1)
    harness.client.hdel(harness.keys.meta, "node")
    assert isinstance(harness.acquire("a", ttl_ms=TTL_MS), Admitted)
    assert harness.client.hget(harness.keys.meta, "node").decode() == harness.node_tag()


def test_a_semaphore_created_where_the_caller_knows_the_node_gets_the_callers_grace(
    harness: Harness,
) -> None:
    reply = harness.acquire("a", ttl_ms=TTL_MS, create_limit=2, grace_ms=0)
    assert isinstance(reply, Admitted)


def test_one_created_on_a_node_the_caller_does_not_know_gets_a_full_ttl(
    harness: Harness,
) -> None:
    stale = harness.node_tag()
    harness.restart_node()  # empty, and the caller has not read the new tag yet
    reply = harness.acquire("a", ttl_ms=TTL_MS, create_limit=2, grace_ms=0, node_hint=stale)
    assert isinstance(reply, Queued)
    assert grace_until(harness) == harness.now_ms() + TTL_MS


def test_a_renewal_recreates_what_its_node_lost_but_not_what_was_deleted(
    harness: Harness, clock: FakeClock
) -> None:
    held = harness.acquire("a", ttl_ms=TTL_MS, create_limit=2)
    assert isinstance(held, Admitted)
    # Deleted on the same node: lost, never re-created (the caller suspects nothing).
    harness.delete()
    renewal = harness.renew([("a", held.epoch)], create_limit=2, recreate_always=False)
    assert renewal.codes == (RenewCode.DELETED,)
    assert harness.client.exists(harness.keys.meta) == 0
    # Gone with a node that restarted empty: re-created with a grace, and re-asserted.
    held = harness.acquire("a", ttl_ms=TTL_MS, create_limit=2)
    assert isinstance(held, Admitted)
    harness.restart_node()
    renewal = harness.renew([("a", held.epoch)], create_limit=2, recreate_always=False)
    assert renewal.codes == (RenewCode.REASSERTED,)
    assert renewal.epoch.endswith("@" + harness.node_tag())
    assert isinstance(harness.acquire("b", ttl_ms=TTL_MS, create_limit=2), Queued)


def test_a_lease_its_holder_no_longer_trusts_is_never_reasserted(harness: Harness) -> None:
    held = harness.acquire("a", ttl_ms=TTL_MS, create_limit=1)
    assert isinstance(held, Admitted)
    harness.promote_replica(lost=[(harness.keys.holders, "a")])
    renewal = harness.renew([("a", "")], create_limit=1)
    assert renewal.codes == (RenewCode.GONE,)


def test_the_registry_trusts_an_intact_store_and_the_operators_new(harness: Harness) -> None:
    harness.client.set("t:epoch", "intact")
    noted = note(harness, ("n1", 500), ("n2", 10_000_000))
    assert (noted.epoch, noted.created, noted.young_ms) == ("intact", False, (0, 0))
    # A tag seen after that is a node that restarted or was promoted: young for one TTL.
    assert note(harness, ("n1", 500), ("n3", 10_000_000)).young_ms == (0, TTL_MS)
    # The operator's word for a brand-new deployment: every node trusted, the epoch replaced.
    harness.client.set("t:epoch", "new")
    noted = note(harness, ("n4", 10))
    assert (noted.epoch, noted.created, noted.young_ms) == ("tok", False, (0,))


def test_a_store_without_an_epoch_is_young_until_one_ttl_after_each_node_started(
    harness: Harness, clock: FakeClock
) -> None:
    noted = note(harness, ("n1", 300), ("n2", 5000))
    assert (noted.epoch, noted.created, noted.young_ms) == ("tok", True, (700, 0))
    clock.advance(0.5)
    assert note(harness, ("n1", 800), ("n2", 5500)).young_ms == (200, 0)


def test_a_semaphore_gone_from_a_young_node_waits_out_what_is_left_of_its_youth() -> None:
    """LeaseBook.grace_ms_for: the rest of the suspicion of the node serving it (or of every
    node), not a full TTL; a full TTL only for a semaphore this process used lately."""
    client = aioredis.Redis()  # never connects here
    scripts = Scripts(client)
    nodes = NodeWatch(client=client, calls=ScriptCalls(scripts, KeySpace()), lease_ttl_s=30)
    semaphores = LeaseBook(keyspace=KeySpace(), lease_ttl_s=30, nodes=nodes)
    assert semaphores.grace_ms_for(GLOBAL, "s") == 0
    assert semaphores.node_hint(GLOBAL, "s") == ""
    nodes.nodes[ONE_NODE] = NodeState(tag="t" * 16, young_until=time.monotonic() + 2.0)
    assert 1800 < semaphores.grace_ms_for(GLOBAL, "s") <= 2000
    assert semaphores.node_hint(GLOBAL, "s") == "t" * 16
    assert semaphores.loss_suspected_until == nodes.nodes[ONE_NODE].young_until
    semaphores.suspect_all(5.0)  # the epoch changed: every semaphore, a bit longer
    assert 4800 < semaphores.grace_ms_for(GLOBAL, "s") <= 5000
    semaphores.all_suspected_until = 0.0
    nodes.nodes[ONE_NODE] = NodeState(tag="t" * 16, young_until=time.monotonic() - 1)
    assert semaphores.grace_ms_for(GLOBAL, "s") == 0


async def test_a_node_that_is_not_young_has_no_youth_at_all() -> None:
    """note_nodes says 0 ms for a node that is not young: its youth is 0.0, not "until the
    refresh", which `monotonic() < loss_suspected_until + TTL` (GraceWatch) would read as a
    suspicion for one more TTL after every refresh, that is always."""
    client = aioredis.Redis()  # never connects here
    calls = ScriptCalls(Scripts(client), KeySpace())
    nodes = NodeWatch(client=client, calls=calls, lease_ttl_s=30)
    semaphores = LeaseBook(keyspace=KeySpace(), lease_ttl_s=30, nodes=nodes)
    young_ms = [0]

    async def read() -> dict[str, tuple[str, int]]:
        return {ONE_NODE: ("t" * 16, 10_000_000)}

    async def note_nodes(**_: object) -> NodesNoted:
        return NodesNoted(epoch="e", created=False, young_ms=tuple(young_ms))

    nodes._read = read  # type: ignore[method-assign]
    calls.note_nodes = note_nodes  # type: ignore[method-assign]
    await nodes.refresh("tok")
    assert nodes.nodes[ONE_NODE].young_until == 0.0
    assert nodes.young_until_any == 0.0 and semaphores.loss_suspected_until == 0.0
    assert time.monotonic() >= semaphores.loss_suspected_until + 30  # GraceWatch stays idle
    assert semaphores.grace_ms_for(GLOBAL, "s") == 0
    young_ms[0] = 1500  # a young node: until one TTL after it was first seen
    before = time.monotonic()
    await nodes.refresh("tok")
    assert before + 1.5 <= nodes.nodes[ONE_NODE].young_until <= time.monotonic() + 1.5
    assert 1000 < semaphores.grace_ms_for(GLOBAL, "s") <= 1500
