"""Which node serves each semaphore, and how long each node may still be missing leases it lost.

Every key of a semaphore lives on one node: the one server, the Sentinel primary, or the
Cluster primary serving its slot. When that node restarts without its data, or a replica that
missed the last writes is promoted in its place, the leases it forgot still run. Loss is
therefore detected per node (docs/redis-ha.md, "Per-node loss detection"):

- A node is known by its tag: the start of its run_id (new at every start) and of its
  replication id (new at every start and every promotion). The scripts read it themselves
  (node_tag in redis_scripts/lib/semaphore.lua) and compare it with the tag a semaphore's meta
  recorded, so a semaphore that exists notices a restart or a failover on its own, atomically,
  before it admits anything: it opens a grace of one lease TTL with a new epoch, in which its
  holders re-assert the leases the node forgot.
- A semaphore that is gone cannot: nothing of it is left on the node. So `NodeWatch` reads
  every primary's tag and uptime (INFO) with each epoch check (every TTL/3, and at most once
  a second before a process first uses a semaphore), notes them in the deployment's registry
  beside the epoch key (note_nodes.lua), and learns how long each node is still *young*: a
  tag no process had seen before is young for one TTL from the moment one first saw it. A
  semaphore created while its node is young gets a grace until that youth ends; the acquire
  sends the tag the grace was computed for, and the script gives a full TTL instead if the
  node is no longer the one this process knew.

A worked timeline, a Cluster, lease TTL 30 s, a declared semaphore of limit 2 on shard B:

    t=0    replica 1 holds both slots (epoch "…@<B's tag>"); the registry knows A, B, C
    t=5    B restarts empty (new tag B'); its replica resyncs from it, empty too
    t=5.1  replica 2 starts, notes the nodes: B' is new → young until t=35.1; its acquire
           re-creates the semaphore with grace until t=35.1 and waits
    t=8    replica 1's renewal: its leases are missing, their epoch older → re-asserted
    t=35.1 the grace ends with 2 of 2 in use; replica 2 gets the first slot given back
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import Any

from redis import exceptions as redis_exceptions
from redis.asyncio.cluster import ClusterNode, RedisCluster

from .connection import RedisClient
from .redis_errors import guarded
from .script_calls import NodesNoted, ScriptCalls

log = logging.getLogger("service.coordination.nodes")

ONE_NODE = "primary"  # the name of the only node of a single server or a Sentinel set


def node_tag(info: dict[str, Any]) -> str:
    """A node's tag from its INFO server and replication sections, as the scripts compute it;
    '' if either field is missing."""
    run_id, replid = str(info.get("run_id", "")), str(info.get("master_replid", ""))
    if not run_id or not replid:
        return ""
    return f"{run_id[:8]}{replid[:8]}"


@dataclass(frozen=True)
class NodeState:
    tag: str
    young_until: float  # monotonic; 0.0 when the node is not young


class NodeWatch:
    """The tag and youth of every primary, as this process last read them."""

    def __init__(self, *, client: RedisClient, calls: ScriptCalls, lease_ttl_s: float) -> None:
        self._client = client
        self._calls = calls
        self._lease_ttl_s = lease_ttl_s
        self.nodes: dict[str, NodeState] = {}
        self._seen: set[str] = set()  # every tag this process has read
        self._warned = False

    @property
    def young_until_any(self) -> float:
        """Until when some node is young (for visibility: service/grace.py)."""
        return max((state.young_until for state in self.nodes.values()), default=0.0)

    def node_name(self, key: str) -> str:
        """The node that serves `key`, as this process's client believes ('' unknown)."""
        if isinstance(self._client, RedisCluster):
            try:
                node = self._client.get_node_from_key(key)
            except (redis_exceptions.RedisError, redis_exceptions.RedisClusterException):
                return ""
            return node.name if node is not None else ""
        return ONE_NODE

    def state_for(self, key: str) -> NodeState | None:
        return self.nodes.get(self.node_name(key))

    def tag_for(self, key: str) -> str:
        """The tag of the node serving `key`, '' when unknown (then a creation gets a full
        TTL of grace: see acquire_slot.lua)."""
        state = self.state_for(key)
        return state.tag if state is not None else ""

    def young_until(self, key: str) -> float:
        state = self.state_for(key)
        return state.young_until if state is not None else 0.0

    async def _read(self) -> dict[str, tuple[str, int]]:
        """name → (tag, uptime ms) of every primary that answered."""
        targets: list[tuple[str, ClusterNode | None]]
        if isinstance(self._client, RedisCluster):
            if not self._client.get_nodes():
                await guarded(self._client.initialize())  # reads the topology
            targets = [(node.name, node) for node in self._client.get_primaries()]
        else:
            targets = [(ONE_NODE, None)]

        async def info(node: ClusterNode | None) -> dict[str, Any]:
            if node is None:
                return await self._client.info("server", "replication")
            cluster = self._client
            assert isinstance(cluster, RedisCluster)
            result: dict[str, Any] = await cluster.info("server", "replication", target_nodes=node)
            return result

        replies = await asyncio.gather(*(info(node) for _, node in targets), return_exceptions=True)
        found: dict[str, tuple[str, int]] = {}
        for (name, _), reply in zip(targets, replies, strict=True):
            if isinstance(reply, BaseException):
                if isinstance(reply, redis_exceptions.NoPermissionError) and not self._warned:
                    self._warned = True
                    log.warning(
                        "INFO refused (the ACL user lacks +info): a node that restarts or "
                        "fails over is not noticed per node; grant +info (docs/redis-ha.md)"
                    )
                if isinstance(reply, asyncio.CancelledError):
                    raise reply
                continue
            tag = node_tag(reply)
            if tag:
                uptime_ms = int(float(reply.get("uptime_in_seconds", 0)) * 1000)
                found[name] = (tag, uptime_ms)
        return found

    async def refresh(self, token: str) -> tuple[NodesNoted, list[str]]:
        """Read every primary's tag, note them in the registry (setting the epoch to `token`
        if it is missing or 'new') and learn their youth. Returns the registry's answer and
        the names of the nodes whose tag this process had not seen before (after its first
        refresh: a restart or a failover it just noticed). Raises CoordinationUnavailable
        when the registry's node cannot be reached; the nodes' states then stay as they were."""
        found = await self._read()
        names = list(found)
        noted = await guarded(
            self._calls.note_nodes(
                token=token,
                ttl_ms=int(self._lease_ttl_s * 1000),
                nodes=[found[name] for name in names],
            )
        )
        now = time.monotonic()
        changed = [name for name in names if self._seen and found[name][0] not in self._seen]
        for name, young_ms in zip(names, noted.young_ms, strict=True):
            tag = found[name][0]
            self._seen.add(tag)
            # Not young: 0.0, never `now`, which `now < young_until + ttl` (grace.py's
            # GraceWatch._may_run) would take for a node young until a moment ago.
            young_until = now + young_ms / 1000 if young_ms > 0 else 0.0
            self.nodes[name] = NodeState(tag=tag, young_until=young_until)
        return noted, changed
