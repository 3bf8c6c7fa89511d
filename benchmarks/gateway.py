"""The gateway's own cost: one replica against a bare FastAPI proxy on the same stack, side by
side in one run. Prints one table.

    python -m benchmarks.gateway [--rounds 3] [--samples 100] [--seconds 6] [--quick]
    python -m benchmarks.gateway --before REV      # also REV's service (git archive), same run
    python -m benchmarks.gateway --before-dir DIR  # also the service package found in DIR

One Redis, one simulator, one service replica (`python -m service`), one bare proxy
(`benchmarks/naive_replica.py`: FastAPI, uvicorn, the official client, nothing else) and, with
`--before`, a second replica running another version of the service (same Redis, same
simulator, same settings) run for the whole benchmark. Each round:

  latency      the simulator at 0.1 s per prediction; `--samples` requests of each kind, taking
               turns request by request (the order rotates): /generate through each server, and
               the official client calling the simulator directly. Added latency = p50 (p99) of
               one minus the direct call's; the own share is the service's minus the bare
               proxy's (also as the median of the per-sample differences, a moment apart).
  throughput   the simulator at 0 s; `--concurrency` keep-alive callers per server (raw
               HTTP/1.1 on one event loop, so the load generator costs little) send /generate
               back to back, `--seconds` per server in `--slices` turns: one server, then the
               next, and again (the order rotates by round), so that a burst of foreign load
               hits them alike. CPU per request is the utime + stime of the server process
               (/proc/<pid>/stat) over its turns, divided by the requests it answered; Redis
               figures come from INFO commandstats and INFO cpu over the same turns.

Every figure is the median of the rounds with [min-max]; ratios are computed per round.
Machine noise: the load average, and the CPU used by processes other than this benchmark's
during the throughput phase ("foreign", in cores), from /proc/stat.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvloop
from replicate.client import Client

from benchmarks.e2e import SIM_UNLIMITED, naive_processes, pct
from tests.fixtures.cluster import ADMIN_KEY, ROOT, TOKEN, Cluster, admin_headers, running_cluster
from tests.fixtures.ports import free_port

TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
LATENCY_S = 0.1
SERVICE, BARE, BEFORE, DIRECT = "service", "bare", "before", "direct"

# Targets of issue 17 (the gateway's own cost).
OWN_SHARE_MAX_MS = 1.0
CPU_RATIO_MAX = 1.3
RPS_RATIO_MIN = 0.75

ENV = {
    "REPLICATE_REQUESTS_PER_MINUTE": "1000000",
    "POLL_BUDGET_PER_MINUTE": "1000000",
    "REPLICATE_CONCURRENT_LIMIT": "64",
    # The default (the test cluster's 3 s renews and checks the epoch ten times as often).
    "LEASE_TTL_SECONDS": "30",
}


def cpu_s(pid: int) -> float:
    """utime + stime of a process (all its threads), in seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) * TICK_S


def machine_busy_s() -> float:
    """CPU seconds the whole machine spent busy (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    return (sum(values[:8]) - idle) * TICK_S


def redis_counters(client: Any) -> tuple[dict[str, int], float]:
    stats = client.info("commandstats")
    calls = {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}
    cpu = client.info("cpu")
    return calls, float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"])


# -- a cheap keep-alive HTTP/1.1 caller ---------------------------------------------------------


class RawCaller:
    """One keep-alive connection; POSTs a JSON body and reads a Content-Length answer."""

    def __init__(self, host: str, port: int, headers: dict[str, str]) -> None:
        self.host, self.port = host, port
        self.headers = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> int:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n{self.headers}\r\n"
        )
        self.writer.write(head.encode() + body)
        raw = await self.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        length = 0
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.lower() == "content-length":
                length = int(value)
        await self.reader.readexactly(length)
        return status

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()


def host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


# -- phases -------------------------------------------------------------------------------------


@dataclass
class Round:
    p50_ms: dict[str, float] = field(default_factory=dict)
    p99_ms: dict[str, float] = field(default_factory=dict)
    paired_ms: dict[str, float] = field(default_factory=dict)  # median of (kind - bare)
    seq_cpu_us: dict[str, float] = field(default_factory=dict)
    rps: dict[str, float] = field(default_factory=dict)
    cpu_us: dict[str, float] = field(default_factory=dict)
    core_share: dict[str, float] = field(default_factory=dict)
    sim_cpu_us: dict[str, float] = field(default_factory=dict)
    redis_cpu_us: dict[str, float] = field(default_factory=dict)
    redis_calls: dict[str, dict[str, float]] = field(default_factory=dict)
    foreign_cores: list[float] = field(default_factory=list)


async def latency_phase(
    urls: dict[str, str], pids: dict[str, int], direct: Client, samples: int, r: Round
) -> None:
    kinds = [*pids, DIRECT]
    took: dict[str, list[float]] = {kind: [] for kind in kinds}
    async with httpx.AsyncClient(timeout=30, headers=admin_headers()) as client:

        async def one(kind: str, i: int) -> float:
            started = time.perf_counter()
            if kind == DIRECT:
                prediction = await direct.models.predictions.async_create(
                    model="black-forest-labs/flux-dev", input={"prompt": f"d{i}"}, wait=5
                )
                assert prediction.status == "succeeded", (prediction.status, prediction.error)
            else:
                response = await client.post(
                    urls[kind] + "/generate", json={"model_name": "flux-dev", "prompt": f"o{i}"}
                )
                assert response.status_code == 200, response.text
            return time.perf_counter() - started

        for i in range(5):  # warm-up
            for kind in kinds:
                await one(kind, i)
        cpu0 = {k: cpu_s(p) for k, p in pids.items()}
        for i in range(samples):
            shift = i % len(kinds)
            for kind in kinds[shift:] + kinds[:shift]:
                took[kind].append(await one(kind, i))
        cpu1 = {k: cpu_s(p) for k, p in pids.items()}
    for kind, values in took.items():
        r.p50_ms[kind] = statistics.median(values) * 1000
        r.p99_ms[kind] = pct(values, 0.99) * 1000
        pairs = zip(values, took[BARE], strict=True)
        r.paired_ms[kind] = statistics.median(a - b for a, b in pairs) * 1000
    for kind in pids:
        r.seq_cpu_us[kind] = (cpu1[kind] - cpu0[kind]) / samples * 1e6


BODY = json.dumps({"model_name": "flux-dev", "prompt": "t"}).encode()


async def open_callers(url: str, concurrency: int) -> list[RawCaller]:
    host, port = host_port(url)
    callers = [RawCaller(host, port, {"X-Admin-API-Key": ADMIN_KEY}) for _ in range(concurrency)]
    for caller in callers:  # warm-up: connections open, one request each
        assert await caller.post("/generate", BODY) == 200
    return callers


async def load(callers: list[RawCaller], seconds: float) -> tuple[int, float]:
    """Requests answered by `callers` sending back to back for `seconds`, and the time taken."""
    done = 0
    end = time.perf_counter() + seconds

    async def run(caller: RawCaller) -> None:
        nonlocal done
        while time.perf_counter() < end:
            status = await caller.post("/generate", BODY)
            assert status == 200, status
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(run(c) for c in callers))
    return done, time.perf_counter() - started


@dataclass
class Tally:
    """What one server did over its throughput slices."""

    done: int = 0
    took_s: float = 0.0
    cpu_s: float = 0.0
    sim_cpu_s: float = 0.0
    redis_cpu_s: float = 0.0
    calls: dict[str, int] = field(default_factory=dict)


async def throughput_phase(
    urls: dict[str, str],
    pids: dict[str, int],
    others: list[int],
    redis_client: Any,
    order: list[str],
    args: argparse.Namespace,
    r: Round,
) -> None:
    """`--seconds` per server in `--slices` slices, the servers taking turns slice by slice, so
    that a burst of foreign load hits each of them alike."""
    sim_pid = others[0]
    ours = [os.getpid(), *others, *pids.values()]
    callers = {kind: await open_callers(urls[kind], args.concurrency) for kind in order}
    tallies = {kind: Tally() for kind in order}
    busy0, all0, wall0 = machine_busy_s(), sum(cpu_s(p) for p in ours), time.perf_counter()
    for _ in range(args.slices):
        for kind in order:
            tally = tallies[kind]
            calls0, rcpu0 = redis_counters(redis_client)
            own0, sim0 = cpu_s(pids[kind]), cpu_s(sim_pid)
            done, took = await load(callers[kind], args.seconds / args.slices)
            calls1, rcpu1 = redis_counters(redis_client)
            tally.done += done
            tally.took_s += took
            tally.cpu_s += cpu_s(pids[kind]) - own0
            tally.sim_cpu_s += cpu_s(sim_pid) - sim0
            tally.redis_cpu_s += rcpu1 - rcpu0
            for name, count in calls1.items():
                if name != "info" and count > calls0.get(name, 0):
                    tally.calls[name] = tally.calls.get(name, 0) + count - calls0.get(name, 0)
    wall = time.perf_counter() - wall0
    busy = machine_busy_s() - busy0
    r.foreign_cores.append(max(0.0, busy - (sum(cpu_s(p) for p in ours) - all0)) / wall)
    for group in callers.values():
        for caller in group:
            await caller.close()
    for kind, tally in tallies.items():
        r.rps[kind] = tally.done / tally.took_s
        r.cpu_us[kind] = tally.cpu_s / tally.done * 1e6
        r.core_share[kind] = tally.cpu_s / tally.took_s
        r.sim_cpu_us[kind] = tally.sim_cpu_s / tally.done * 1e6
        r.redis_cpu_us[kind] = tally.redis_cpu_s / tally.done * 1e6
        r.redis_calls[kind] = {name: count / tally.done for name, count in tally.calls.items()}


# -- orchestration ------------------------------------------------------------------------------


def export(rev: str, workdir: Path) -> Path:
    """`rev`'s service package and scripts in `workdir` (git archive: the tree is untouched)."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", rev, "service", "redis_scripts"],
        check=True,
        capture_output=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(workdir, filter="data")
    return workdir


@contextlib.contextmanager
def before_replica(cluster: Cluster, tree: Path) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """A replica of the service found in `tree` (its `service` package is imported first: `-m`
    puts the working directory ahead of the installed project), on the cluster's Redis and
    simulator, with the cluster's settings."""
    port = free_port()
    env = {
        **cluster.replica_env(0),
        "FLASK_PORT": str(port),
        "REPLICA_ID": "replica-before",
        "PYTHONPATH": str(tree),
    }
    log_path = cluster.workdir / "replica-before.log"
    log = log_path.open("ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "service"], cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None:
                tail = log_path.read_text(errors="replace")[-3000:]
                raise RuntimeError(f"the --before replica exited: {tail}")
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError("the --before replica did not become healthy")
            time.sleep(0.1)
        yield url, process
    finally:
        process.kill()
        process.wait(timeout=10)
        log.close()


@contextlib.contextmanager
def servers(
    log_level: str, before: Path | None
) -> Iterator[tuple[dict[str, str], dict[str, int], list[int], Cluster]]:
    """URLs and pids of the servers under test; the pids of the simulator and Redis."""
    env = {**ENV, "LOG_LEVEL": log_level}
    with (
        running_cluster(replicas=1, env=env, latency=LATENCY_S, **SIM_UNLIMITED) as cluster,
        naive_processes(1, cluster.sim_url) as [(bare_url, bare)],
        contextlib.ExitStack() as stack,
    ):
        replica = cluster.replicas[0]
        assert replica is not None and cluster.simulator is not None
        assert cluster.redis.process is not None
        urls = {SERVICE: cluster.url(0), BARE: bare_url, "sim": cluster.sim_url}
        pids = {SERVICE: replica.pid, BARE: bare.pid}
        if before is not None:
            urls[BEFORE], process = stack.enter_context(before_replica(cluster, before))
            pids[BEFORE] = process.pid
        yield urls, pids, [cluster.simulator.pid, cluster.redis.process.pid], cluster


def sim_latency(sim_url: str, latency_s: float) -> None:
    httpx.patch(sim_url + "/_sim/config", json={"latency_s": latency_s}).raise_for_status()
    httpx.post(sim_url + "/_sim/reset").raise_for_status()


async def bench(args: argparse.Namespace, before: Path | None) -> list[Round]:
    rounds: list[Round] = []
    with servers(args.log_level, before) as (urls, pids, others, cluster):
        redis_client = cluster.redis.sync_client()
        direct = Client(api_token=TOKEN, base_url=urls["sim"])
        kinds = list(pids)
        for index in range(args.rounds):
            r = Round()
            print(f"round {index + 1}/{args.rounds}: latency", file=sys.stderr, flush=True)
            sim_latency(urls["sim"], LATENCY_S)
            await latency_phase(urls, pids, direct, args.samples, r)
            print(f"round {index + 1}/{args.rounds}: throughput", file=sys.stderr, flush=True)
            sim_latency(urls["sim"], 0.0)
            shift = index % len(kinds)
            order = kinds[shift:] + kinds[:shift]
            await throughput_phase(urls, pids, others, redis_client, order, args, r)
            rounds.append(r)
    return rounds


# -- the table ----------------------------------------------------------------------------------


def spread(values: list[float], fmt: str) -> str:
    low, mid, high = (fmt.format(v) for v in (min(values), statistics.median(values), max(values)))
    return f"{mid} [{low}-{high}]"


def table(rounds: list[Round], args: argparse.Namespace, load0: float, load1: float) -> str:
    kinds = [k for k in (SERVICE, BARE, BEFORE) if k in rounds[0].rps]
    services = [k for k in kinds if k != BARE]

    def row(
        name: str, get: Callable[[Round, str], float], fmt: str, which: list[str], target: str = ""
    ) -> list[str]:
        cells = [spread([get(r, k) for r in rounds], fmt) if k in which else "" for k in kinds]
        return [name, *cells, target]

    def added(which: str) -> Callable[[Round, str], float]:
        per = "p50_ms" if which == "p50" else "p99_ms"
        return lambda r, k: getattr(r, per)[k] - getattr(r, per)[DIRECT]

    def own(which: str) -> Callable[[Round, str], float]:
        return lambda r, k: added(which)(r, k) - added(which)(r, BARE)

    def judged(get: Callable[[Round, str], float], ok: Callable[[float], bool]) -> str:
        parts = []
        for k in services:
            value = statistics.median(get(r, k) for r in rounds)
            parts.append(f"{k} {value:.2f} {'PASS' if ok(value) else 'MISS'}")
        return ", ".join(parts)

    def ratio(get: Callable[[Round, str], float]) -> Callable[[Round, str], float]:
        return lambda r, k: get(r, k) / get(r, BARE)

    def cpu(r: Round, k: str) -> float:
        return r.cpu_us[k]

    def rps(r: Round, k: str) -> float:
        return r.rps[k]

    def script_calls(r: Round, k: str) -> float:
        calls = r.redis_calls[k]
        return sum(v for n, v in calls.items() if n.split("|")[0] in ("evalsha", "eval"))

    heads = {SERVICE: "service", BARE: "bare proxy", BEFORE: "service --before"}
    rows: list[list[str]] = [
        [f"latency, simulator {LATENCY_S:g} s", *(heads[k] for k in kinds), "target"],
        row("  added over direct, p50 ms", added("p50"), "{:.2f}", kinds),
        row("  added over direct, p99 ms (p99 - p99)", added("p99"), "{:.2f}", kinds),
        row("  direct call p50 ms", lambda r, k: r.p50_ms[DIRECT], "{:.1f}", [SERVICE]),
        row(
            "  own share p50 ms (minus bare)",
            own("p50"),
            "{:.2f}",
            services,
            f"<= {OWN_SHARE_MAX_MS}: {judged(own('p50'), lambda v: v <= OWN_SHARE_MAX_MS)}",
        ),
        row("  own share p99 ms (minus bare)", own("p99"), "{:.2f}", services),
        row("  own share, median of pairs ms", lambda r, k: r.paired_ms[k], "{:.2f}", services),
        row(
            "  CPU us / request, idle work incl.",
            lambda r, k: r.seq_cpu_us[k],
            "{:.0f}",
            kinds,
        ),
        [f"throughput, simulator 0 s, {args.concurrency} callers", *([""] * len(kinds)), ""],
        row("  requests/s", rps, "{:.0f}", kinds),
        row(
            "  requests/s ratio (/ bare)",
            ratio(rps),
            "{:.2f}",
            services,
            f">= {RPS_RATIO_MIN}: {judged(ratio(rps), lambda v: v >= RPS_RATIO_MIN)}",
        ),
        row("  CPU us / request (server process)", cpu, "{:.0f}", kinds),
        row(
            "  CPU ratio (/ bare)",
            ratio(cpu),
            "{:.2f}",
            services,
            f"<= {CPU_RATIO_MAX}: {judged(ratio(cpu), lambda v: v <= CPU_RATIO_MAX)}",
        ),
        row("  server CPU, cores busy", lambda r, k: r.core_share[k], "{:.2f}", kinds),
        row("  simulator CPU us / request", lambda r, k: r.sim_cpu_us[k], "{:.0f}", kinds),
        row("  Redis CPU us / request", lambda r, k: r.redis_cpu_us[k], "{:.0f}", services),
        row("  Redis script calls / request", script_calls, "{:.2f}", services),
        row(
            "  Redis commands / request, in-Lua incl.",
            lambda r, k: sum(r.redis_calls[k].values()),
            "{:.1f}",
            services,
        ),
    ]
    widths = [max(len(cells[i]) for cells in rows) for i in range(len(kinds) + 1)]
    lines = [
        "  ".join(
            [cell.ljust(widths[i]) for i, cell in enumerate(cells[:-1])] + [cells[-1]]
        ).rstrip()
        for cells in rows
    ]
    foreign = [c for r in rounds for c in r.foreign_cores]
    lines.append(
        f"(median [min-max] of {len(rounds)} rounds; {args.samples} requests of each kind per "
        f"round, {args.seconds:g} s per server per round in {args.slices} turns; "
        f"LOG_LEVEL={args.log_level})"
    )
    lines.append(
        f"noise: {os.cpu_count()} cpus, load avg {load0:.2f} before / {load1:.2f} after; CPU "
        f"used by other processes during the throughput phases: {spread(foreign, '{:.2f}')} "
        "cores"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=6.0, help="per server per round")
    parser.add_argument("--slices", type=int, default=6, help="turns per server per round")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--log-level", default="INFO", help="the replicas' LOG_LEVEL")
    parser.add_argument("--quick", action="store_true", help="--samples 40 --seconds 3 --slices 3")
    compare = parser.add_mutually_exclusive_group()
    compare.add_argument("--before", metavar="REV", help="also this git revision's service")
    compare.add_argument("--before-dir", metavar="DIR", help="also the service package in DIR")
    parser.add_argument("--json", help="also write every round's figures to this file")
    args = parser.parse_args()
    if args.quick:
        args.samples, args.seconds, args.slices = 40, 3.0, 3
    load0 = os.getloadavg()[0]
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gateway-bench-") as tmp:
        before = None
        if args.before:
            before = export(args.before, Path(tmp))
        elif args.before_dir:
            before = Path(args.before_dir).resolve()
        rounds = uvloop.run(bench(args, before))
    load1 = os.getloadavg()[0]
    print(table(rounds, args, load0, load1))
    label = f"; --before {args.before or args.before_dir}" if before is not None else ""
    print(f"event loop uvloop{label}; {time.perf_counter() - started:.0f} s in all")
    if args.json:
        with open(args.json, "w") as f:
            json.dump([r.__dict__ for r in rounds], f, indent=1)


if __name__ == "__main__":
    main()
