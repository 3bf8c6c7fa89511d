"""Durable jobs: makespan of a large job against the ideal, and what a job costs in Redis.

    python -m benchmarks.jobs [--tasks 1000] [--limit 20] [--latency 0.5] [--replicas 3]

Real processes: redis-server, the simulator and `--replicas` service replicas. One job of
`--tasks` tasks is submitted with POST /jobs; it runs on one replica (a job is one queue
entry) under the account limit `--limit`. Prints:

  makespan      submit → the job's `completed_at`, against the ideal tasks x latency / limit,
                and the most predictions the simulator saw running at once (≤ limit)
  redis memory  MEMORY USAGE of the job's keys (job hash, tasks hash, events stream) once it
                ended: per job, and per task; plus a 1-task job for the fixed part
"""

from __future__ import annotations

import argparse
import asyncio
import time
from datetime import datetime
from typing import Any

import httpx

from tests.fixtures.cluster import Cluster, admin_headers, running_cluster
from tests.system.helpers import max_overlap

FAST_ENV = {
    "REPLICATE_REQUESTS_PER_MINUTE": "1000000",
    "POLL_BUDGET_PER_MINUTE": "1000000",
    "LOG_LEVEL": "WARNING",
    "PREFER_WAIT_SECONDS": "1",
}


def batch(count: int) -> dict[str, Any]:
    return {"model_name": "flux-dev", "tasks": [{"prompt": f"bench {i}"} for i in range(count)]}


async def run_job(cluster: Cluster, tasks: int) -> tuple[str, float, dict[str, Any]]:
    async with httpx.AsyncClient(timeout=60, headers=admin_headers()) as client:
        submitted_at = time.time()
        response = await client.post(cluster.url(0) + "/jobs", json=batch(tasks))
        response.raise_for_status()
        job_id = response.json()["id"]
        while True:
            job = (await client.get(f"{cluster.url(1 % cluster.count)}/jobs/{job_id}")).json()
            if job["status"] not in ("queued", "running"):
                break
            await asyncio.sleep(0.2)
    completed = datetime.fromisoformat(job["completed_at"].replace("Z", "+00:00")).timestamp()
    return job_id, completed - submitted_at, job


def memory(cluster: Cluster, job_id: str) -> dict[str, int]:
    client = cluster.redis.sync_client()
    found = {}
    for part in ("job", "tasks", "events", "hooks"):
        key = f"rcg:{{job:{job_id}}}:{part}"
        usage = client.memory_usage(key, samples=0)
        if usage:
            found[part] = int(usage)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--limit", type=int, default=20)
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--replicas", type=int, default=3)
    args = parser.parse_args()
    env = {
        **FAST_ENV,
        "REPLICATE_CONCURRENT_LIMIT": str(args.limit),
        "MAX_BATCH_TASKS": str(max(args.tasks, 100)),
        "JOB_MAX_RUNNING_TASKS": str(max(64, args.limit * 2)),
    }
    sim = {"create_limit": 10**9, "other_limit": 10**9, "jitter": 0.0}
    with running_cluster(replicas=args.replicas, env=env, latency=args.latency, **sim) as cluster:
        job_id, makespan_s, job = asyncio.run(run_job(cluster, args.tasks))
        stats = cluster.token_stats()
        small_id, _, _ = asyncio.run(run_job(cluster, 1))
        big, small = memory(cluster, job_id), memory(cluster, small_id)
    ideal_s = args.tasks * args.latency / args.limit
    succeeded = job["counts"]["succeeded"]
    big_total, small_total = sum(big.values()), sum(small.values())
    per_task = (big_total - small_total) / max(1, args.tasks - 1)
    print(f"| {args.tasks}-task job, limit {args.limit}, {args.latency} s predictions | value |")
    print("| --- | --- |")
    print(f"| makespan (submit → completed_at) | {makespan_s:.2f} s |")
    print(f"| ideal (tasks x latency / limit) | {ideal_s:.2f} s |")
    print(f"| makespan / ideal | {makespan_s / ideal_s:.3f} |")
    print(f"| tasks succeeded | {succeeded} / {args.tasks} |")
    print(f"| predictions created at the simulator | {stats['created']} |")
    print(f"| most running at once upstream | {max_overlap(stats['intervals'])} |")
    print(f"| Redis memory, {args.tasks}-task job | {big_total / 1024:.1f} KiB ({big}) |")
    print(f"| Redis memory, 1-task job | {small_total / 1024:.1f} KiB ({small}) |")
    print(f"| Redis memory per task | {per_task:.0f} B |")


if __name__ == "__main__":
    main()
