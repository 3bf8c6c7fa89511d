"""Before/after for the send fast path, now in the library: `HiredisPackingConnection.
send_packed_command` (service/coordination/connection.py) writes a command without the Task
redis-py's asyncio client adds to every write.

redis-py 8.1's `AbstractConnection.send_packed_command`, when the connection has a
`socket_timeout` (service.coordination's always do), wraps the write in
`asyncio.wait_for(self._send_packed_command(command), socket_timeout)`. On Python 3.11,
wait_for runs its coroutine in a new Task: the bytes leave one event-loop iteration later, and
the caller resumes two callbacks after that. The library's override writes synchronously and
awaits `drain()` (under the same timeout, with redis-py's error mapping) only when the
transport kept unsent bytes or is closing: see its docstring.

"Before" is redis-py's own method put back on the library's class, in a benchmark process only:

    RCG_PLAIN_SEND=1 ...   peers_bench_ours.py and handoff_trace.py call `select_from_env()`
                           (`handoff_trace --send both` alternates the two in one run)

    python -m benchmarks.send_fast_path [--cycles 2000] [--rounds 5]
        in one process, interleaved round by round: uncontended acquire + release and two
        PINGs on the Coordinator's client, with redis-py's method and with the library's;
        prints the p50 of each per round, the medians and the ratio

    python -m benchmarks.send_fast_path --run plain|fast|both [--repeat N] -- -m MODULE ARGS
        runs `python -m MODULE ARGS` (e.g. benchmarks.coordination --quick) with redis-py's
        method in every process it starts (RCG_PLAIN_SEND=1 and a sitecustomize that calls
        `select_from_env()`, on PYTHONPATH), with the library's, or alternately, N times each
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from redis.asyncio.connection import AbstractConnection

from service.coordination.connection import HiredisPackingConnection

ENV = "RCG_PLAIN_SEND"
_library_send = HiredisPackingConnection.__dict__["send_packed_command"]


def use_plain() -> None:
    """redis-py's own send (a Task per write) on the library's connections, in this process."""
    HiredisPackingConnection.send_packed_command = AbstractConnection.send_packed_command  # type: ignore[method-assign]


def use_fast() -> None:
    """The library's send, as shipped."""
    HiredisPackingConnection.send_packed_command = _library_send  # type: ignore[method-assign]


def use(variant: str) -> None:
    use_plain() if variant == "plain" else use_fast()


def select_from_env() -> str:
    """`use_plain()` when RCG_PLAIN_SEND=1; returns the variant in use ("plain" or "fast")."""
    if os.environ.get(ENV, "") == "1":
        use_plain()
        return "plain"
    return "fast"


def _p50(values: list[float]) -> float:
    return statistics.median(values)


async def compare(url: str, cycles: int, rounds: int) -> None:
    from benchmarks.uncontended import timed_cycles
    from service.coordination import Coordinator

    c = await Coordinator.connect(url, replica_id="send-fast-path", lease_ttl_s=30.0)
    await c.registry.create("sfp", 4)
    results: dict[str, dict[str, list[float]]] = {
        v: {"cycle": [], "pings": []} for v in ("plain", "fast")
    }
    try:
        for variant in ("plain", "fast"):  # warm-up, both
            use(variant)
            for _ in range(200):
                lease = await c.acquire("sfp", timeout_s=5)
                await lease.release()
                await c.redis.ping()
        for r in range(rounds):
            order = ("plain", "fast") if r % 2 == 0 else ("fast", "plain")
            line = [f"[{r}]"]
            for variant in order:
                use(variant)
                cycle, _, pings = await timed_cycles(c, "sfp", cycles)
                results[variant]["cycle"].append(_p50(cycle))
                results[variant]["pings"].append(_p50(pings))
                line.append(
                    f"{variant}: acq+rel p50 {_p50(cycle):6.1f} us, two PINGs {_p50(pings):6.1f} us"
                )
            print(" | ".join(line), flush=True)
    finally:
        use_fast()
        await c.close()
    print(f"medians of {rounds} rounds x {cycles} cycles (us, p50 per round):")
    for row in ("cycle", "pings"):
        plain = statistics.median(results["plain"][row])
        fast = statistics.median(results["fast"][row])
        name = "acquire+release" if row == "cycle" else "two PINGs"
        print(
            f"  {name:<16} redis-py send {plain:7.1f} | library send {fast:7.1f} | "
            f"fast/plain {fast / plain:.2f}"
        )
    print(f"load average {os.getloadavg()}")


_SITECUSTOMIZE = """\
from benchmarks.send_fast_path import select_from_env

select_from_env()
"""


def run(variant: str, command: list[str]) -> int:
    """`python COMMAND` with redis-py's send in every process it starts (plain) or not."""
    env = dict(os.environ)
    env.pop(ENV, None)
    with tempfile.TemporaryDirectory(prefix="send-fast-path-") as tmp:
        if variant == "plain":
            Path(tmp, "sitecustomize.py").write_text(_SITECUSTOMIZE)
            root = str(Path(__file__).resolve().parent.parent)
            env[ENV] = "1"
            env["PYTHONPATH"] = os.pathsep.join(
                [tmp, root, *filter(None, [os.environ.get("PYTHONPATH")])]
            )
        print(f"===== send: {variant} ({'redis-py' if variant == 'plain' else 'library'})")
        sys.stdout.flush()
        return subprocess.run([sys.executable, *command], env=env, check=False).returncode


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cycles", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--run", choices=("plain", "fast", "both"), help="run a command (after --)")
    ap.add_argument("--repeat", type=int, default=1, help="--run: times per variant")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    if args.run:
        command = args.command[1:] if args.command[:1] == ["--"] else args.command
        if not command:
            ap.error("--run needs a command after --, e.g. -- -m benchmarks.coordination --quick")
        variants = ("plain", "fast") if args.run == "both" else (args.run,)
        for _ in range(args.repeat):
            for variant in variants:
                if run(variant, command) != 0:
                    raise SystemExit(f"{variant}: the command failed")
        return
    from benchmarks.coord_redis import PrivateRedis
    from benchmarks.coord_worker import run_on_loop

    server = PrivateRedis()
    try:
        run_on_loop(compare(server.url, args.cycles, args.rounds))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
