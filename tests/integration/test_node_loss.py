"""One node loses data under live holders, with real processes on a real Redis Cluster and a
real Sentinel set: never more holders than the limit, and acquisition resumes by itself
(docs/redis-ha.md, "Per-node loss detection").

- a Cluster shard restarted empty (the epoch key lives on another shard);
- a Sentinel failover to a replica that missed the grant of a slot;
- a Cluster failover to a replica that missed the grant of a slot.

A lost write is forced, not hoped for: the replica is stopped (SIGSTOP), its link is cut on
the primary (`CLIENT KILL TYPE replica`) before the slot is taken, so the primary never sends
the grant (cut after it, the grant already sits in the paused replica's socket and is applied
on resume: measured, 3 of 3), then the primary is killed (SIGKILL), the replica resumed
(SIGCONT) and promoted. Each holder is a `sem_worker spell` process that prints when it got a
slot and when it stopped using it; the overlap of those intervals, on one machine's clock,
is the number of holders at once.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from service.coordination import Coordinator, CoordinatorConfig
from tests.fixtures.procs import LineProcess
from tests.fixtures.redis_cluster import ClusterNodeProcess, RedisClusterNodes
from tests.fixtures.redis_sentinel import RedisSentinelSet, ServerProcess
from tests.integration.test_redis_modes import (
    _reset_cluster,
    _reset_sentinel,
    _started,
    cluster_options,
    sentinel_options,
)

pytestmark = [pytest.mark.redis, pytest.mark.slow]

TTL_S = 8.0  # longer than a failover here (2-3.5 s), so a live holder keeps renewing through it
HOLD_MS = 15_000  # the holder outlasts the failover and the grace that follows it


@pytest.fixture
def own_cluster() -> Iterator[RedisClusterNodes]:
    with _started(RedisClusterNodes) as cluster:
        _reset_cluster(cluster)
        yield cluster


@pytest.fixture
def own_sentinel_set() -> Iterator[RedisSentinelSet]:
    with _started(RedisSentinelSet) as sentinel_set:
        _reset_sentinel(sentinel_set)
        yield sentinel_set


def worker_args(options: dict[str, Any]) -> list[str]:
    args = ["--url", options["redis_url"]]
    if options.get("cluster"):
        args.append("--cluster")
    if options.get("sentinels"):
        args += [
            "--sentinels",
            options["sentinels"],
            "--sentinel-master",
            options["sentinel_master"],
        ]
    return args


def spell(where: list[str], semaphore: str, tag: str, *extra: str) -> LineProcess:
    return LineProcess.python_module(
        "tests.integration.sem_worker",
        "spell",
        *where,
        "--semaphore",
        semaphore,
        "--tag",
        tag,
        "--ttl",
        str(TTL_S),
        *extra,
    )


def events(process: LineProcess) -> list[dict[str, Any]]:
    return [json.loads(line) for line in process.drain() if line.startswith("{")]


def intervals(*processes: LineProcess) -> list[tuple[float, float, str]]:
    """(got, stopped using it, how) per lease; a lease still held counts until forever."""
    found: list[tuple[float, float, str]] = []
    for process in processes:
        got: dict[str, float] = {}
        ended: dict[str, tuple[float, str]] = {}
        for event in events(process):
            if "got" in event:
                got[event["got"]] = event["at"]
            else:
                ended[event["end"]] = (event["at"], event["how"])
        for lease_id, began in got.items():
            at, how = ended.get(lease_id, (math.inf, "held"))
            found.append((began, at, how))
    return found


def max_overlap(spans: list[tuple[float, float, str]]) -> int:
    points = sorted([(s, 1) for s, _, _ in spans] + [(e, -1) for _, e, _ in spans])
    current = peak = 0
    for _, delta in points:  # an end before a start at the same instant
        current += delta
        peak = max(peak, current)
    return peak


def wait_for_lines(process: LineProcess, prefix: str, count: int, timeout: float = 30) -> None:
    for _ in range(count):
        process.wait_for(prefix, timeout=timeout)


async def registered(options: dict[str, Any], semaphore_id: str, limit: int) -> None:
    c = Coordinator(CoordinatorConfig(**{**options, "replica_id": "setup"}))
    await c.start()
    try:
        await c.registry.create(semaphore_id, limit)
    finally:
        await c.close()


async def counters(options: dict[str, Any], semaphore_id: str) -> dict[str, int]:
    c = Coordinator(CoordinatorConfig(**{**options, "replica_id": "check"}))
    await c.start()
    try:
        return (await c.registry.view(semaphore_id, detail=True)).counters
    finally:
        await c.close()


def finish(*processes: LineProcess, timeout: float = 90) -> None:
    try:
        for process in processes:
            process.wait_for("DONE", timeout=timeout)
    finally:
        for process in processes:
            process.stop()


def report(name: str, spans: list[tuple[float, float, str]], peak: int) -> None:
    first = min(s for s, _, _ in spans)
    shown = [(round(s - first, 2), round(e - first, 2), how) for s, e, how in spans]
    print(f"{name}: peak {peak} holders; intervals {sorted(shown)}")


def serving(node: redis.Redis, timeout_s: float = 30) -> None:
    """Until the cluster, as `node` sees it, is ok (it serves its slots again)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if node.cluster("INFO").get("cluster_state") == "ok":
                return
        except redis.RedisError:
            pass
        assert time.monotonic() < deadline, "the cluster never served the restarted shard"
        time.sleep(0.01)


def semaphore_beside_the_epoch(cluster: RedisClusterNodes, prefix: str = "rcg") -> str:
    """A semaphore id whose keys live on another shard than the epoch key (the case where a
    loss detected by the epoch alone goes unseen)."""
    epoch_node = cluster.node_for_key(f"{prefix}:epoch")
    for index in range(100):
        semaphore_id = f"shard-{index}"
        if cluster.node_for_key(f"{prefix}:{{sem:{semaphore_id}}}:meta") != epoch_node:
            return semaphore_id
    raise AssertionError("every id landed beside the epoch")


async def test_a_cluster_shard_restarted_empty_admits_nobody_beside_the_holders_it_forgot(
    own_cluster: RedisClusterNodes,
) -> None:
    cluster = own_cluster
    semaphore = semaphore_beside_the_epoch(cluster)
    where = [*worker_args(cluster_options(cluster)), "--declare", f"{semaphore}=2"]
    holder = spell(where, semaphore, "h", "--count", "2", "--hold-ms", str(HOLD_MS))
    # Two processes that never used the semaphore: one running already, which asks the moment
    # the shard is back (a process takes a second to start), and one that starts after it
    # (it never saw the shard as it was).
    eager = spell(where, semaphore, "e", "--count", "2", "--hold-ms", "300", "--wait-signal")
    late: LineProcess | None = None
    try:
        wait_for_lines(holder, '{"got"', 2)
        eager.wait_for("WAITING")
        meta = f"rcg:{{sem:{semaphore}}}:meta"
        victim = cluster.node_for_key(meta)
        # Its replica must not take over while it restarts (a slow restart would make this a
        # failover that loses nothing): the node comes back empty and serves its slots again.
        replica = cluster_replica_of(cluster, victim).client()
        try:
            replica.config_set("cluster-replica-no-failover", "yes")
        finally:
            replica.close()
        cluster.restart(victim)  # back empty; its replica resyncs from it, empty too
        restarted = victim.client()
        try:
            assert restarted.dbsize() == 0, "the shard came back empty"
            serving(restarted)
        finally:
            restarted.close()
        eager.signal(signal.SIGUSR1)  # the moment the cluster serves the shard again
        cluster.wait_until_ok()
        assert cluster.node_for_key(meta) is victim, "the restarted node serves the slot"
        late = spell(where, semaphore, "l", "--hold-ms", "300", "--timeout", "40")
        finish(holder, eager, late)
    finally:
        for process in (holder, eager, late):
            if process is not None:
                process.stop()
    spans = intervals(holder, eager, late)
    peak = max_overlap(spans)
    report("shard restarted empty", spans, peak)
    assert peak <= 2, f"{peak} holders on a limit of 2"
    assert len(intervals(eager, late)) == 3, "acquisition resumed by itself"
    assert [how for _, _, how in intervals(holder)] == ["released", "released"], (
        "the live holders re-asserted their leases"
    )


async def failover_losing_a_grant(
    *,
    options: dict[str, Any],
    semaphore: str,
    primary_of: Any,
    replica_of: Any,
    kill: Any,
    promoted: Any,
    live_url: Any,
) -> None:
    """Take a slot on a primary whose replica never gets it, fail over to that replica, and
    let another process ask for the slot: it must wait while the holder re-asserts its lease.
    `live_url`: a node to read the counters from afterwards (the options may name the dead
    one)."""
    await registered(options, semaphore, 1)
    where = worker_args(options)
    primary, replica = primary_of(), replica_of()
    client = primary.client()
    try:
        client.wait(1, 5000)  # the replica has the semaphore itself
        holder = spell(where, semaphore, "a", "--hold-ms", str(HOLD_MS), "--wait-signal")
        # Running already (a process takes a second to start), it asks the moment the
        # replica is promoted; it never used the semaphore.
        newcomer = spell(
            where, semaphore, "n", "--hold-ms", "300", "--timeout", "40", "--wait-signal"
        )
        try:
            holder.wait_for("WAITING")
            newcomer.wait_for("WAITING")
            os.kill(replica.process.pid, signal.SIGSTOP)
            try:
                assert client.client_kill_filter(_type="replica") == 1
                holder.signal(signal.SIGUSR1)
                holder.wait_for('{"got"')
                kill(primary)
            finally:
                os.kill(replica.process.pid, signal.SIGCONT)
            promoted(primary)
            newcomer.signal(signal.SIGUSR1)
            finish(holder, newcomer)
        finally:
            holder.stop()
            newcomer.stop()
    finally:
        client.close()
    spans = intervals(holder, newcomer)
    peak = max_overlap(spans)
    report(f"failover ({semaphore})", spans, peak)
    assert peak <= 1, f"{peak} holders on a limit of 1"
    assert len(intervals(newcomer)) == 1, "acquisition resumed by itself"
    assert [how for _, _, how in intervals(holder)] == ["released"], (
        "the holder re-asserted its lease"
    )
    stats = await counters({**options, "redis_url": live_url() or options["redis_url"]}, semaphore)
    # The proof that the grant was lost: the promoted replica had to take it back.
    assert stats.get("reasserted") == 1, stats


async def test_a_sentinel_failover_to_a_replica_that_missed_a_grant_never_over_admits(
    own_sentinel_set: RedisSentinelSet,
) -> None:
    sentinel_set = own_sentinel_set
    first = sentinel_set.primary()

    def replica() -> ServerProcess:
        return next(s for s in sentinel_set.servers if s is not first)

    def kill(server: ServerProcess) -> None:
        server.kill()

    def promoted(old: ServerProcess) -> None:
        sentinel_set.wait_for_failover(old.port)

    await failover_losing_a_grant(
        options=sentinel_options(sentinel_set),
        semaphore="sentinel-lost-grant",
        primary_of=lambda: first,
        replica_of=replica,
        kill=kill,
        promoted=promoted,
        live_url=lambda: "",
    )


def cluster_replica_of(
    cluster: RedisClusterNodes, primary: ClusterNodeProcess
) -> ClusterNodeProcess:
    client = primary.client()
    try:
        info = client.info("replication")
    finally:
        client.close()
    port = int(info["slave0"]["port"])
    return next(node for node in cluster.nodes if node.port == port)


async def test_a_cluster_failover_to_a_replica_that_missed_a_grant_never_over_admits(
    own_cluster: RedisClusterNodes,
) -> None:
    cluster = own_cluster
    semaphore = "cluster-lost-grant"
    meta = f"rcg:{{sem:{semaphore}}}:meta"
    primary = cluster.node_for_key(meta)
    replica = cluster_replica_of(cluster, primary)

    def promoted(old: ClusterNodeProcess) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                if cluster.node_for_key(meta) is replica:
                    client = replica.client()
                    try:
                        if client.cluster("INFO").get("cluster_state") == "ok":
                            return
                    finally:
                        client.close()
            except (redis.RedisError, RuntimeError):
                pass
            assert time.monotonic() < deadline, "the replica was never promoted"
            time.sleep(0.05)

    await failover_losing_a_grant(
        options=cluster_options(cluster),
        semaphore=semaphore,
        primary_of=lambda: primary,
        replica_of=lambda: replica,
        kill=cluster.kill,
        promoted=promoted,
        live_url=lambda: f"redis://127.0.0.1:{replica.port}/0",
    )
