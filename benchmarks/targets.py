"""Every target of issue 17 in one table: each against its peer or its floor, from one session.

    python -m benchmarks.targets --peers-kit $HOME/peers [--rounds 3] [--out DIR]
    python -m benchmarks.targets --from DIR          # the table again, from a finished run

Runs, one after the other (about 13 minutes on the 2-core machine with 3 rounds):

  peers kit   `run_all.sh` of the peers kit (a writable copy of ../shared/peers-bench, see
              benchmarks/README.md) three times: the default workload (3x8, limit 4, 50 ms
              holds), "+50 ms pause" (THINK_MS=50) and 6x32 with 20 ms holds, with this checkout
              through benchmarks/peers_bench_ours.py; medians of --rounds
  uncontended benchmarks.uncontended: acquire + release against two PINGs, and the floor the
              two scripts' own Redis time sets
  handoff     benchmarks.handoff_trace: the hops of a grant over pub/sub, for the floor of the
              wake-ups (written -> script starts, script ends -> waiter reads)
  waiters     benchmarks.many_waiters at 50 and 5,000 waiters
  gateway     benchmarks.gateway: the service against a bare proxy on the same stack

Every run's output stays in --out (default: a new directory under /tmp), and `--from` prints
the table again from it. The peers kit's own tables are in its results/ directories, named in
peers.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.gateway import BARE, CPU_RATIO_MAX, DIRECT, OWN_SHARE_MAX_MS, RPS_RATIO_MIN, SERVICE

ROOT = Path(__file__).resolve().parent.parent
OURS = "service.coordination"
IDEAL = "in-process asyncio.Semaphore (ideal)"
WORKLOADS = {
    "default": {},
    "pause": {"THINK_MS": "50", "UT": "0"},
    "wide": {"P": "6", "W": "32", "D": "20", "UT": "0"},
}
HOPS = ("written -> Lua starts", "Lua runs", "Lua ends -> waiter reads it")


def run_peers(kit: Path, rounds: int, out: Path) -> None:
    adapter = f"{OURS}|{sys.executable} {ROOT / 'benchmarks' / 'peers_bench_ours.py'}"
    found: dict[str, str] = {}
    for name, extra in WORKLOADS.items():
        before = set((kit / "results").glob("*")) if (kit / "results").exists() else set()
        env = {**os.environ, "RCG_PROJECT": str(ROOT), "EXTRA_IMPLS": adapter, **extra}
        print(f"peers kit: {name} ...", file=sys.stderr, flush=True)
        with open(out / f"peers-{name}.txt", "w") as log:
            subprocess.run(
                ["./run_all.sh", str(rounds)], cwd=kit, env=env, stdout=log, stderr=log, check=True
            )
        [results] = set((kit / "results").glob("*")) - before
        found[name] = str(results)
    (out / "peers.json").write_text(json.dumps(found, indent=1))


def run_module(out: Path, name: str, *args: str) -> None:
    print(f"{name} ...", file=sys.stderr, flush=True)
    with open(out / f"{name}.txt", "w") as log:
        subprocess.run(
            [sys.executable, "-m", f"benchmarks.{name}", *args],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            check=True,
        )


def peers_metrics(results: str) -> dict[str, dict[str, Any]]:
    metrics = {}
    for path in Path(results).glob("impl*.metrics.json"):
        data = json.loads(path.read_text())
        metrics[data["name"]] = data
    return metrics


def hops(text: str) -> dict[str, float]:
    """p50 ms of each hop of a grant over pub/sub (the last such block handoff_trace printed)."""
    block = text.rsplit("grants pub/sub", 1)[-1].split("grants in release reply", 1)[0]
    found = {}
    for line in block.splitlines():
        match = re.match(r"\s+(.+?)\s+([\d.]+) /\s+[\d.]+$", line)
        if match:
            found[match.group(1)] = float(match.group(2))
    return found


def table(out: Path) -> str:
    peers = {k: peers_metrics(v) for k, v in json.loads((out / "peers.json").read_text()).items()}
    rows: list[tuple[str, str, str, str]] = []

    def others(workload: str, key: str) -> dict[str, float]:
        """The peers' figure (neither this library nor the ideal)."""
        return {
            n: m["contended"][key] for n, m in peers[workload].items() if n not in (OURS, IDEAL)
        }

    def best(workload: str, key: str) -> tuple[str, float]:
        figures = others(workload, key)
        name = max(figures, key=lambda n: figures[n])
        return name, figures[name]

    def ours(workload: str, key: str) -> float:
        return float(peers[workload][OURS]["contended"][key])

    name, peer = best("default", "utilization")
    mine = ours("default", "utilization")
    rows.append(
        (
            "3x8, 50 ms: utilization within 0.005 of the best poller",
            f"{name}: {peer:.3f}",
            f"{mine:.3f}",
            "met" if mine >= peer - 0.005 else "miss",
        )
    )
    cv, wait = ours("default", "fair_cv"), ours("default", "wait_max_ms")
    ideal_wait = peers["default"][IDEAL]["contended"]["wait_max_ms"]
    rows.append(
        (
            "3x8: fairness CV <= 0.05, max wait <= 1.1x the ideal's",
            f"ideal: max wait {ideal_wait:.0f} ms",
            f"CV {cv:.3f}, max wait {wait:.0f} ms ({wait / ideal_wait:.2f}x)",
            "met" if cv <= 0.05 and wait <= 1.1 * ideal_wait else "miss",
        )
    )
    cpu = others("default", "redis_cpu_us_per_acq")
    rows.append(
        (
            "3x8: Redis CPU per acquisition",
            f"{min(cpu.values()):.0f}-{max(cpu.values()):.0f} us",
            f"{ours('default', 'redis_cpu_us_per_acq'):.0f} us",
            "(no target)",
        )
    )
    trace = hops((out / "handoff_trace.txt").read_text())
    wakes = trace.get(HOPS[0], float("nan")) + trace.get(HOPS[2], float("nan"))
    handoff = ours("pause", "handoff_p50_ms")
    name, _ = best("pause", "utilization")
    rows.append(
        (
            "+50 ms pause: handoff p50 <= 0.5 ms",
            f"{name}: {peers['pause'][name]['contended']['handoff_p50_ms']:.2f} ms; floor: "
            f"the two wake-ups {wakes:.2f} ms (handoff_trace)",
            f"{handoff:.2f} ms",
            "met" if handoff <= 0.5 else ("miss (below the floor)" if wakes > 0.5 else "miss"),
        )
    )
    name, peer = best("wide", "utilization")
    mine = ours("wide", "utilization")
    rows.append(
        (
            "6x32, 20 ms: utilization >= 0.96",
            f"{name}: {peer:.3f}",
            f"{mine:.3f} (CV {ours('wide', 'fair_cv'):.3f})",
            "met" if mine >= 0.96 else "miss",
        )
    )
    unc = json.loads((out / "uncontended.json").read_text())
    ratio, floor = statistics.median(unc["ratio"]), statistics.median(unc["floor_ratio"])
    rows.append(
        (
            "uncontended acquire + release <= 1.3x two PINGs",
            f"two PINGs {statistics.median(unc['two_pings_p50_us']):.0f} us; floor with these "
            f"scripts {floor:.2f}x",
            f"{statistics.median(unc['acquire_release_p50_us']):.0f} us: {ratio:.2f}x",
            "met" if ratio <= 1.3 else ("miss (floor above the target)" if floor > 1.3 else "miss"),
        )
    )
    waiters = json.loads((out / "many_waiters.json").read_text())
    few, many = waiters["50"], waiters["5000"]
    growth = many["steady_cpu_us_per_acq"] / few["steady_cpu_us_per_acq"]
    rows.append(
        (
            "5,000 waiters: no errors, <= 20 KB per waiter, handoff p99 <= 20 ms, Redis CPU "
            "per acquisition flat from 50",
            "",
            f"{many['errors']:.0f} errors, {many['kb_per_waiter']:.1f} KB, p99 "
            f"{many['handoff_p99']:.2f} ms; steady commands per acquisition "
            f"{few['steady_cmds_per_acq']:.1f} -> {many['steady_cmds_per_acq']:.1f}, CPU "
            f"{few['steady_cpu_us_per_acq']:.0f} -> {many['steady_cpu_us_per_acq']:.0f} us "
            f"(x{growth:.2f})",
            "met"
            if many["errors"] == 0 and many["kb_per_waiter"] <= 20 and many["handoff_p99"] <= 20
            else "miss",
        )
    )
    gateway = json.loads((out / "gateway.json").read_text())

    def median(get: Any) -> float:
        return statistics.median(get(r) for r in gateway)

    def added(r: dict[str, Any], kind: str) -> float:
        return float(r["p50_ms"][kind] - r["p50_ms"][DIRECT])

    own = median(lambda r: added(r, SERVICE) - added(r, BARE))
    cpu_ratio = median(lambda r: r["cpu_us"][SERVICE] / r["cpu_us"][BARE])
    rps_ratio = median(lambda r: r["rps"][SERVICE] / r["rps"][BARE])
    rows += [
        (
            f"gateway: own share <= {OWN_SHARE_MAX_MS} ms p50",
            f"bare proxy +{median(lambda r: added(r, BARE)):.2f} ms over direct",
            f"{own:.2f} ms",
            "met" if own <= OWN_SHARE_MAX_MS else "miss",
        ),
        (
            f"gateway: CPU per request <= {CPU_RATIO_MAX}x bare",
            f"bare {median(lambda r: r['cpu_us'][BARE]):.0f} us",
            f"{median(lambda r: r['cpu_us'][SERVICE]):.0f} us: {cpu_ratio:.2f}x",
            "met" if cpu_ratio <= CPU_RATIO_MAX else "miss",
        ),
        (
            f"gateway: requests/s >= {RPS_RATIO_MIN}x bare",
            f"bare {median(lambda r: r['rps'][BARE]):.0f}/s",
            f"{median(lambda r: r['rps'][SERVICE]):.0f}/s: {rps_ratio:.2f}x",
            "met" if rps_ratio >= RPS_RATIO_MIN else "miss",
        ),
    ]
    lines = ["| target | best peer or floor | this library | verdict |", "|---|---|---|---|"]
    lines += [f"| {' | '.join(row)} |" for row in rows]
    hop_p50s = ", ".join(f"{hop} {trace.get(hop, float('nan')):.3f}" for hop in HOPS)
    lines.append(
        "(peers kit: medians of its rounds; uncontended and gateway: medians of rounds; "
        f"handoff hops, p50: {hop_p50s} ms)"
    )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--peers-kit", type=Path, help="a writable copy of the peers kit")
    source.add_argument("--from", dest="previous", type=Path, help="a finished run's --out")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    if args.previous is not None:
        print(table(args.previous))
        return
    out = args.out or Path(tempfile.mkdtemp(prefix="rcg-targets-"))
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    load = os.getloadavg()[0]
    run_peers(args.peers_kit.resolve(), args.rounds, out)
    run_module(out, "uncontended", "--rounds", "5", "--json", str(out / "uncontended.json"))
    run_module(out, "handoff_trace", "--rounds", "2")
    run_module(
        out, "many_waiters", "--waiters", "50", "5000", "--json", str(out / "many_waiters.json")
    )
    run_module(out, "gateway", "--rounds", str(args.rounds), "--json", str(out / "gateway.json"))
    print(table(out))
    print(
        f"outputs in {out}; {time.monotonic() - started:.0f} s in all; load average "
        f"{load:.2f} at the start, {os.getloadavg()[0]:.2f} at the end"
    )


if __name__ == "__main__":
    main()
