"""Diagnostics for benchmarks.coordination: where does a release→acquire handoff of
service.coordination spend its time? Runs the contended workload with every script call and
every wake-up traced (coord_worker --trace), optionally with cProfile per process.

    python -m benchmarks.coord_probe [--duration 5] [--pause-ms 0] [--profile DIR]

For every acquisition that waited, the handoff is split at these points (time.time(), one host):

    release_slot sent ─delivery─▶ waiter's event set ─schedule─▶ acquire_slot sent ─rtt─▶ reply
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import statistics
import tempfile
from collections import defaultdict
from pathlib import Path
from typing import Any

from benchmarks.coord_redis import PrivateRedis
from benchmarks.coordination import LIMIT, contended_run, percentile
from service.coordination import Coordinator, CoordinatorConfig


def summary(label: str, values_ms: list[float]) -> str:
    if not values_ms:
        return f"{label:<38} n=0"
    cells = "  ".join(f"p{int(q * 100)} {percentile(values_ms, q):7.3f}" for q in (0.5, 0.9, 0.99))
    return f"{label:<38} n={len(values_ms):<5} {cells}  max {max(values_ms):7.3f}  ms"


def analyse(traces: list[list[Any]]) -> list[str]:
    calls = [t for trace in traces for t in trace if t[0] == "call"]
    wakes: dict[str, list[float]] = defaultdict(list)
    for trace in traces:
        for t in trace:
            if t[0] == "wake":
                wakes[t[1]].append(t[2])
    releases = sorted((c[3], c[4]) for c in calls if c[1] == "release_slot" and c[5] == 1)
    release_starts = [r[0] for r in releases]
    by_lease: dict[str, list[list[Any]]] = defaultdict(list)
    for c in calls:
        if c[1] == "acquire_slot":
            by_lease[c[2]].append(c)
    delivery, schedule, rtt, total = [], [], [], []
    acquire_rtt = [(c[4] - c[3]) * 1000 for c in calls if c[1] == "acquire_slot"]
    release_rtt = [(e - s) * 1000 for s, e in releases]
    calls_per_lease = []
    unwoken = 0
    for attempts in by_lease.values():
        attempts.sort(key=lambda c: c[3])
        calls_per_lease.append(len(attempts))
        final = attempts[-1]
        if final[5] != 1 and len(attempts) == 1:
            # Granted by a release: the wake-up (the grant message) is the acquisition.
            woke = wakes.get(final[2], [])
            i = bisect.bisect_right(release_starts, woke[-1]) - 1 if woke else -1
            if i >= 0:
                delivery.append((woke[-1] - release_starts[i]) * 1000)
                total.append((woke[-1] - release_starts[i]) * 1000)
            continue
        if final[5] != 1 or len(attempts) < 2:
            continue
        sent, replied = final[3], final[4]
        woke = [w for w in wakes.get(final[2], []) if w <= sent]
        if not woke:
            unwoken += 1
            continue
        t_wake = max(woke)
        i = bisect.bisect_right(release_starts, t_wake) - 1
        if i < 0:
            continue
        t_release = release_starts[i]
        delivery.append((t_wake - t_release) * 1000)
        schedule.append((sent - t_wake) * 1000)
        rtt.append((replied - sent) * 1000)
        total.append((replied - t_release) * 1000)
    # Grants: Redis TIME when the releasing script made it, and when the waiter read it. The
    # grant message carries whole milliseconds (floored): match releases up to 1 ms later, and
    # read both splits as ±1 ms.
    to_redis, to_waiter = [], []
    for trace in traces:
        for t in trace:
            if t[0] == "srv" and t[2]:
                i = bisect.bisect_right(release_starts, t[2] + 0.001) - 1
                if i >= 0:
                    to_redis.append((t[2] - release_starts[i]) * 1000)
                    to_waiter.append((t[3] - t[2]) * 1000)
    histogram = defaultdict(int)
    for n in calls_per_lease:
        histogram[n] += 1
    return [
        summary("release_slot call (send→reply)", release_rtt),
        summary("acquire_slot call (send→reply)", acquire_rtt),
        summary("handoff: release sent → event set", delivery),
        summary("handoff: event set → acquire sent", schedule),
        summary("handoff: final acquire_slot rtt", rtt),
        summary("handoff: release sent → slot known", total),
        summary("grant: release sent → Lua runs (±1 ms)", to_redis),
        summary("grant: Lua runs → message read (±1 ms)", to_waiter),
        f"acquire_slot calls per lease: {dict(sorted(histogram.items()))}; "
        f"waited acquisitions admitted without a wake-up: {unwoken}",
    ]


async def create(url: str, semaphore: str) -> None:
    c = Coordinator(CoordinatorConfig(redis_url=url, replica_id="probe"))
    await c.start()
    await c.registry.create(semaphore, LIMIT)
    await c.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--pause-ms", type=float, default=0.0)
    parser.add_argument("--profile", type=Path, help="directory for one cProfile per process")
    parser.add_argument("--no-trace", action="store_true", help="no per-call trace")
    parser.add_argument("--processes", type=int, default=3)
    parser.add_argument("--workers", type=int, default=8, help="per process")
    parser.add_argument("--repeat", type=int, default=1, help="rounds (medians printed)")
    args = parser.parse_args()
    server = PrivateRedis()
    results: list[dict[str, float]] = []
    try:
        server.client.set("rcg:epoch", "probe")
        with tempfile.TemporaryDirectory(prefix="coord-probe-") as tmp:
            for r in range(args.repeat):
                semaphore = f"probe-{r}"
                asyncio.run(create(server.url, semaphore))
                extra = [] if args.no_trace else ["--trace"]
                profile = args.profile / f"round-{r}" if args.profile else None
                if profile:
                    profile.mkdir(parents=True, exist_ok=True)
                run = contended_run(
                    server,
                    "coord",
                    args.pause_ms,
                    args.duration,
                    Path(tmp),
                    extra=extra,
                    semaphore=semaphore,
                    profile_dir=profile,
                    layout=[(f"p{i}", args.workers) for i in range(args.processes)],
                )
                results.append(run.metrics)
                m = run.metrics
                print(
                    f"[{r}] {m['acquisitions']:.0f} acq, max holders "
                    f"{m['max_holders']:.0f}, util {m['utilization']:.3f}, handoff "
                    f"p50/p90/p99 {m['handoff_p50']:.2f}/{m['handoff_p90']:.2f}/"
                    f"{m['handoff_p99']:.2f} ms, wait max {m['wait_max']:.0f} ms, CV "
                    f"{m['fair_cv']:.3f}, cmds/acq {m['client_cmds']:.2f}, client CPU "
                    f"{m['client_cpu_us']:.0f} us/acq, redis CPU {m['redis_cpu_us']:.0f}"
                )
                if not args.no_trace:
                    print("\n".join("    " + line for line in analyse(run.traces)))
        if args.repeat > 1:
            keys = ["utilization", "handoff_p50", "handoff_p90", "handoff_p99", "client_cmds"]
            keys += ["client_cpu_us", "redis_cpu_us", "over_admissions"]
            cells = [f"{k} {statistics.median(m[k] for m in results):.3f}" for k in keys]
            print("median over rounds: " + "  ".join(cells))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
