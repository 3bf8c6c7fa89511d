"""End-to-end benchmark: real replicas, real Redis, the simulator. Prints one table.

    python -m benchmarks.e2e [--quick]

Rows:
  overhead      p50/p99 of /generate through one replica vs the official client calling the
                simulator directly, same prediction time, interleaved in one run; and a bare
                proxy on the same stack (no limits), the floor any service in between pays
  makespan      a 200-task batch split over 3 replicas, concurrency limit 20, 0.5 s predictions,
                against the ideal 200 x 0.5 / 20 = 5 s
  naive         the same workload with a per-process asyncio.Semaphore in each replica (how the
                replaced service worked): its upstream concurrency
  throughput    one replica against a zero-latency simulator, 32 concurrent callers
  scaling       the makespan workload through 1 replica vs 3
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
from replicate.client import Client

from tests.fixtures.cluster import TOKEN, Cluster, admin_headers, running_cluster
from tests.fixtures.ports import free_port
from tests.fixtures.simulator import (
    spawn_simulator_process,
    stop_simulator_process,
    wait_for_simulator,
)
from tests.system.helpers import max_overlap

FAST_ENV = {
    "REPLICATE_REQUESTS_PER_MINUTE": "1000000",
    "POLL_BUDGET_PER_MINUTE": "1000000",
    "LOG_LEVEL": "WARNING",
}
SIM_UNLIMITED = {"create_limit": 10**9, "other_limit": 10**9, "jitter": 0.0}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@contextlib.contextmanager
def naive_processes(
    count: int, sim_url: str
) -> Iterator[list[tuple[str, subprocess.Popen[bytes]]]]:
    """`count` benchmarks.naive_replica processes against the simulator; yields (URL, process)."""
    ports = [free_port() for _ in range(count)]
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for port in ports:
            env = {
                **os.environ,
                "PORT": str(port),
                "REPLICATE_BASE_URL": sim_url,
                "REPLICATE_API_TOKEN": TOKEN,
                "REPLICATE_CONCURRENT_LIMIT": "20",
            }
            procs.append(
                subprocess.Popen([sys.executable, "-m", "benchmarks.naive_replica"], env=env)
            )
        urls = [f"http://127.0.0.1:{port}" for port in ports]
        for url in urls:
            for _ in range(100):
                try:
                    httpx.get(url + "/docs")
                    break
                except httpx.TransportError:
                    time.sleep(0.1)
        yield list(zip(urls, procs, strict=True))
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextlib.contextmanager
def naive_replicas(count: int, sim_url: str) -> Iterator[list[str]]:
    """`count` benchmarks.naive_replica processes against the simulator; yields their URLs."""
    with naive_processes(count, sim_url) as running:
        yield [url for url, _ in running]


async def overhead(samples: int) -> dict[str, float]:
    """Latency of one /generate through the service, through a bare proxy on the same stack
    (benchmarks/naive_replica.py: no limits, no validation), and of the official client calling
    the simulator directly; interleaved, so that all three see the same machine."""
    with (
        running_cluster(replicas=1, env=FAST_ENV, latency=0.1, **SIM_UNLIMITED) as cluster,
        naive_replicas(1, cluster.sim_url) as [bare_url],
    ):
        direct = Client(api_token=TOKEN, base_url=cluster.sim_url)
        took: dict[str, list[float]] = {"service": [], "bare": [], "direct": []}
        async with httpx.AsyncClient(timeout=30, headers=admin_headers()) as client:
            for i in range(samples + 5):
                times: dict[str, float] = {}
                for name, url in (("service", cluster.url(0)), ("bare", bare_url)):
                    started = time.perf_counter()
                    response = await client.post(
                        url + "/generate", json={"model_name": "flux-dev", "prompt": f"o{i}"}
                    )
                    assert response.status_code == 200, response.text
                    times[name] = time.perf_counter() - started
                started = time.perf_counter()
                prediction = await direct.models.predictions.async_create(
                    model="black-forest-labs/flux-dev", input={"prompt": f"d{i}"}, wait=5
                )
                assert prediction.status == "succeeded", (prediction.status, prediction.error)
                times["direct"] = time.perf_counter() - started
                if i >= 5:  # warm-up
                    for name, value in times.items():
                        took[name].append(value)
        result: dict[str, float] = {}
        for name, values in took.items():
            result[f"{name}_p50_ms"] = statistics.median(values) * 1000
            result[f"{name}_p99_ms"] = pct(values, 0.99) * 1000
        return result


async def run_batch(cluster: Cluster, replicas: int, tasks: int) -> float:
    parts = [tasks // replicas + (1 if i < tasks % replicas else 0) for i in range(replicas)]
    async with httpx.AsyncClient(timeout=300, headers=admin_headers()) as client:
        started = time.perf_counter()
        responses = await asyncio.gather(
            *(
                client.post(
                    cluster.url(i) + "/generate-batch",
                    json={
                        "model_name": "flux-dev",
                        "tasks": [{"prompt": f"m{i}-{j}"} for j in range(n)],
                    },
                )
                for i, n in enumerate(parts)
            )
        )
        took = time.perf_counter() - started
    for response in responses:
        assert response.status_code == 200 and response.json()["failed_count"] == 0, response.text
    return took


async def makespan(replicas: int, tasks: int = 200) -> dict[str, float]:
    env = {**FAST_ENV, "REPLICATE_CONCURRENT_LIMIT": "20", "MAX_BATCH_TASKS": "200"}
    with running_cluster(replicas=replicas, env=env, latency=0.5, **SIM_UNLIMITED) as cluster:
        await run_batch(cluster, replicas, 20)  # warm-up: clients, scripts, connections
        cluster.sim("POST", "/_sim/reset")
        took = await run_batch(cluster, replicas, tasks)
        stats = cluster.token_stats()
        return {"makespan_s": took, "max_upstream": max_overlap(stats["intervals"])}


async def naive(tasks: int = 200) -> dict[str, float]:
    sim_port = free_port()
    sim = spawn_simulator_process(sim_port, latency=0.5, seed=3, **SIM_UNLIMITED)
    sim_url = f"http://127.0.0.1:{sim_port}"
    try:
        wait_for_simulator(sim_url, process=sim)
        with naive_replicas(3, sim_url) as urls:
            async with httpx.AsyncClient(timeout=300) as client:
                parts = [67, 67, 66]
                started = time.perf_counter()
                await asyncio.gather(
                    *(
                        client.post(
                            f"{url}/generate-batch",
                            json={"tasks": [{"prompt": f"n{i}-{j}"} for j in range(n)]},
                        )
                        for i, (url, n) in enumerate(zip(urls, parts, strict=True))
                    )
                )
                took = time.perf_counter() - started
                stats = (await client.get(sim_url + "/_sim/stats")).json()
        intervals = [iv for t in stats["tokens"].values() for iv in t["intervals"]]
        return {"makespan_s": took, "max_upstream": max_overlap(intervals)}
    finally:
        stop_simulator_process(sim)


async def throughput(seconds: float) -> dict[str, float]:
    env = {**FAST_ENV, "REPLICATE_CONCURRENT_LIMIT": "64"}
    with running_cluster(replicas=1, env=env, latency=0.0, **SIM_UNLIMITED) as cluster:
        done = 0
        end = time.perf_counter() + seconds

        async def caller(client: httpx.AsyncClient) -> None:
            nonlocal done
            while time.perf_counter() < end:
                response = await client.post(
                    cluster.url(0) + "/generate", json={"model_name": "flux-dev", "prompt": "t"}
                )
                assert response.status_code == 200, response.text
                done += 1

        async with httpx.AsyncClient(timeout=30, headers=admin_headers()) as client:
            started = time.perf_counter()
            await asyncio.gather(*(caller(client) for _ in range(32)))
            took = time.perf_counter() - started
        return {"requests_per_s": done / took}


async def main(quick: bool) -> None:
    results: dict[str, dict[str, float]] = {}
    results["overhead"] = await overhead(30 if quick else 200)
    results["makespan_3"] = await makespan(3)
    results["naive_3"] = await naive()
    results["makespan_1"] = await makespan(1)
    results["throughput_1"] = await throughput(5 if quick else 15)
    o = results["overhead"]
    added = o["service_p50_ms"] - o["direct_p50_ms"]
    ideal = 200 * 0.5 / 20
    m3, m1, n3 = results["makespan_3"], results["makespan_1"], results["naive_3"]
    bare_added = o["bare_p50_ms"] - o["direct_p50_ms"]
    rows = [
        (
            "overhead p50 (service / direct / added)",
            f"{o['service_p50_ms']:.1f} / {o['direct_p50_ms']:.1f} / {added:+.1f} ms",
            "PASS" if added <= 3 else "MISS",
        ),
        (
            "  bare proxy, same stack, no limits (floor)",
            f"{o['bare_p50_ms']:.1f} / {o['direct_p50_ms']:.1f} / {bare_added:+.1f} ms",
            "",
        ),
        (
            "  the service's own share (service - bare)",
            f"{added - bare_added:+.1f} ms",
            "",
        ),
        (
            "overhead p99 (service / bare / direct)",
            f"{o['service_p99_ms']:.1f} / {o['bare_p99_ms']:.1f} / {o['direct_p99_ms']:.1f} ms",
            "",
        ),
        (
            "makespan 200 tasks, 3 replicas, limit 20",
            f"{m3['makespan_s']:.2f} s = {m3['makespan_s'] / ideal:.3f} x ideal {ideal:.0f} s",
            "PASS" if m3["makespan_s"] <= 1.10 * ideal else "MISS",
        ),
        (
            "  max upstream concurrency (this service)",
            f"{m3['max_upstream']:.0f} (limit 20)",
            "PASS" if m3["max_upstream"] <= 20 else "MISS",
        ),
        (
            "naive per-process semaphore, 3 replicas",
            f"{n3['makespan_s']:.2f} s, max upstream {n3['max_upstream']:.0f} (limit 20)",
            "",
        ),
        (
            "makespan 200 tasks, 1 replica, limit 20",
            f"{m1['makespan_s']:.2f} s = {m1['makespan_s'] / ideal:.3f} x ideal",
            "",
        ),
        (
            "scaling 1 -> 3 replicas (makespan ratio)",
            f"{m1['makespan_s'] / m3['makespan_s']:.2f}",
            "",
        ),
        (
            "throughput, 1 replica, zero-latency upstream",
            f"{results['throughput_1']['requests_per_s']:.0f} requests/s",
            "",
        ),
    ]
    width = max(len(r[0]) for r in rows)
    print(f"{'measure'.ljust(width)}  {'result':<48} target")
    for name, value, verdict in rows:
        print(f"{name.ljust(width)}  {value:<48} {verdict}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    asyncio.run(main(parser.parse_args().quick))
