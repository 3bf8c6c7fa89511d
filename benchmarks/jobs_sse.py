"""Durable jobs: 500 Server-Sent Events clients following one job on one replica.

    python -m benchmarks.jobs_sse [--clients 500] [--tasks 40] [--limit 8] [--latency 1.0]

Real processes: redis-server, the simulator and one service replica. The same job (`--tasks`
tasks, `--latency` s predictions, at most `--limit` at once) runs twice on the replica: once
followed by nobody (the job's own cost), once followed by `--clients` clients of
GET /jobs/{id}/events, connected before it starts running. Prints a table:

  replica RSS       before, and the peak while the clients are connected (sampled every 0.1 s
                    from /proc), and per client
  replica CPU       CPU seconds the replica used from submit to the job's end, over that time
                    (100 % = one core), without and with the clients
  event latency     event written (its stream id: Redis' clock, in ms, at XADD) → received by
                    a client (this host's clock; Redis runs on the same host), p50 / p99 / max,
                    over every live event every client received (the replayed ones, written
                    before that client connected, are left out)

The clients are raw asyncio sockets speaking HTTP/1.0 (no client library: 500 httpx streams
would spend more CPU than the replica, on the same two cores, and the latency would be theirs).
The open-files limit is raised for this process and the replica it starts (each client is one
socket at each end).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import httpx

from tests.fixtures.cluster import ADMIN_KEY, Cluster, admin_headers, running_cluster

FAST_ENV = {
    "REPLICATE_REQUESTS_PER_MINUTE": "1000000",
    "POLL_BUDGET_PER_MINUTE": "1000000",
    "LOG_LEVEL": "WARNING",
    "PREFER_WAIT_SECONDS": "1",
}
CLK_TCK = os.sysconf("SC_CLK_TCK")


def raise_open_files(wanted: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


class RssSampler:
    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_bytes(self.pid))
            time.sleep(0.1)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Follower:
    """One SSE client: when it connected, the latency of each live event, whether it saw the
    job's end."""

    connected_ms: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    replayed: int = 0
    ended: bool = False
    error: str | None = None


async def follow(port: int, job_id: str, me: Follower, connected: asyncio.Semaphore) -> None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
    except OSError as exc:
        me.error = f"connect: {exc}"
        connected.release()
        return
    try:
        writer.write(
            f"GET /jobs/{job_id}/events HTTP/1.0\r\nHost: bench\r\n"
            f"Accept: text/event-stream\r\nX-Admin-API-Key: {ADMIN_KEY}\r\n\r\n".encode()
        )
        status = await reader.readline()
        if b" 200 " not in status:
            me.error = status.decode(errors="replace").strip()
            return
        while (await reader.readline()) not in (b"\r\n", b"\n", b""):
            pass
        me.connected_ms = time.time() * 1000
        connected.release()
        event_ms = 0
        while line := await reader.readline():
            if line.startswith(b"id: "):
                event_ms = int(line[4:].split(b"-", 1)[0])
            elif line.startswith(b"data: "):
                received_ms = time.time() * 1000
                if event_ms >= me.connected_ms:
                    me.latencies_ms.append(received_ms - event_ms)
                else:
                    me.replayed += 1
                if b'"final":true' in line:
                    me.ended = True
                    return
    except (OSError, ValueError) as exc:
        me.error = f"{type(exc).__name__}: {exc}"
    finally:
        if not me.connected_ms:
            connected.release()
        writer.close()


@dataclass
class Run:
    clients: int
    wall_s: float
    cpu_s: float
    rss_before: int
    rss_peak: int
    followers: list[Follower]


def batch(count: int) -> dict[str, Any]:
    return {"model_name": "flux-dev", "tasks": [{"prompt": f"sse bench {i}"} for i in range(count)]}


async def one_run(cluster: Cluster, pid: int, clients: int, tasks: int) -> Run:
    base = cluster.url(0)
    port = int(base.rsplit(":", 1)[1])
    followers = [Follower() for _ in range(clients)]
    async with httpx.AsyncClient(base_url=base, timeout=60, headers=admin_headers()) as http:
        # Hold the job's tasks back until every client is connected: its semaphore's only slot
        # is taken here.
        gate = f"sse-gate-{clients}"
        created = await http.post("/global-semaphores", json={"semaphore_id": gate, "limit": 1})
        created.raise_for_status()
        lease = (await http.post(f"/global-semaphores/{gate}/leases", json={"timeout_s": 5})).json()
        rss_before = rss_bytes(pid)
        began = time.monotonic()
        cpu_before = cpu_s(pid)
        with RssSampler(pid) as sampler:
            body = {**batch(tasks), "external_semaphore_id": gate}
            submitted = await http.post("/jobs", json=body)
            submitted.raise_for_status()
            job_id = submitted.json()["id"]
            connected = asyncio.Semaphore(0)
            followers_done = [
                asyncio.create_task(follow(port, job_id, me, connected)) for me in followers
            ]
            for _ in followers:
                await connected.acquire()
            # Everyone is listening: let the job's tasks through, one slot at a time.
            await http.delete(f"/global-semaphores/{gate}/leases/{lease['lease_id']}")
            await http.patch(f"/global-semaphores/{gate}", json={"limit": 10_000})
            while True:
                job = (await http.get(f"/jobs/{job_id}")).json()
                if job["status"] not in ("queued", "running"):
                    break
                await asyncio.sleep(0.2)
            await asyncio.wait_for(asyncio.gather(*followers_done), 60)
        wall_s = time.monotonic() - began
        used_s = cpu_s(pid) - cpu_before
    return Run(clients, wall_s, used_s, rss_before, sampler.peak, followers)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--clients", type=int, default=500)
    parser.add_argument("--tasks", type=int, default=40)
    parser.add_argument("--limit", type=int, default=8)
    parser.add_argument("--latency", type=float, default=1.0)
    args = parser.parse_args()
    files = raise_open_files(4 * args.clients + 1024)  # inherited by the replica
    env = {
        **FAST_ENV,
        "REPLICATE_CONCURRENT_LIMIT": str(args.limit),
        "MAX_BATCH_TASKS": str(max(args.tasks, 100)),
    }
    sim = {"create_limit": 10**9, "other_limit": 10**9, "jitter": 0.0}
    with running_cluster(replicas=1, env=env, latency=args.latency, **sim) as cluster:
        replica = cluster.replicas[0]
        assert replica is not None
        alone = asyncio.run(one_run(cluster, replica.pid, 0, args.tasks))
        followed = asyncio.run(one_run(cluster, replica.pid, args.clients, args.tasks))
    latencies = [ms for f in followed.followers for ms in f.latencies_ms]
    ended = sum(f.ended for f in followed.followers)
    errors = [f.error for f in followed.followers if f.error]
    per_client = (followed.rss_peak - alone.rss_peak) / max(1, args.clients)
    print(
        f"| {args.clients} SSE clients on one replica: a {args.tasks}-task job, "
        f"{args.latency} s predictions, limit {args.limit} | value |"
    )
    print("| --- | --- |")
    print(f"| open-files limit (this process and the replica) | {files} |")
    print(f"| clients that saw the job's end | {ended} / {args.clients} |")
    if errors:
        print(f"| client errors | {len(errors)} (first: {errors[0]}) |")
    print(f"| replica RSS before | {alone.rss_before / 2**20:.1f} MiB |")
    print(f"| replica RSS peak, no clients | {alone.rss_peak / 2**20:.1f} MiB |")
    print(f"| replica RSS peak, {args.clients} clients | {followed.rss_peak / 2**20:.1f} MiB |")
    print(f"| replica RSS per client | {per_client / 1024:.1f} KiB |")
    for run in (alone, followed):
        print(
            f"| replica CPU, {run.clients} clients | {run.cpu_s:.2f} s over {run.wall_s:.1f} s "
            f"= {100 * run.cpu_s / run.wall_s:.0f} % of a core |"
        )
    print(f"| live events received (all clients) | {len(latencies)} |")
    print(
        f"| replayed events (written before a client connected) | "
        f"{sum(f.replayed for f in followed.followers)} |"
    )
    if latencies:
        print(f"| event latency p50 (written → received) | {percentile(latencies, 0.5):.0f} ms |")
        print(f"| event latency p99 | {percentile(latencies, 0.99):.0f} ms |")
        print(f"| event latency max | {max(latencies):.0f} ms |")
        print(f"| event latency mean | {statistics.fmean(latencies):.0f} ms |")


if __name__ == "__main__":
    main()
