"""Uncontended acquire + release against its floor, two PINGs on the same client, interleaved.

    python -m benchmarks.uncontended [--cycles 3000] [--rounds 5] [--pin-s 0]

One process, one worker, a private redis-server, a semaphore of 4 nobody else uses. Each
cycle does `Coordinator.acquire` + `Lease.release` (timed as the peers kit does: acquire alone,
then release alone, summed) and, right after, two `client.ping()` on the Coordinator's own
client. Prints per round the p50 of both and their ratio (target: <= 1.3), and the medians.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

from benchmarks.coord_redis import PrivateRedis
from benchmarks.coord_worker import run_on_loop
from benchmarks.coordination import percentile
from service.coordination import Coordinator


async def timed_cycles(
    c: Coordinator, semaphore_id: str, cycles: int, *, pin_s: float = 0.0
) -> tuple[list[float], list[float], list[float]]:
    """µs per cycle: acquire + release (each timed alone, summed, as the peers kit does), the
    acquire alone, and two PINGs on the Coordinator's own client right after."""
    perf = time.perf_counter
    cycle, acq, pings = [], [], []
    for _ in range(cycles):
        t0 = perf()
        lease = await c.acquire(semaphore_id, timeout_s=5, pin_s=pin_s)
        t1 = perf()
        await asyncio.sleep(0)
        t2 = perf()
        await lease.release()
        t3 = perf()
        await asyncio.sleep(0)
        t4 = perf()
        await c.redis.ping()
        await c.redis.ping()
        t5 = perf()
        await asyncio.sleep(0)
        cycle.append((t1 - t0 + t3 - t2) * 1e6)
        acq.append((t1 - t0) * 1e6)
        pings.append((t5 - t4) * 1e6)
    return cycle, acq, pings


def script_usec(server: PrivateRedis) -> float:
    """EVALSHA time in Redis (µs) since the last CONFIG RESETSTAT."""
    stats = server.client.info("commandstats").get("cmdstat_evalsha", {})
    return float(stats.get("usec", 0))


async def run(
    server: PrivateRedis, cycles: int, rounds: int, pin_s: float, json_path: str = ""
) -> None:
    c = await Coordinator.connect(server.url, replica_id="uncontended", lease_ttl_s=30.0)
    await c.registry.create("u", 4)
    ratios, floors, cycle_p50s, ping_p50s = [], [], [], []
    try:
        for _ in range(200):  # warm-up
            lease = await c.acquire("u", timeout_s=5, pin_s=pin_s)
            await lease.release()
            await c.redis.ping()
        for r in range(rounds):
            server.client.config_resetstat()
            cycle, acq, pings = await timed_cycles(c, "u", cycles, pin_s=pin_s)
            lua = script_usec(server) / cycles
            a, p = percentile(cycle, 0.5), percentile(pings, 0.5)
            ratios.append(a / p)
            floors.append((p + lua) / p)
            cycle_p50s.append(a)
            ping_p50s.append(p)
            print(
                f"[{r}] acquire+release p50 {a:6.1f} us (acquire {percentile(acq, 0.5):5.1f}) | "
                f"two PINGs p50 {p:6.1f} us | ratio {a / p:.2f} | scripts in Redis "
                f"{lua:5.1f} us/cycle: floor ratio {(p + lua) / p:.2f}",
                flush=True,
            )
        print(
            f"median ratio {statistics.median(ratios):.2f} (target <= 1.3); floor with these "
            f"scripts {statistics.median(floors):.2f}"
        )
        if json_path:
            figures = {
                "ratio": ratios,
                "floor_ratio": floors,
                "acquire_release_p50_us": cycle_p50s,
                "two_pings_p50_us": ping_p50s,
            }
            with open(json_path, "w") as f:
                json.dump(figures, f, indent=1)
    finally:
        await c.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--cycles", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--pin-s", type=float, default=0.0)
    ap.add_argument("--json", default="", help="also write every round's figures to this file")
    args = ap.parse_args()
    server = PrivateRedis()
    try:
        run_on_loop(run(server, args.cycles, args.rounds, args.pin_s, args.json))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
