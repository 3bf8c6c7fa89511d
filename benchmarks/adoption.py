"""What pinning a lease to its prediction costs (docs/slot-ownership.md), and what an orphan costs.

    python -m benchmarks.adoption [--rounds 20] [--pairs 150] [--named 6] [--unnamed 4]
    python -m benchmarks.adoption --before 04fa138     # also the code before pins, side by side

1. The normal path: acquire + release of a global semaphore through `Coordinator.acquire(...,
   pin_s=930)` and `pin_s=0`, and one renewal (`Renewer.renew_group`) of a pinned and of an
   unpinned lease: latency, Redis calls (INFO commandstats, in-Lua calls included) and Redis
   time. Each variant runs in a worker process of its own, all taking turns round by round.
   With `--before REV`, a third worker runs the same on that revision's `service` package
   (exported with `git archive`; the working tree is untouched).
2. An orphan: replica A holds the only slot of a semaphore for a prediction running at the
   simulator, and dies (its lease is abandoned: never renewed again, never released). Replica
   B has a caller waiting in `acquire` and an OrphanKeeper wired as service/app.py wires it.
   Measured from A's death: when the lease expired, when B noticed and adopted the orphan, when
   Replicate said the prediction was terminal, and when B's caller got the slot; B's script
   calls, Redis calls and Replicate calls on the way. "named": the record has the prediction id
   (GET, cancel); "unnamed": only model and input (found through the list, waited out).

Starts its own redis-server and simulator on free loopback ports and stops them at the end. No
timing assertion: it prints one table (medians of several runs; see benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import logging
import math
import os
import random
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from operator import attrgetter
from pathlib import Path
from typing import Any

import httpx
import redis

from benchmarks.coord_redis import LUA_COMMANDS, PrivateRedis
from benchmarks.coord_worker import run_on_loop
from service.coordination import GLOBAL, Coordinator, CoordinatorConfig, Holder, Lease, Orphan
from service.fingerprint import token_fingerprint
from service.limits import PIN_MARGIN_S
from service.orphans import CREATE_TRANSIT_S, OrphanKeeper
from service.sealing import TokenSealer
from service.upstream import Upstream
from service.upstream.results import TERMINAL_STATUSES
from tests.fixtures.ports import free_port
from tests.fixtures.simulator import (
    spawn_simulator_process,
    stop_simulator_process,
    wait_for_simulator,
)

ROOT = Path(__file__).resolve().parents[1]
PREDICTION_TIMEOUT_S = 900.0
PIN_S = PREDICTION_TIMEOUT_S + PIN_MARGIN_S  # what service.limits pins a generation's slot to
NORMAL_LIMIT = 4
NORMAL_TTL_S = 30.0  # LEASE_TTL_SECONDS' default
ORPHAN_TTL_S = 2.0
NAMED_MODEL = "black-forest-labs/flux-dev"  # the simulator's default latency (30 s here)
UNNAMED_MODEL = "qwen/qwen-image"  # 6 s here: it is waited out, never cancelled
SIM_LATENCY_S = 30.0
UNNAMED_LATENCY_S = 6.0
SERVER_TOKEN = "r8_adoption_bench_server"
ACCOUNT = token_fingerprint(SERVER_TOKEN)
ORPHAN_SEMAPHORE = "orphan-bench"
LUA = LUA_COMMANDS["coord"]


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return math.nan
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


def generation_holder(replica: str, model: str, replicate_input: dict[str, Any]) -> Holder:
    """A holder as service/generation.py fills it for a caller on the server's token."""
    return Holder(
        replica=replica,
        purpose=f"generate {model.split('/')[-1]}",
        account=ACCOUNT,
        model=model,
        input=replicate_input,
    )


def flux_input(prompt: str, seed: int) -> dict[str, Any]:
    return {
        "prompt": prompt,
        "aspect_ratio": "1:1",
        "num_outputs": 1,
        "output_format": "webp",
        "go_fast": True,
        "seed": seed,
    }


# ------------------------------------------------------------------------- Redis counters


@dataclass(frozen=True)
class Counters:
    """INFO commandstats (calls and usec per command, INFO left out) and INFO cpu."""

    calls: dict[str, int]
    usec: dict[str, int]
    cpu_s: float

    @classmethod
    def zero(cls) -> Counters:
        return cls({}, {}, 0.0)

    @classmethod
    def read(cls, client: redis.Redis) -> Counters:
        stats = client.info("commandstats")
        cpu = client.info("cpu")
        calls, usec = {}, {}
        for key, value in stats.items():
            name = key.removeprefix("cmdstat_")
            if name != "info":
                calls[name] = int(value["calls"])
                usec[name] = int(value["usec"])
        return cls(calls, usec, float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]))

    def minus(self, before: Counters) -> Counters:
        return Counters(
            {n: v - before.calls.get(n, 0) for n, v in self.calls.items()},
            {n: v - before.usec.get(n, 0) for n, v in self.usec.items()},
            self.cpu_s - before.cpu_s,
        )

    def plus(self, other: Counters) -> Counters:
        names = set(self.calls) | set(other.calls)
        return Counters(
            {n: self.calls.get(n, 0) + other.calls.get(n, 0) for n in names},
            {n: self.usec.get(n, 0) + other.usec.get(n, 0) for n in names},
            self.cpu_s + other.cpu_s,
        )

    @property
    def evalsha(self) -> int:
        return self.calls.get("evalsha", 0) + self.calls.get("eval", 0)

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    @property
    def in_lua(self) -> int:
        return sum(v for k, v in self.calls.items() if k.split("|")[0] in LUA)

    @property
    def script_us(self) -> int:
        """Server time inside scripts: EVALSHA's usec covers the commands it runs."""
        return self.usec.get("evalsha", 0) + self.usec.get("eval", 0)


# ------------------------------------------------------------------ 1. the normal path

# One variant of the normal path, in a process of its own on a given `service` package (the
# working tree, or an older revision exported with `git archive`), so that every variant runs
# in the same kind of process. It needs only Coordinator, Holder and Renewer.renew_group, whose
# APIs the revision before pins shares (pin_s is passed only when set). It writes the holder
# fields its own Holder has: what that version of service/generation.py wrote.
WORKER = r"""
import asyncio, dataclasses, json, os, sys, time
from service.coordination import Coordinator, CoordinatorConfig, Holder

async def main(url, prefix, pin_s):
    c = Coordinator(CoordinatorConfig(redis_url=url, prefix=prefix, replica_id="bench-" + prefix,
                                      lease_ttl_s=float(os.environ["BENCH_TTL"])))
    await c.start()
    limit = int(os.environ["BENCH_LIMIT"])
    await c.registry.create("normal", limit)
    await c.registry.create("renewal", limit)
    known = {f.name for f in dataclasses.fields(Holder)}
    holder = Holder(**{k: v for k, v in json.loads(os.environ["BENCH_HOLDER"]).items()
                       if k in known})
    pin = {"pin_s": pin_s} if pin_s else {}
    renewed = await c.acquire("renewal", timeout_s=5, holder=holder, **pin)

    async def pair():
        lease = await c.acquire("normal", timeout_s=5, holder=holder, **pin)
        await lease.release()

    async def renew():
        await c.renewer.renew_group([renewed])

    ops = {"pairs": pair, "renewals": renew}
    for op in ops.values():  # warm-up: script loads, connections, first-use checks
        for _ in range(50):
            await op()
    print("READY", flush=True)
    loop = asyncio.get_running_loop()
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).split()
        if not line or line[0] == "QUIT":
            break
        op, samples = ops[line[0]], []
        for _ in range(int(line[1])):
            start = time.perf_counter()
            await op()
            samples.append((time.perf_counter() - start) * 1e6)
        print(json.dumps(samples), flush=True)
    await renewed.release()
    await c.close()

main_ = main(sys.argv[1], sys.argv[2], float(sys.argv[3]))
if os.environ.get("BENCH_LOOP", "uvloop") == "uvloop":
    import uvloop
    uvloop.run(main_)
else:
    asyncio.run(main_)
"""


class Worker:
    """One variant in its own process (WORKER), running batches when told."""

    def __init__(self, name: str, tree: Path, url: str, pin_s: float, holder: Holder) -> None:
        env = {
            **os.environ,
            "PYTHONPATH": str(tree),
            "BENCH_TTL": str(NORMAL_TTL_S),
            "BENCH_LIMIT": str(NORMAL_LIMIT),
            "BENCH_HOLDER": holder.to_json(),
        }
        self.process = subprocess.Popen(
            [sys.executable, "-c", WORKER, url, name, str(pin_s)],
            cwd=tree,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        ready = self._line()
        if ready != "READY":
            raise SystemExit(f"the {name} worker did not start: {ready!r}")

    def _line(self) -> str:
        assert self.process.stdout is not None
        return self.process.stdout.readline().strip()

    def run(self, op: str, count: int) -> list[float]:
        assert self.process.stdin is not None
        self.process.stdin.write(f"{op} {count}\n")
        self.process.stdin.flush()
        return [float(v) for v in json.loads(self._line())]

    def close(self) -> None:
        if self.process.poll() is None:
            assert self.process.stdin is not None
            self.process.stdin.write("QUIT\n")
            self.process.stdin.flush()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def export(rev: str, workdir: Path) -> Path:
    """`rev`'s service package and scripts in `workdir` (git archive: the tree is untouched)."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", "--format=tar", rev, "service", "redis_scripts"],
        capture_output=True,
        check=True,
    ).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(workdir, filter="data")
    return workdir


@dataclass
class Variant:
    samples: dict[str, list[float]] = field(default_factory=lambda: {"pairs": [], "renewals": []})
    counts: dict[str, Counters] = field(
        default_factory=lambda: {"pairs": Counters.zero(), "renewals": Counters.zero()}
    )
    round_p50: dict[str, list[float]] = field(default_factory=lambda: {"pairs": [], "renewals": []})


def normal_path(
    server: PrivateRedis, rounds: int, pairs: int, before: str | None, workdir: Path
) -> dict[str, Variant]:
    holder = generation_holder("bench", NAMED_MODEL, flux_input("a fox in the snow", 7))
    plan = [("pinned", ROOT, PIN_S), ("unpinned", ROOT, 0.0)]
    if before:
        print(f"exporting {before} ...", file=sys.stderr)
        plan.append(("before", export(before, workdir), 0.0))
    workers: dict[str, Worker] = {}
    try:
        for name, tree, pin_s in plan:
            # An intact store for each prefix: no start-up grace (see Renewer.check_epoch).
            server.client.set(f"{name}:epoch", "benchmark")
            workers[name] = Worker(name, tree, server.url, pin_s, holder)
        names = list(workers)
        variants = {name: Variant() for name in names}
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]  # who goes first rotates
            for what, count in (("pairs", pairs), ("renewals", max(20, pairs // 2))):
                for name in order:
                    v = variants[name]
                    before_counts = Counters.read(server.client)
                    batch = workers[name].run(what, count)
                    v.counts[what] = v.counts[what].plus(
                        Counters.read(server.client).minus(before_counts)
                    )
                    v.samples[what] += batch
                    v.round_p50[what].append(statistics.median(batch))
        return variants
    finally:
        for worker in workers.values():
            worker.close()


# ------------------------------------------------------------------------- 2. orphans


@dataclass
class Trial:
    """One orphan, seconds from A's death (monotonic, one process)."""

    kind: str
    expired: float = math.nan
    noticed: float = math.nan
    adopted: float = math.nan
    terminal: float = math.nan
    given_back: float = math.nan
    ended: float = math.nan  # the prediction's end at the simulator (its clock: time.time())
    orphaned: float = math.nan  # when B's acquire turned the expired lease into an orphan
    granted: float = math.nan
    outcome: str = ""
    matches: int = -1  # unnamed: how many predictions the list matched
    scripts: Counter[str] = field(default_factory=Counter)  # B's script calls by name
    redis: Counters = field(default_factory=Counters.zero)
    replicate: dict[str, int] = field(default_factory=dict)


class OrphanBench:
    """Redis, the simulator, replica A (dies) and replica B (waits; adopts with a keeper)."""

    def __init__(self, server: PrivateRedis, sim_url: str) -> None:
        self.server = server
        self.sim_url = sim_url
        self.trial: Trial | None = None
        self.t0 = 0.0
        self.scripts: Counter[str] = Counter()
        self.in_flight: Counter[str] = Counter()

    async def start(self) -> None:
        def coordinator(replica: str) -> Coordinator:
            return Coordinator(
                CoordinatorConfig(
                    redis_url=self.server.url, replica_id=replica, lease_ttl_s=ORPHAN_TTL_S
                )
            )

        self.a, self.b = coordinator("replica-A"), coordinator("replica-B")
        for c, who in ((self.a, "A"), (self.b, "B")):
            await c.start()
            self._count_scripts(c, who)
        await self.a.registry.create(ORPHAN_SEMAPHORE, 1)
        self.http = httpx.AsyncClient(base_url=self.sim_url, timeout=30)
        self.upstream = Upstream(self.sim_url, prediction_timeout_s=PREDICTION_TIMEOUT_S)
        self.keeper = OrphanKeeper(
            self.b,
            self.upstream,
            server_token=SERVER_TOKEN,
            sealer=TokenSealer(None, max_age_s=PIN_S),
        )
        # As service/app.py wires it, with a probe in front to time the notice.
        self.b.on_orphans.append(lambda kind, sid: self._mark("noticed"))
        self.b.on_orphans.append(self.keeper.notice)
        self.keeper.on_settled.append(self._settled)
        # First uses out of the way: adopt_orphans' script load, the token's Replicate client.
        await self.b.adopt_orphans(ORPHAN_SEMAPHORE, kind=GLOBAL, count=1)
        await self.upstream.verify_token(SERVER_TOKEN)
        self._probe_adoption()

    async def close(self) -> None:
        await self.keeper.close()
        await self.upstream.aclose()
        await self.http.aclose()
        for c in (self.a, self.b):
            await c.close()

    # -- probes --

    def _mark(self, name: str) -> None:
        """The first time `name` happened in this trial, in seconds since A's death."""
        if self.trial is not None and math.isnan(getattr(self.trial, name)):
            setattr(self.trial, name, time.monotonic() - self.t0)

    def _settled(self, outcome: str, waited_s: float) -> None:
        self._mark("given_back")
        if self.trial is not None:
            self.trial.outcome = outcome

    def _count_scripts(self, c: Coordinator, who: str) -> None:
        call = c.scripts.call

        async def counted(name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
            self.scripts[f"{who}:{name}"] += 1
            self.in_flight[who] += 1
            try:
                return await call(name, keys, args)
            finally:
                self.in_flight[who] -= 1

        c.scripts.call = counted  # type: ignore[method-assign]

    def _probe_adoption(self) -> None:
        adopt, settle, find = (
            self.b.adopt_orphans,
            self.upstream.settle,
            self.upstream.find_predictions,
        )

        async def adopt_orphans(semaphore_id: str, *, kind: str, count: int) -> list[Orphan]:
            orphans = await adopt(semaphore_id, kind=kind, count=count)
            if orphans:
                self._mark("adopted")
                if self.trial is not None:
                    self.trial.orphaned = self.trial.adopted - orphans[0].orphaned_for_s
            return orphans

        async def settle_probe(token: str, prediction_id: str, **kw: Any) -> str | None:
            status = await settle(token, prediction_id, **kw)
            self._mark("terminal")
            return status

        async def find_probe(
            token: str,
            model_ref: str,
            replicate_input: dict[str, Any],
            *,
            created_after_epoch_s: float,
        ) -> list[tuple[str, str]] | None:
            found = await find(
                token, model_ref, replicate_input, created_after_epoch_s=created_after_epoch_s
            )
            if found is not None and self.trial is not None:
                self.trial.matches = len(found)
                if all(status in TERMINAL_STATUSES for _, status in found):
                    self._mark("terminal")
            return found

        self.b.adopt_orphans = adopt_orphans  # type: ignore[method-assign]
        self.upstream.settle = settle_probe  # type: ignore[method-assign]
        self.upstream.find_predictions = find_probe  # type: ignore[method-assign]

    async def replicate_stats(self) -> dict[str, Any]:
        reply = await self.http.get("/_sim/stats", params={"token_fp": ACCOUNT})
        return dict(reply.json()["tokens"][ACCOUNT])

    async def create_prediction(self, model: str, replicate_input: dict[str, Any]) -> str:
        reply = await self.http.post(
            f"/v1/models/{model}/predictions",
            json={"input": replicate_input},
            headers={
                "Authorization": f"Bearer {SERVER_TOKEN}",
                "Cancel-After": f"{int(PREDICTION_TIMEOUT_S)}s",
            },
        )
        reply.raise_for_status()
        return str(reply.json()["id"])

    # -- one orphan --

    async def run(self, kind: str, index: int) -> Trial:
        named = kind == "named"
        model = NAMED_MODEL if named else UNNAMED_MODEL
        replicate_input = flux_input(f"adoption benchmark, {kind} orphan {index}", index)
        if not named:
            replicate_input.pop("num_outputs")
            replicate_input.pop("aspect_ratio")
        keys = self.b.keyspace.semaphore(ORPHAN_SEMAPHORE)
        # A: the slot, then the prediction (and, named, its id in the lease record).
        lease = await self.a.acquire(
            ORPHAN_SEMAPHORE,
            timeout_s=10,
            holder=generation_holder("replica-A", model, replicate_input),
            pin_s=PIN_S,
        )
        prediction_id = await self.create_prediction(model, replicate_input)
        if named:
            await lease.set_prediction_id(prediction_id)
        # B: a caller waits for that slot.
        waiter = asyncio.create_task(
            self.b.acquire(
                ORPHAN_SEMAPHORE,
                timeout_s=60,
                holder=generation_holder("replica-B", model, replicate_input),
                pin_s=PIN_S,
            )
        )
        while await self.b.redis.zcard(keys.queue) < 1:
            await asyncio.sleep(0.005)
        # A dies at an arbitrary moment of its renewal cycle.
        await asyncio.sleep(random.uniform(0, self.a.renewer.interval_s))
        trial = Trial(kind)
        replicate_before = await self.replicate_stats()
        redis_before = Counters.read(self.server.client)
        scripts_before = Counter(self.scripts)
        self.trial, self.t0, died_at = trial, time.monotonic(), time.time()
        lease.abandon()  # A stops renewing and never releases
        # The expiry Redis has for it, once a renewal A had in flight (if any) has landed.
        await asyncio.sleep(0.002)
        while self.in_flight["A"]:
            await asyncio.sleep(0.001)
        pipe = self.b.redis.pipeline(transaction=False)
        pipe.time()
        pipe.zscore(keys.holders, lease.lease_id)
        (seconds, micros), expiry_ms = await pipe.execute()
        now_ms = seconds * 1000 + micros / 1000
        trial.expired = time.monotonic() - self.t0 + (float(expiry_ms) - now_ms) / 1000
        granted: Lease = await waiter
        trial.granted = time.monotonic() - self.t0
        trial.redis = Counters.read(self.server.client).minus(redis_before)
        # Less the probe's own TIME and ZSCORE (both also called in Lua).
        trial.redis.calls["time"] -= 1
        trial.redis.calls["zscore"] -= 1
        after = await self.replicate_stats()
        trial.replicate = {
            k: int(after[k]) - int(replicate_before[k])
            for k in ("get_requests", "cancels", "list_requests")
        }
        _, ended_at = after["intervals"][after["prediction_ids"].index(prediction_id)]
        if ended_at is not None:
            trial.ended = float(ended_at) - died_at
        trial.scripts = Counter(
            {k: v - scripts_before[k] for k, v in self.scripts.items() if v > scripts_before[k]}
        )
        await granted.release()
        deadline = time.monotonic() + 5
        while not trial.outcome and time.monotonic() < deadline:  # told after the release
            await asyncio.sleep(0.01)
        self.trial = None
        return trial


async def orphans(server: PrivateRedis, sim_url: str, named: int, unnamed: int) -> list[Trial]:
    bench = OrphanBench(server, sim_url)
    await bench.start()
    trials: list[Trial] = []
    try:
        # Taking turns, so that machine noise hits both kinds alike.
        plan = [("named", i) for i in range(named)] + [("unnamed", i) for i in range(unnamed)]
        plan.sort(key=lambda item: item[1])
        for kind, index in plan:
            print(f"  orphan {kind} #{index + 1} ...", file=sys.stderr)
            trials.append(await bench.run(kind, index))
    finally:
        await bench.close()
    return trials


# ---------------------------------------------------------------------------- the table


def render(variants: dict[str, Variant], trials: list[Trial], args: argparse.Namespace) -> str:
    """One table: a section per part, each with its own columns."""
    sections: list[tuple[str, list[str], list[tuple[str, list[str]]]]] = []
    names = list(variants)
    heads = {
        "pinned": f"pinned ({PIN_S:g} s)",
        "unpinned": "unpinned (0)",
        "before": f"before ({args.before})",
    }
    rows: list[tuple[str, list[str]]] = []
    for what, label in (("pairs", "acquire+release"), ("renewals", "renewal of 1 lease")):
        n = len(variants[names[0]].samples[what])
        unit = "pair" if what == "pairs" else "renewal"
        per = {v: variants[v].counts[what] for v in names}
        for q in (0.5, 0.9):
            rows.append(
                (
                    f"{label} p{int(q * 100)} us (n={n})",
                    [f"{percentile(variants[v].samples[what], q):.0f}" for v in names],
                )
            )
        rows += [
            (
                f"{label} p50 us, per round min-max",
                [
                    f"{min(variants[v].round_p50[what]):.0f}-{max(variants[v].round_p50[what]):.0f}"
                    for v in names
                ],
            ),
            (f"  evalsha / {unit}", [f"{per[v].evalsha / n:.2f}" for v in names]),
            (f"  cmdstat calls / {unit} incl. in-Lua", [f"{per[v].total / n:.2f}" for v in names]),
            (f"  script time in Redis us / {unit}", [f"{per[v].script_us / n:.1f}" for v in names]),
            (
                f"  redis CPU us / {unit} (INFO cpu)",
                [f"{per[v].cpu_s * 1e6 / n:.1f}" for v in names],
            ),
        ]
    sections.append(
        (
            f"normal path: global semaphore, limit {NORMAL_LIMIT}, lease TTL {NORMAL_TTL_S:g} s, "
            f"{args.rounds} rounds taking turns",
            [heads[n] for n in names],
            rows,
        )
    )

    kinds = [k for k in ("named", "unnamed") if any(t.kind == k for t in trials)]
    by_kind = {k: [t for t in trials if t.kind == k] for k in kinds}

    def spread(values: list[float], fmt: str) -> str:
        values = [v for v in values if not math.isnan(v)]
        if not values:
            return "n/a"
        mid = statistics.median(values)
        if min(values) == max(values):
            return f"{mid:{fmt}}"
        return f"{mid:{fmt}} [{min(values):{fmt}}-{max(values):{fmt}}]"

    def each(value: Callable[[Trial], float], fmt: str) -> list[str]:
        return [spread([float(value(t)) for t in by_kind[k]], fmt) for k in kinds]

    def script_calls(name: str) -> Callable[[Trial], float]:
        return lambda t: t.scripts["B:" + name]

    rows = []
    for attr, label in (
        ("expired", "death -> lease expired (Redis) s"),
        ("orphaned", "death -> orphaned (by B's acquire_slot) s"),
        ("noticed", "death -> orphan noticed (B's acquire reply) s"),
        ("adopted", "death -> adopted (adopt_orphans) s"),
        ("ended", "death -> prediction ended (simulator) s"),
        ("terminal", "death -> B learned it was terminal s"),
        ("given_back", "death -> adopter released the slot s"),
        ("granted", "death -> B's acquire returned s"),
    ):
        rows.append((label, each(attrgetter(attr), ".3f")))
    rows += [
        ("  granted - expired s", each(lambda t: t.granted - t.expired, ".3f")),
        ("  granted - prediction ended s", each(lambda t: t.granted - t.ended, ".3f")),
        (
            f"  granted - (orphaned + {CREATE_TRANSIT_S:g} s) s",
            each(
                lambda t: (
                    t.granted - t.orphaned - CREATE_TRANSIT_S if t.kind == "unnamed" else math.nan
                ),
                ".3f",
            ),
        ),
        ("outcome", [",".join(sorted({t.outcome for t in by_kind[k]})) for k in kinds]),
    ]
    for script, label in (
        ("adopt_orphans", "adopt_orphans calls / orphan"),
        ("renew_leases", "renew_leases calls / orphan (adopter)"),
        ("release_slot", "release_slot calls / orphan"),
        ("acquire_slot", "(B's waiter: acquire_slot polls)"),
    ):
        rows.append((label, each(script_calls(script), "g")))
    rows += [
        ("redis, death -> grant (all): evalsha", each(lambda t: float(t.redis.evalsha), "g")),
        # The epoch checks of A and B (SET NX, GET, PTTL every TTL/3) are client commands:
        # one PTTL per GET is not an in-Lua call.
        (
            "  in-Lua calls",
            each(lambda t: float(t.redis.in_lua - t.redis.calls.get("get", 0)), "g"),
        ),
        ("  script time in Redis us", each(lambda t: float(t.redis.script_us), "g")),
        ("replicate GET / orphan", each(lambda t: float(t.replicate["get_requests"]), "g")),
        ("replicate cancel / orphan", each(lambda t: float(t.replicate["cancels"]), "g")),
        ("replicate list / orphan", each(lambda t: float(t.replicate["list_requests"]), "g")),
    ]
    matches = sorted({t.matches for t in by_kind.get("unnamed", [])} - {1})
    if matches:
        rows.append((f"(unnamed: the list matched {matches} predictions, not 1)", []))
    if kinds:
        sections.append(
            (
                f"an orphan: lease TTL {ORPHAN_TTL_S:g} s, limit 1; median [min-max] over "
                + ", ".join(f"{len(by_kind[k])} {k}" for k in kinds),
                [
                    f"named: cancel ({SIM_LATENCY_S:g} s pred.)"
                    if k == "named"
                    else f"unnamed: list, wait ({UNNAMED_LATENCY_S:g} s pred.)"
                    for k in kinds
                ],
                rows,
            )
        )

    label_w = max(len(label) for _, _, rows in sections for label, _ in rows) + 2
    out: list[str] = []
    for title, columns, rows in sections:
        widths = [
            max([len(h)] + [len(values[i]) for _, values in rows if len(values) > i])
            for i, h in enumerate(columns)
        ]
        titles = "  ".join(h.rjust(w) for h, w in zip(columns, widths, strict=True))
        out += ["", title, " " * label_w + titles]
        for label, values in rows:
            cells = [f"  {label}".ljust(label_w)]
            cells.append("  ".join(v.rjust(w) for v, w in zip(values, widths, strict=False)))
            out.append("".join(cells).rstrip())
    if "before" in variants:
        out.append(f"(before: {args.before}'s Holder, without account, model and input)")
    return "\n".join(out).strip("\n")


# ----------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20, help="normal path: rounds")
    parser.add_argument("--pairs", type=int, default=150, help="acquire+release pairs a round")
    parser.add_argument("--named", type=int, default=6, help="orphans with a prediction id")
    parser.add_argument("--unnamed", type=int, default=4, help="orphans without one")
    parser.add_argument(
        "--before", metavar="REV", help="also run this git revision's coordination (no pins)"
    )
    parser.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop")
    parser.add_argument("--verbose", action="store_true", help="show the service's log")
    args = parser.parse_args(argv)
    os.environ["BENCH_LOOP"] = args.loop
    if not args.verbose:
        logging.getLogger("service").setLevel(logging.ERROR)
    random.seed(1)

    started = time.monotonic()
    load_before = os.getloadavg()
    server = PrivateRedis()
    simulator: subprocess.Popen[bytes] | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="adoption-bench-") as tmp:
            print("normal path ...", file=sys.stderr)
            variants = normal_path(server, args.rounds, args.pairs, args.before, Path(tmp))
        print("orphans ...", file=sys.stderr)
        server.client.set("rcg:epoch", "benchmark")  # an intact store: no start-up grace
        sim_port = free_port()
        simulator = spawn_simulator_process(
            sim_port,
            latency=SIM_LATENCY_S,
            jitter=0.1,  # predictions end at no fixed phase of the adopter's 1 s list polls
            model_latency={UNNAMED_MODEL: UNNAMED_LATENCY_S},
            seed=1,
            stderr=subprocess.DEVNULL,
        )
        sim_url = f"http://127.0.0.1:{sim_port}"
        wait_for_simulator(sim_url, process=simulator)
        trials = run_on_loop(orphans(server, sim_url, args.named, args.unnamed))
        print(render(variants, trials, args))
        load_after = os.getloadavg()
        print(
            f"\nmachine: {os.cpu_count()} cpus, load avg {load_before[0]:.2f} before / "
            f"{load_after[0]:.2f} after; redis {server.version()}; event loop {args.loop}; "
            f"{time.monotonic() - started:.0f} s in all"
        )
    finally:
        if simulator is not None:
            stop_simulator_process(simulator)
        server.stop()


if __name__ == "__main__":
    main()
