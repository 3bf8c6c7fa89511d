"""Many waiters on one semaphore: N callers across 3 processes on a semaphore of 20.

    python -m benchmarks.many_waiters [--waiters 50 500 5000] [--seconds 10] [--hold-ms 50]

For each N: a private redis-server, 3 processes (uvloop), N/3 callers each, looping
acquire -> hold -> release on one registered semaphore of limit 20 (so N - 20 wait at any
time). The open-files limit is raised to its hard limit in every process. Prints per N:
errors (failed acquires or releases), acquisitions/s, utilization, handoff gap p50/p99 (as the
peers kit: t_acq - latest t_rel before it, for acquisitions that found the semaphore full),
memory per waiting caller per process (RSS with all callers waiting - RSS before they started,
/ callers), Redis commands and CPU per acquisition (INFO deltas): over the whole run, tail
included (the waiters still queued at the end drain after the window, which at 5,000 waiters
takes longer than the window itself: their acquisitions are not counted, their calls are), and
in the steady window (from --warmup-s after the start, once every caller has joined, to the end
of the window, over the acquisitions in that window).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.coord_redis import PrivateRedis
from benchmarks.coordination import percentile

LIMIT = 20
PROCS = 3


def rss_kb() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def raise_nofile() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def child(args: argparse.Namespace) -> None:
    from service.coordination import Coordinator, SemaphoreExists

    raise_nofile()
    c = await Coordinator.connect(args.url, replica_id=f"many-{args.child}", lease_ttl_s=30.0)
    with contextlib.suppress(SemaphoreExists):
        await c.registry.create(args.key, LIMIT)
    lease = await c.acquire(args.key, timeout_s=5)
    await lease.release()
    print("ready", flush=True)
    t_start = float((await asyncio.to_thread(sys.stdin.readline)).split()[1])
    t_end = t_start + args.seconds
    records: list[list[float]] = []
    errors: list[str] = []
    rss_before = rss_kb()
    rss_full = [0]

    async def caller() -> None:
        await asyncio.sleep(max(0.0, t_start - time.time()))
        while time.time() < t_end:
            t_call = time.time()
            try:
                lease = await c.acquire(args.key, timeout_s=120)
            except Exception as exc:
                errors.append(f"acquire {type(exc).__name__}")
                continue
            t_acq = time.time()
            await asyncio.sleep(args.hold_ms / 1000)
            t_rel = time.time()
            try:
                await lease.release()
            except Exception as exc:
                errors.append(f"release {type(exc).__name__}")
            records.append([t_call, t_acq, t_rel])

    async def sample_rss() -> None:
        await asyncio.sleep(max(0.0, t_start - time.time()) + min(2.0, args.seconds / 3))
        rss_full[0] = rss_kb()

    await asyncio.gather(sample_rss(), *(caller() for _ in range(args.callers)))
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    Path(args.out).write_text(
        json.dumps(
            {
                "records": records,
                "errors": errors,
                "rss_before_kb": rss_before,
                "rss_full_kb": rss_full[0],
                "callers": args.callers,
                "cpu_s": cpu.ru_utime + cpu.ru_stime,
            }
        )
    )
    await c.close()


def run_one(
    server: PrivateRedis, waiters: int, args: argparse.Namespace, tmp: str
) -> dict[str, Any]:
    key = f"many-{waiters}-{time.time_ns()}"
    per = [waiters // PROCS + (1 if i < waiters % PROCS else 0) for i in range(PROCS)]
    procs = []
    for i in range(PROCS):
        cmd = [
            sys.executable,
            "-m",
            "benchmarks.many_waiters",
            "--child",
            str(i),
            "--url",
            server.url,
        ]
        cmd += ["--key", key, "--callers", str(per[i]), "--out", f"{tmp}/{key}-{i}.json"]
        cmd += ["--seconds", str(args.seconds), "--hold-ms", str(args.hold_ms)]
        procs.append(
            subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        )
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    info0 = server.client.info()
    t0 = time.time() + 0.3
    for p in procs:
        assert p.stdin is not None
        p.stdin.write(f"go {t0}\n")
        p.stdin.flush()
    t_steady = t0 + args.warmup_s
    time.sleep(max(0.0, t_steady - time.time()))
    steady0 = server.client.info()
    time.sleep(max(0.0, t0 + args.seconds - time.time()))
    steady1 = server.client.info()
    for p in procs:
        p.wait()
    info1 = server.client.info()
    parts = [json.loads(Path(f"{tmp}/{key}-{i}.json").read_text()) for i in range(PROCS)]
    records = [r for part in parts for r in part["records"]]
    t_end = t0 + args.seconds
    acquired = [r for r in records if t0 <= r[1] < t_end]
    held = sum(max(0.0, min(r[2], t_end) - max(r[1], t0)) for r in records)
    rels = sorted(r[2] for r in records)
    # waited: the semaphore was full at some moment of [t_call, t_acq) (sweep of hold intervals)
    events = sorted([(r[1], 1) for r in records] + [(r[2], -1) for r in records])
    times = [e[0] for e in events]
    level, levels, fulls = 0, [], [0]  # fulls[k]: how many of levels[:k] are >= LIMIT
    for _, d in events:
        level += d
        levels.append(level)
        fulls.append(fulls[-1] + (level >= LIMIT))
    gaps = []
    for r in records:
        i, j = bisect.bisect_left(times, r[0]), bisect.bisect_left(times, r[1])
        before = levels[i - 1] if i > 0 else 0
        full = before >= LIMIT or fulls[j] - fulls[i] > 0
        k = bisect.bisect_right(rels, r[1]) - 1
        if full and k >= 0:
            gaps.append((r[1] - rels[k]) * 1000)
    n_acq = max(1, len(acquired))
    n_steady = max(1, sum(1 for r in acquired if r[1] >= t_steady))
    cpu = lambda info: info["used_cpu_sys"] + info["used_cpu_user"]  # noqa: E731
    per_waiter = [(p["rss_full_kb"] - p["rss_before_kb"]) / max(1, p["callers"]) for p in parts]
    return {
        "waiters": waiters,
        "errors": sum(len(p["errors"]) for p in parts),
        "acq_per_s": len(acquired) / args.seconds,
        "utilization": held / (LIMIT * args.seconds),
        "handoff_p50": percentile(gaps, 0.5),
        "handoff_p99": percentile(gaps, 0.99),
        "kb_per_waiter": max(per_waiter),
        "redis_cmds_per_acq": (
            info1["total_commands_processed"] - info0["total_commands_processed"]
        )
        / n_acq,
        "redis_cpu_us_per_acq": (cpu(info1) - cpu(info0)) * 1e6 / n_acq,
        "steady_cmds_per_acq": (
            steady1["total_commands_processed"] - steady0["total_commands_processed"]
        )
        / n_steady,
        "steady_cpu_us_per_acq": (cpu(steady1) - cpu(steady0)) * 1e6 / n_steady,
        "client_cpu_s": sum(p["cpu_s"] for p in parts),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--waiters", type=int, nargs="+", default=[50, 500, 5000])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--hold-ms", type=float, default=50.0)
    ap.add_argument("--warmup-s", type=float, default=2.0, help="steady window starts after")
    ap.add_argument("--child", type=int, default=None)
    ap.add_argument("--url", default="")
    ap.add_argument("--key", default="")
    ap.add_argument("--callers", type=int, default=0)
    ap.add_argument("--out", default="")
    ap.add_argument("--json", default="", help="also write each N's figures to this file")
    args = ap.parse_args()
    if args.child is not None:
        from benchmarks.coord_worker import run_on_loop

        run_on_loop(child(args))
        return
    raise_nofile()
    server = PrivateRedis()
    print(
        "| waiters | errors | acq/s | utilization | handoff p50 / p99 ms | KB per waiter (max of "
        "3 procs) | Redis cmds / acq | Redis CPU µs / acq | steady: Redis cmds / acq | steady: "
        "Redis CPU µs / acq | client CPU s |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    results: dict[int, dict[str, float]] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="many-waiters-") as tmp:
            for n in args.waiters:
                m = results[n] = run_one(server, n, args, tmp)
                print(
                    f"| {n} | {m['errors']} | {m['acq_per_s']:.1f} | {m['utilization']:.3f} | "
                    f"{m['handoff_p50']:.2f} / {m['handoff_p99']:.2f} | {m['kb_per_waiter']:.1f} | "
                    f"{m['redis_cmds_per_acq']:.1f} | {m['redis_cpu_us_per_acq']:.0f} | "
                    f"{m['steady_cmds_per_acq']:.1f} | {m['steady_cpu_us_per_acq']:.0f} | "
                    f"{m['client_cpu_s']:.1f} |",
                    flush=True,
                )
        print(f"load average after: {os.getloadavg()}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)
    finally:
        server.stop()


if __name__ == "__main__":
    main()
