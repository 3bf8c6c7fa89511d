"""What the per-node loss check costs Redis (docs/redis-ha.md, "Per-node loss detection").

Every script that could give a slot away first reads the node's identity (`INFO server`,
`INFO replication`: node_tag and check_node in redis_scripts/lib/semaphore.lua). This runs the
same handoff cycle with the real scripts and with node_tag stubbed to a constant, interleaved
round by round, and compares EVALSHA's `usec` in INFO commandstats (Redis' own time in the
scripts, the commands they run included) per cycle:

    acquire A (admitted: a slot is free, so the node is checked)
    acquire B (queued: nothing free, no check)
    release A (the slot goes to B: checked)
    release B (nobody waits: no check)

    python -m benchmarks.node_check [--cycles 2000] [--rounds 5]

Starts its own redis-server on a free loopback port and stops it at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.commands.core import AsyncScript

from benchmarks.coord_redis import PrivateRedis
from service.coordination.keys import KeySpace
from service.coordination.script_calls import ScriptCalls
from service.coordination.scripts import Scripts, script_source

NODE_TAG = "local function node_tag()"
STUB = "local function node_tag()\n  return 'stubstubstubstub'\nend\n"


class Variant:
    """The scripts, with node_tag stubbed or not, behind the interface ScriptCalls uses."""

    def __init__(self, client: aioredis.Redis, *, stubbed: bool) -> None:
        self._scripts: dict[str, AsyncScript] = {}
        for name in Scripts.NAMES:
            source = script_source(name)
            if stubbed and NODE_TAG in source:
                start = source.index(NODE_TAG)
                end = source.index("\nend\n", start) + len("\nend\n")
                source = source[:start] + STUB + source[end:]
            self._scripts[name] = client.register_script(source)

    async def call(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return await self._scripts[name](keys=list(keys), args=list(args))


async def cycles(calls: ScriptCalls, count: int) -> None:
    holder = json.dumps({"replica": "bench"})

    async def acquire(lease_id: str) -> None:
        await calls.acquire_slot(
            "s",
            lease_id=lease_id,
            ttl_ms=30_000,
            holder_json=holder,
            acquired_at=time.time(),
            replica="bench",
            waiting_since=time.time(),
            queue=True,
            queue_ttl_ms=10_000,
        )

    for i in range(count):
        await acquire(f"a{i}-t")
        await acquire(f"b{i}-t")
        await calls.release_slot("s", lease_id=f"a{i}-t", local_token="t")
        await calls.release_slot("s", lease_id=f"b{i}-t", local_token="t")


async def run(url: str, count: int, rounds: int) -> dict[str, list[float]]:
    client = aioredis.Redis.from_url(url)
    found: dict[str, list[float]] = {"checked": [], "stubbed": []}
    try:
        for name in found:
            calls = ScriptCalls(Variant(client, stubbed=name == "stubbed"), KeySpace(name))
            await calls.create_semaphore("s", limit=1, mode="create")
            await cycles(calls, 50)  # warm-up: script loads
        for _ in range(rounds):
            for name, usec in found.items():
                calls = ScriptCalls(Variant(client, stubbed=name == "stubbed"), KeySpace(name))
                await client.config_resetstat()
                await cycles(calls, count)
                stats = await client.info("commandstats")
                usec.append(stats["cmdstat_evalsha"]["usec"] / count)
    finally:
        await client.aclose()
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cycles", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    server = PrivateRedis()
    try:
        found = asyncio.run(run(server.url, args.cycles, args.rounds))
    finally:
        server.stop()
    checked, stubbed = (statistics.median(found[k]) for k in ("checked", "stubbed"))
    print(f"EVALSHA usec per cycle (median of {args.rounds} rounds of {args.cycles}):")
    print(f"  with the node check   {checked:7.1f}   rounds {[round(v) for v in found['checked']]}")
    print(f"  node_tag stubbed      {stubbed:7.1f}   rounds {[round(v) for v in found['stubbed']]}")
    print(f"  per check (2 a cycle) {(checked - stubbed) / 2:7.1f}")


if __name__ == "__main__":
    main()
