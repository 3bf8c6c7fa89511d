"""Benchmark of the cross-process semaphore (service.coordination) against the ideal (an
in-process asyncio.Semaphore) and the usual hand-written Redis semaphore (sorted set + Lua,
polled every 10 ms), and of the same library on a Redis Cluster. Prints one table; see
benchmarks/README.md for what each row means.

    python -m benchmarks.coordination [--duration 10] [--quick] [--no-cluster]

Starts its own redis-server on a free loopback port, and a Redis Cluster (3 primaries + 3
replicas, tests/fixtures/redis_cluster.py), and stops them at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import math
import os
import queue
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis
import redis.cluster

from benchmarks.coord_naive import NaiveSemaphore
from benchmarks.coord_redis import PrivateRedis, ServerCounters
from benchmarks.coord_worker import run_on_loop
from service.coordination import AcquireTimeout, Coordinator, CoordinatorConfig
from service.coordination.script_calls import AcquireReply, Queued, ScriptCalls
from tests.fixtures.redis_cluster import RedisClusterNodes

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 4
HOLD_MS = 50.0
PAUSE_MS = 50.0
PROCESSES = 3
WORKERS = 8
LEASE_TTL_S = 30.0
QUEUE_TTL_S = 10.0
QUEUE_SIZES = (10, 1_000, 10_000)
LONG_QUEUE_TTL_MS = 3_600_000

IMPLS = ("coord", "cluster", "local", "naive")
IMPL_TITLES = {
    "coord": "service.coordination",
    "cluster": "the same, on a Cluster",
    "local": "asyncio.Semaphore",
    "naive": "naive ZSET, 10ms poll",
}
OURS = ("coord", "cluster")  # the implementations the targets apply to


# ------------------------------------------------------------------------------------ stats


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (q in [0, 1])."""
    if not values:
        return math.nan
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def overlap(intervals: Sequence[tuple[float, float]], limit: int) -> tuple[int, int]:
    """(peak number of intervals open at once, starts that pushed the count above `limit`).
    At equal timestamps an end sorts before a start."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    current = peak = over = 0
    for _, delta in events:
        current += delta
        if delta > 0 and current > limit:
            over += 1
        peak = max(peak, current)
    return peak, over


@dataclass
class RunResult:
    impl: str
    pause_ms: float
    duration: float
    records: list[list[Any]]  # [worker, t_request, t_acquired, t_release, t_released]
    t0: float
    workers: list[str]
    server: ServerCounters
    client_cpu_s: float
    traces: list[list[Any]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)

    def analyse(self) -> None:
        recs = self.records
        n = len(recs)
        end = self.t0 + self.duration
        m = self.metrics
        m["acq_rate"] = sum(1 for r in recs if self.t0 <= r[2] <= end) / self.duration
        held = sum(max(0.0, min(r[3], end) - max(r[2], self.t0)) for r in recs)
        m["utilization"] = held / (LIMIT * self.duration)
        m["max_holders"], m["over_admissions"] = overlap([(r[2], r[3]) for r in recs], LIMIT)
        # Handoff: acquisition time minus the latest release (by any holder) before it, for
        # acquisitions that had to wait, i.e. some release happened while they were waiting.
        releases = sorted(r[3] for r in recs)
        handoffs = []
        for r in recs:
            i = bisect.bisect_left(releases, r[2]) - 1
            if i >= 0 and releases[i] > r[1]:
                handoffs.append((r[2] - releases[i]) * 1000)
        m["waited_share"] = len(handoffs) / n if n else math.nan
        for q in (50, 90, 99):
            m[f"handoff_p{q}"] = percentile(handoffs, q / 100)
        waits = [(r[2] - r[1]) * 1000 for r in recs]
        m["wait_p50"] = percentile(waits, 0.5)
        m["wait_p99"] = percentile(waits, 0.99)
        m["wait_max"] = max(waits) if waits else math.nan
        per_worker = Counter({w: 0 for w in self.workers})
        per_worker.update(r[0] for r in recs)
        counts = list(per_worker.values())
        mean = statistics.fmean(counts)
        m["fair_cv"] = statistics.pstdev(counts) / mean if mean else math.nan
        m["fair_min"], m["fair_max"] = min(counts), max(counts)
        m["client_cmds"] = self.server.client(self.impl) / n if n else math.nan
        m["all_cmds"] = self.server.total / n if n else math.nan
        m["redis_cpu_us"] = self.server.cpu_s / n * 1e6 if n else math.nan
        m["client_cpu_us"] = self.client_cpu_s / n * 1e6 if n else math.nan
        m["acquisitions"] = n


# ---------------------------------------------------------------------- contended runs


class Worker:
    """One benchmark process (benchmarks.coord_worker) and its stdout lines."""

    def __init__(self, argv: list[str], out: Path, errors: Path) -> None:
        self.out = out
        self.errors = errors
        self._err = errors.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.coord_worker", *argv, "--out", str(out)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            cwd=ROOT,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.strip())
        self.lines.put("<EOF>")

    def expect(self, word: str, timeout: float) -> None:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            line = "<timeout>"
        if line != word:
            self.kill()
            raise RuntimeError(
                f"worker sent {line!r}, expected {word!r}; stderr:\n{self.errors.read_text()}"
            )

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()

    def finish(self) -> dict[str, Any]:
        self.send("EXIT")
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(timeout=30)
        self._err.close()
        result: dict[str, Any] = json.loads(self.out.read_text())
        return result

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self._err.close()


@dataclass
class Target:
    """Where a run's workers connect, and how its server-side counters are read."""

    url: str
    clients: list[redis.Redis]  # one per node that serves commands (a Cluster's primaries)
    extra: tuple[str, ...] = ()  # worker arguments

    def counters(self) -> ServerCounters:
        return ServerCounters.read_all(self.clients)


def contended_run(
    server: Target,
    impl: str,
    pause_ms: float,
    duration: float,
    workdir: Path,
    extra: Sequence[str] = (),
    semaphore: str = "",
    profile_dir: Path | None = None,
    layout: list[tuple[str, int]] | None = None,
) -> RunResult:
    semaphore = semaphore or f"bench-{impl}-{int(pause_ms)}"
    if layout is None:
        layout = [("solo", PROCESSES * WORKERS)] if impl == "local" else []
        if impl != "local":
            layout = [(f"p{i}", WORKERS) for i in range(PROCESSES)]
    common = [
        *server.extra,
        "--url",
        server.url,
        "--semaphore",
        semaphore,
        "--limit",
        str(LIMIT),
        "--hold-ms",
        str(HOLD_MS),
        "--pause-ms",
        str(pause_ms),
        "--duration",
        str(duration),
        "--lease-ttl",
        str(LEASE_TTL_S),
        "--queue-ttl",
        str(QUEUE_TTL_S),
    ]
    workers = [
        Worker(
            [
                "coord" if impl == "cluster" else impl,
                *common,
                *("--tag", tag, "--workers", str(count), *extra),
                *(("--profile", str(profile_dir / f"{tag}.prof")) if profile_dir else ()),
            ],
            workdir / f"{semaphore}-{tag}.json",
            workdir / f"{semaphore}-{tag}.err",
        )
        for tag, count in layout
    ]
    try:
        for w in workers:
            w.expect("READY", timeout=60)
        before = server.counters()
        t0 = time.time() + 0.5
        for w in workers:
            w.send(f"GO {t0!r}")
        for w in workers:
            w.expect("DONE", timeout=duration + 60)
        after = server.counters()
        outputs = [w.finish() for w in workers]
    except BaseException:
        for w in workers:
            w.kill()
        raise
    result = RunResult(
        impl=impl,
        pause_ms=pause_ms,
        duration=duration,
        records=[r for out in outputs for r in out["records"]],
        t0=t0,
        workers=[f"{tag}-{i}" for tag, count in layout for i in range(count)],
        server=after.minus(before),
        client_cpu_s=sum(out["cpu_s"] for out in outputs),
        traces=[out.get("trace", []) for out in outputs],
    )
    result.analyse()
    return result


# ------------------------------------------------------------- single-client micro costs


@dataclass
class MicroResult:
    uncontended_us: dict[str, float] = field(default_factory=dict)
    uncontended_rt: dict[str, float] = field(default_factory=dict)
    try_once_us: dict[int, float] = field(default_factory=dict)
    enqueue_us: dict[int, float] = field(default_factory=dict)
    try_once_rt: float = math.nan
    enqueue_rt: float = math.nan


async def timed(samples: list[float], op: Callable[[], Any]) -> None:
    start = time.perf_counter()
    await op()
    samples.append((time.perf_counter() - start) * 1e6)


async def micro(server: PrivateRedis, c: Coordinator, iterations: int, probes: int) -> MicroResult:
    result = MicroResult()
    rounds = 10
    per_round = max(1, iterations // rounds)

    # Uncontended acquire + release, the three implementations interleaved round by round.
    await c.registry.create("uncontended", LIMIT)
    naive_client = aioredis.Redis.from_url(server.url)
    naive = NaiveSemaphore(naive_client, "naive-uncontended", LIMIT)
    local = asyncio.Semaphore(LIMIT)

    async def coord_op() -> None:
        lease = await c.acquire("uncontended", timeout_s=5)
        await lease.release()

    async def naive_op() -> None:
        await naive.release(await naive.acquire())

    async def local_op() -> None:
        await local.acquire()
        local.release()

    ops = {"coord": coord_op, "naive": naive_op, "local": local_op}
    for op in ops.values():  # warm-up: script loads, connections, first-use checks
        for _ in range(20):
            await op()
    samples: dict[str, list[float]] = {k: [] for k in ops}
    counts = {k: ServerCounters({}, 0.0) for k in ops}
    for _ in range(rounds):
        for name, op in ops.items():
            before = ServerCounters.read(server.client)
            for _ in range(per_round):
                await timed(samples[name], op)
            counts[name] = counts[name].plus(ServerCounters.read(server.client).minus(before))
    for name in ops:
        result.uncontended_us[name] = statistics.median(samples[name])
        result.uncontended_rt[name] = counts[name].client(name) / len(samples[name])
    await naive_client.aclose()

    # Acquire cost with N queued waiters: LIMIT holders, then N queue entries made directly with
    # the acquire_slot script (long queue TTL so they stay), then time a new id's acquire.
    holders = []
    calls = ScriptCalls(c.scripts, c.keyspace)
    for n in QUEUE_SIZES:
        sem_id = f"queued-{n}"
        await c.registry.create(sem_id, LIMIT)
        holders += [await c.acquire(sem_id, timeout_s=5) for _ in range(LIMIT)]
        keys = c.keyspace.semaphore(sem_id)
        for start in range(0, n, 500):
            await asyncio.gather(
                *(enqueue(calls, sem_id, f"w{i}") for i in range(start, min(n, start + 500)))
            )
        assert await server_zcard(c, keys.queue) == n

    async def try_once(sem_id: str) -> None:
        try:
            await c.acquire(sem_id, timeout_s=0)
        except AcquireTimeout:
            return
        raise AssertionError("try-once acquire should have failed")

    try_samples: dict[int, list[float]] = {n: [] for n in QUEUE_SIZES}
    enq_samples: dict[int, list[float]] = {n: [] for n in QUEUE_SIZES}
    try_counts = ServerCounters({}, 0.0)
    enq_counts = ServerCounters({}, 0.0)
    probe_round = max(1, probes // rounds)
    for r in range(rounds):
        for n in QUEUE_SIZES:
            sem_id = f"queued-{n}"
            before = ServerCounters.read(server.client)
            for _ in range(probe_round):
                await timed(try_samples[n], lambda s=sem_id: try_once(s))
            try_counts = try_counts.plus(ServerCounters.read(server.client).minus(before))
            for i in range(probe_round):
                waiter = f"probe-{r}-{i}"
                before = ServerCounters.read(server.client)
                reply: list[AcquireReply] = []

                async def probe(
                    s: str = sem_id, w: str = waiter, out: list[AcquireReply] = reply
                ) -> None:
                    out.append(await enqueue(calls, s, w))

                await timed(enq_samples[n], probe)
                enq_counts = enq_counts.plus(ServerCounters.read(server.client).minus(before))
                assert isinstance(reply[0], Queued) and reply[0].position == n + 1, reply
                await calls.release_slot(sem_id, lease_id=waiter)
    for n in QUEUE_SIZES:
        result.try_once_us[n] = statistics.median(try_samples[n])
        result.enqueue_us[n] = statistics.median(enq_samples[n])
    result.try_once_rt = try_counts.client("coord") / sum(len(s) for s in try_samples.values())
    result.enqueue_rt = enq_counts.client("coord") / sum(len(s) for s in enq_samples.values())
    for lease in holders:
        await lease.release()
    for n in QUEUE_SIZES:
        await c.registry.delete(f"queued-{n}")
    return result


def enqueue(calls: ScriptCalls, sem_id: str, waiter: str) -> Awaitable[AcquireReply]:
    """One acquire_slot call for a waiter that queues (a long queue entry TTL: it stays)."""
    return calls.acquire_slot(
        sem_id,
        lease_id=waiter,
        ttl_ms=int(LEASE_TTL_S * 1000),
        holder_json=json.dumps({"replica": "bench", "purpose": "bench"}),
        acquired_at=time.time(),
        replica="bench",
        waiting_since=time.time(),
        queue=True,
        queue_ttl_ms=LONG_QUEUE_TTL_MS,
    )


async def server_zcard(c: Coordinator, key: str) -> int:
    return int(await c.redis.zcard(key))


async def setup_and_micro(server: PrivateRedis, iterations: int, probes: int) -> MicroResult:
    c = Coordinator(
        CoordinatorConfig(
            redis_url=server.url,
            replica_id="bench-main",
            lease_ttl_s=LEASE_TTL_S,
            queue_entry_ttl_s=QUEUE_TTL_S,
        )
    )
    await c.start()
    try:
        result = await micro(server, c, iterations, probes)
        for pause in (0, PAUSE_MS):
            await c.registry.create(f"bench-coord-{int(pause)}", LIMIT)
        return result
    finally:
        await c.close()


# ----------------------------------------------------------------------------------- table


@dataclass(frozen=True)
class Row:
    label: str
    value: Callable[[RunResult], float | str] | None
    fmt: str
    target: str = ""
    ok: Callable[[float], bool] | None = None


def render(
    runs: dict[tuple[str, float], RunResult], mic: MicroResult, args: argparse.Namespace
) -> str:
    pauses = (0.0, PAUSE_MS)
    impls = [impl for impl in IMPLS if (impl, 0.0) in runs]
    columns = [(impl, p) for impl in impls for p in pauses]

    def metric(key: str) -> Callable[[RunResult], float]:
        return lambda r: r.metrics[key]

    rows = [
        Row("acquisitions/s", metric("acq_rate"), "{:.1f}", "(ideal 80)"),
        Row("utilization", metric("utilization"), "{:.3f}", ">= 0.97", lambda v: v >= 0.97),
        Row("max concurrent holders", metric("max_holders"), "{:.0f}", "<= 4", lambda v: v <= 4),
        Row("over-admissions", metric("over_admissions"), "{:.0f}", "0", lambda v: v == 0),
        Row("acquisitions (total)", metric("acquisitions"), "{:.0f}"),
        Row("share that waited", metric("waited_share"), "{:.2f}"),
        Row("handoff p50 ms", metric("handoff_p50"), "{:.2f}", "<= 2", lambda v: v <= 2),
        Row("handoff p90 ms", metric("handoff_p90"), "{:.2f}"),
        Row("handoff p99 ms", metric("handoff_p99"), "{:.2f}", "<= 15", lambda v: v <= 15),
        Row("acquire wait p50 ms", metric("wait_p50"), "{:.1f}"),
        Row("acquire wait p99 ms", metric("wait_p99"), "{:.1f}"),
        Row("acquire wait max ms", metric("wait_max"), "{:.1f}", "<= 1500", lambda v: v <= 1500),
        Row("fairness CV (per worker)", metric("fair_cv"), "{:.3f}", "<= 0.10", lambda v: v <= 0.1),
        Row(
            "per-worker min/max",
            lambda r: f"{r.metrics['fair_min']:.0f}/{r.metrics['fair_max']:.0f}",
            "{}",
        ),
        Row("client commands/acq", metric("client_cmds"), "{:.2f}", "<= 5", lambda v: v <= 5),
        Row("cmdstat calls/acq incl. in-Lua", metric("all_cmds"), "{:.1f}"),
        Row("redis CPU us/acq", metric("redis_cpu_us"), "{:.0f}"),
        Row("client CPU us/acq", metric("client_cpu_us"), "{:.0f}"),
    ]

    sub = ["metric", *["hold" if p == 0 else f"+{p:.0f} ms pause" for _, p in columns]]
    sub += ["target", "verdict (ours, both)"]
    table: list[list[str]] = []
    verdicts: list[tuple[str, bool]] = []
    for row in rows:
        assert row.value is not None
        cells = []
        misses = []
        for impl, p in columns:
            v = row.value(runs[(impl, p)])
            cells.append(row.fmt.format(v) if not (isinstance(v, float) and math.isnan(v)) else "-")
            checked = impl in OURS and row.ok is not None and isinstance(v, float | int)
            if checked and row.ok is not None and not row.ok(float(v)):
                misses.append(
                    ("" if impl == "coord" else "cluster ") + ("hold" if p == 0 else "pause")
                )
        verdict = ""
        if row.ok is not None:
            verdict = "PASS" if not misses else "MISS " + ",".join(misses)
            verdicts.append((row.label, not misses))
        table.append([row.label, *cells, row.target, verdict])

    def once(label: str, values: dict[str, str], target: str = "", verdict: str = "") -> None:
        cells = []
        for impl, p in columns:
            cells.append(values.get(impl, "-") if p == 0 else "")
        table.append([label, *cells, target, verdict])

    rt_ok = abs(mic.uncontended_rt["coord"] - 2) < 0.05
    verdicts.append(("uncontended round trips", rt_ok))
    once(
        "uncontended acq+rel round trips",
        {k: f"{v:.2f}" for k, v in mic.uncontended_rt.items()},
        "2",
        "PASS" if rt_ok else "MISS",
    )
    once("uncontended acq+rel us (median)", {k: f"{v:.0f}" for k, v in mic.uncontended_us.items()})
    sizes = QUEUE_SIZES
    try_ratio = mic.try_once_us[sizes[-1]] / mic.try_once_us[sizes[0]]
    enq_ratio = mic.enqueue_us[sizes[-1]] / mic.enqueue_us[sizes[0]]
    flat = try_ratio <= 2 and enq_ratio <= 2
    verdicts.append(("acquire cost flat", flat))
    once(
        "try-once acquire us @10/1k/10k q",
        {"coord": "/".join(f"{mic.try_once_us[n]:.0f}" for n in sizes)},
        "flat (<2x)",
        f"{'PASS' if try_ratio <= 2 else 'MISS'} x{try_ratio:.2f}",
    )
    once(
        "enqueue call us @10/1k/10k q",
        {"coord": "/".join(f"{mic.enqueue_us[n]:.0f}" for n in sizes)},
        "flat (<2x)",
        f"{'PASS' if enq_ratio <= 2 else 'MISS'} x{enq_ratio:.2f}",
    )
    once(
        "  round trips: try-once / enqueue",
        {"coord": f"{mic.try_once_rt:.2f} / {mic.enqueue_rt:.2f}"},
    )

    widths = [max(len(line[i]) for line in [sub, *table]) for i in range(len(sub))]
    for k, impl in enumerate(impls):  # each title spans its implementation's two columns
        a, b = 1 + 2 * k, 2 + 2 * k
        widths[b] += max(0, len(IMPL_TITLES[impl]) - (widths[a] + 2 + widths[b]))

    def fmt_line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = [c.rjust(widths[i + 1]) for i, c in enumerate(cells[1:])]
        return "  ".join([first, *rest]).rstrip()

    titles = [" " * widths[0]]
    for k, impl in enumerate(impls):
        span = widths[1 + 2 * k] + 2 + widths[2 + 2 * k]
        titles.append(IMPL_TITLES[impl].center(span))
    out = ["  ".join(titles).rstrip()]
    out.append(fmt_line(sub))
    out.append("  ".join("-" * w for w in widths))
    out.extend(fmt_line(line) for line in table)
    missed = [label for label, ok in verdicts if not ok]
    out.append("")
    out.append(
        f"targets (service.coordination): {len(verdicts) - len(missed)}/{len(verdicts)} PASS"
        + (f"; MISS: {', '.join(missed)}" if missed else "")
    )
    out.append(
        f"workload: {PROCESSES} processes x {WORKERS} workers (asyncio.Semaphore: 1 x "
        f"{PROCESSES * WORKERS}), limit {LIMIT}, hold {HOLD_MS:.0f} ms, {args.duration:g} s per "
        f"run; lease TTL {LEASE_TTL_S:g} s, queue entry TTL {QUEUE_TTL_S:g} s; "
        f"event loop {args.loop}"
    )
    out.append(
        "Cluster: 3 primaries + 3 replicas on this machine; the semaphore lives on one primary, "
        "counters summed over the primaries; '-' where a row was measured on one server only"
    )
    if args.duration < 10:
        out.append("note: fairness / max-wait targets are defined for the 10 s run")
    return "\n".join(out)


# ------------------------------------------------------------------------------------ main


async def create_cluster_semaphores(url: str) -> None:
    c = Coordinator(CoordinatorConfig(redis_url=url, cluster=True, replica_id="bench-main"))
    await c.start()
    try:
        for pause in (0, PAUSE_MS):
            await c.registry.create(f"bench-cluster-{int(pause)}", LIMIT)
    finally:
        await c.close()


@contextlib.contextmanager
def private_cluster() -> Iterator[Target]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server not found on PATH (apt-get install redis-server)")
    with (
        tempfile.TemporaryDirectory(prefix="coord-bench-cluster-") as workdir,
        RedisClusterNodes.started(binary, Path(workdir)) as cluster,
    ):
        client = redis.cluster.RedisCluster.from_url(cluster.url)
        try:
            client.set("rcg:epoch", "benchmark")  # an intact store: no start-up grace
        finally:
            client.close()
        clients = [node.client(10) for node in cluster.primary_nodes()]
        try:
            yield Target(cluster.url, clients, ("--cluster",))
        finally:
            for node_client in clients:
                node_client.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    parser.add_argument("--quick", action="store_true", help="3 s runs, fewer samples")
    parser.add_argument("--iterations", type=int, default=2000, help="uncontended samples")
    parser.add_argument("--probes", type=int, default=200, help="samples per queue size")
    parser.add_argument("--json", type=Path, help="also write every metric to this file")
    parser.add_argument("--no-cluster", action="store_true", help="skip the Cluster column")
    parser.add_argument(
        "--loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="event loop of every process (uvloop: what the service runs on under uvicorn)",
    )
    args = parser.parse_args(argv)
    os.environ["BENCH_LOOP"] = args.loop  # read by the worker processes
    if args.quick:
        args.duration = 3.0
        args.iterations = min(args.iterations, 500)
        args.probes = min(args.probes, 50)

    server = PrivateRedis()
    log = sys.stderr
    try:
        # A deployment's Redis has an epoch key; without it the library treats a Redis that
        # started less than one lease TTL ago as possibly restarted (see renewal.check_epoch).
        server.client.set("rcg:epoch", "benchmark")
        load_before = os.getloadavg()
        print(f"redis {server.version()} on port {server.port}; micro-benchmarks ...", file=log)
        mic = run_on_loop(setup_and_micro(server, args.iterations, args.probes))
        runs: dict[tuple[str, float], RunResult] = {}
        single = Target(server.url, [server.client])
        with contextlib.ExitStack() as stack:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="coord-bench-"))
            cluster = None
            if not args.no_cluster:
                print("starting a Redis Cluster (3 primaries + 3 replicas) ...", file=log)
                cluster = stack.enter_context(private_cluster())
                run_on_loop(create_cluster_semaphores(cluster.url))
            for pause in (0.0, PAUSE_MS):
                for impl in IMPLS:
                    if impl == "cluster" and cluster is None:
                        continue
                    where = cluster if impl == "cluster" and cluster is not None else single
                    print(f"run {impl} pause={pause:g}ms {args.duration:g}s ...", file=log)
                    runs[(impl, pause)] = contended_run(
                        where, impl, pause, args.duration, Path(tmp)
                    )
        load_after = os.getloadavg()
        print(render(runs, mic, args))
        print(
            f"machine: {os.cpu_count()} cpus, load avg {load_before[0]:.2f} before / "
            f"{load_after[0]:.2f} after; redis {server.version()}"
        )
        if args.json:
            args.json.write_text(
                json.dumps(
                    {
                        "runs": {f"{i}/{p:g}": r.metrics for (i, p), r in runs.items()},
                        "server_calls": {
                            f"{i}/{p:g}": r.server.calls for (i, p), r in runs.items()
                        },
                        "micro": {
                            "uncontended_us": mic.uncontended_us,
                            "uncontended_rt": mic.uncontended_rt,
                            "try_once_us": mic.try_once_us,
                            "enqueue_us": mic.enqueue_us,
                        },
                    },
                    indent=2,
                )
            )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
