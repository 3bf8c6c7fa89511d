"""One handoff, hop by hop: where the time between a release and the next holder goes.

    python -m benchmarks.handoff_trace [--seconds 6] [--pause-ms 50] [--procs 3] [--workers 8]
        [--send fast|plain|both] [--rounds 2]

`--send plain` runs every process with redis-py's own `send_packed_command` (a Task per write;
the same as RCG_PLAIN_SEND=1) instead of the library's (benchmarks/send_fast_path.py);
`--send both` alternates the two, `--rounds` runs each, and prints every hop's p50 side by side
(the median over rounds).

Runs the peers kit's "+50 ms pause" workload (P processes x W workers, limit 4, hold 50 ms, a
pause after each release) on a private redis-server, with the library instrumented in each
process (time.time(), one host clock) and `release_slot` stamped with Redis `TIME` (µs) when it
starts and just before it returns (a traced copy of the script; the real one is unchanged):

    t_rel      the worker is about to call lease.release()          (releaser)
    call       ScriptCalls -> Scripts.call entered                  (releaser)
    write      EVALSHA written to the socket by redis-py            (releaser)
    lua start  release_slot begins (Redis TIME)                     (Redis)
    lua end    just before it returns: the grant is PUBLISHed       (Redis)
    recv       the message reaches the waiter's data_received       (waiter process)
               (local grants: the release reply reaches the releaser)
    resume     the waiting acquire() takes the grant                (waiter task)
    in hand    acquire() returned the lease to the worker           (waiter task)

Matching: each grant is paired with the release whose script ended last before the waiter read
it (releases are ~12 ms apart in this workload). Prints p50/p90 of every hop, for grants
delivered over pub/sub and for grants returned in the release reply, and the same for the
releaser's reply.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.coord_redis import PrivateRedis
from benchmarks.coordination import percentile

LIMIT = 4


def traced_release_source(text: str) -> str:
    start = "local now = now_ms()"
    end = "return {outcome, message}"
    assert start in text and end in text, "release_slot.lua changed: update the trace patch"
    text = text.replace(start, "local trace_t0 = redis.call('TIME')\n" + start, 1)
    stamp = "tonumber(%s[1]) * 1000000 + tonumber(%s[2])"
    return text.replace(
        end,
        "local trace_t1 = redis.call('TIME')\n"
        f"return {{outcome, message, {stamp % ('trace_t0', 'trace_t0')}, "
        f"{stamp % ('trace_t1', 'trace_t1')}}}",
    )


def _redis(c):
    # the command client: Coordinator.client before the API cleanup, .redis after it
    return getattr(c, "client", None) or c.redis


async def child(args: argparse.Namespace) -> None:
    import service.coordination.scripts as scripts_mod
    import service.coordination.subscriber as sub_mod
    import service.coordination.wake as wake_mod
    from benchmarks import send_fast_path
    from service.coordination import Coordinator
    from service.coordination.connection import HiredisPackingConnection

    send_fast_path.select_from_env()  # RCG_PLAIN_SEND=1: redis-py's own send (before)
    plain_source = scripts_mod.script_source

    def source(name: str) -> str:
        text = plain_source(name)
        return traced_release_source(text) if name == "release_slot" else text

    scripts_mod.script_source = source  # type: ignore[assignment]

    events: list[list[Any]] = []
    last_write: dict[int, float] = {}
    last_recv = [0.0]

    # Stamp the moment the bytes go to the socket (writelines: a send(2) when nothing is
    # buffered), in whichever task does it, keyed by the command's connection.
    plain_writelines = asyncio.StreamWriter.writelines

    def writelines(self: Any, data: Any) -> None:
        plain_writelines(self, data)
        last_write[id(self)] = time.time()

    asyncio.StreamWriter.writelines = writelines  # type: ignore[method-assign]
    # The library's connections: redis-py's send (a Task per write) or the library's override.
    plain_send = HiredisPackingConnection.send_packed_command

    async def send_packed_command(self: Any, command: Any, check_health: bool = True) -> None:
        await plain_send(self, command, check_health)
        task = asyncio.current_task()
        if task is not None and self._writer is not None and id(self._writer) in last_write:
            last_write[id(task)] = last_write[id(self._writer)]

    HiredisPackingConnection.send_packed_command = send_packed_command  # type: ignore[method-assign]

    plain_received = sub_mod._PushProtocol.data_received

    def data_received(self: Any, data: bytes) -> None:
        last_recv[0] = time.time()
        plain_received(self, data)

    sub_mod._PushProtocol.data_received = data_received  # type: ignore[method-assign]

    c = await Coordinator.connect(args.url, replica_id=f"trace-{args.child}", lease_ttl_s=30.0)
    plain_call = c.scripts.call

    async def call(name: str, keys: Any, argv: Any) -> Any:
        if name != "release_slot":
            return await plain_call(name, keys, argv)
        t_call = time.time()
        reply = await plain_call(name, keys, argv)
        t_reply = time.time()
        task = asyncio.current_task()
        t_write = last_write.get(id(task), t_call) if task is not None else t_call
        lua = [int(reply[2]) / 1e6, int(reply[3]) / 1e6] if len(reply) > 3 else [0, 0]
        events.append(["rel", str(argv[0]), t_call, t_write, *lua, t_reply])
        return reply[:2]

    c.scripts.call = call  # type: ignore[method-assign]
    dispatcher = c.dispatcher
    plain_handle = dispatcher.handle

    def handle(data: str, *, local: bool = False) -> None:
        t = time.time() if local else last_recv[0]
        for item in data.split()[4:]:
            events.append(["recv", item.rpartition(":")[0], t, int(local)])
        plain_handle(data, local=local)

    dispatcher.handle = handle  # type: ignore[method-assign]
    plain_take = dispatcher.take_grant

    def take_grant(waiter_id: str) -> Any:
        grant = plain_take(waiter_id)
        if grant is not None:
            events.append(["resume", waiter_id, time.time()])
        return grant

    dispatcher.take_grant = take_grant  # type: ignore[method-assign]
    plain_grant = dispatcher._grant

    def grant(waiter_id: str, granted: Any) -> None:
        events.append(["granted", waiter_id, time.time()])
        plain_grant(waiter_id, granted)

    dispatcher._grant = grant  # type: ignore[method-assign]
    plain_wait = wake_mod.Wake.wait

    async def wait(self: Any, timeout_s: float) -> bool:
        result = await plain_wait(self, timeout_s)
        events.append(["woken", getattr(self, "trace_id", ""), time.time()])
        return result

    wake_mod.Wake.wait = wait  # type: ignore[method-assign]
    plain_register = dispatcher.register

    def register(waiter_id: str) -> Any:
        event = plain_register(waiter_id)
        event.trace_id = waiter_id
        return event

    dispatcher.register = register  # type: ignore[method-assign]

    if args.child == 0:
        with contextlib.suppress(Exception):
            await c.registry.create(args.key, LIMIT)
    else:
        await asyncio.sleep(0.3)
    await asyncio.gather(*(c.redis.ping() for _ in range(args.workers)))
    lease = await c.acquire(args.key, timeout_s=5)
    await lease.release()
    events.clear()
    print("ready", flush=True)
    t_start = float((await asyncio.to_thread(sys.stdin.readline)).split()[1])
    t_end = t_start + args.seconds

    async def worker() -> None:
        await asyncio.sleep(max(0.0, t_start - time.time()))
        while time.time() < t_end:
            t_call = time.time()
            lease = await c.acquire(args.key, timeout_s=60)
            t_acq = time.time()
            events.append(["acq", lease.lease_id, t_call, t_acq])
            await asyncio.sleep(args.hold_ms / 1000)
            events.append(["t_rel", lease.lease_id, time.time()])
            await lease.release()
            if args.pause_ms:
                await asyncio.sleep(args.pause_ms / 1000)

    await asyncio.gather(*(worker() for _ in range(args.workers)))
    Path(args.out).write_text(json.dumps(events))
    await c.close()


def analyse(all_events: list[list[Any]]) -> list[str]:
    lines = []
    for kind, row in hops_of(all_events).items():
        n = len(row.get("TOTAL t_rel -> lease in hand", []))
        lines.append(f"grants {kind}: n={n}   (ms: p50 / p90)")
        for k, v in row.items():
            lines.append(f"  {k:<34} {percentile(v, 0.5):7.3f} / {percentile(v, 0.9):7.3f}")
    return lines


def hops_of(all_events: list[list[Any]]) -> dict[str, dict[str, list[float]]]:
    """kind of grant -> hop -> its durations (ms)."""
    t_rel = {e[1]: e[2] for e in all_events if e[0] == "t_rel"}
    rels = sorted((e for e in all_events if e[0] == "rel" and e[5]), key=lambda e: e[5])
    ends = [e[5] for e in rels]
    resume = {e[1]: e[2] for e in all_events if e[0] == "resume"}
    acq = {e[1]: e[3] for e in all_events if e[0] == "acq"}
    granted = {e[1]: e[2] for e in all_events if e[0] == "granted"}
    woken: dict[str, float] = {}
    for e in all_events:
        if e[0] == "woken" and e[1] in granted and e[2] >= granted[e[1]]:
            woken.setdefault(e[1], e[2])
    rows: dict[str, dict[str, list[float]]] = {"pub/sub": {}, "in release reply": {}}
    for e in all_events:
        if e[0] != "recv" or e[1] not in acq or e[1] not in resume:
            continue
        i = bisect.bisect_right(ends, e[2]) - 1
        if i < 0:
            continue
        r = rels[i]
        rel_id, t_call, t_write, lua0, lua1, t_reply = r[1], r[2], r[3], r[4], r[5], r[6]
        if rel_id not in t_rel or e[2] - lua1 > 0.02:
            continue
        hops = {
            "t_rel -> Scripts.call": t_call - t_rel[rel_id],
            "Scripts.call -> written": t_write - t_call,
            "written -> Lua starts": lua0 - t_write,
            "Lua runs": lua1 - lua0,
            "Lua ends -> releaser has reply": t_reply - lua1,
            "Lua ends -> waiter reads it": e[2] - lua1,
            "read -> grant parsed, event set": granted.get(e[1], e[2]) - e[2],
            "event set -> waiter task runs": woken.get(e[1], resume[e[1]])
            - granted.get(e[1], e[2]),
            "task runs -> grant taken": resume[e[1]] - woken.get(e[1], resume[e[1]]),
            "resume -> lease in hand": acq[e[1]] - resume[e[1]],
            "TOTAL t_rel -> lease in hand": acq[e[1]] - t_rel[rel_id],
        }
        row = rows["in release reply" if e[3] else "pub/sub"]
        for k, v in hops.items():
            row.setdefault(k, []).append(v * 1000)
    return rows


def side_by_side(runs: dict[str, list[dict[str, dict[str, list[float]]]]]) -> list[str]:
    """--send both: the median over rounds of each hop's p50, redis-py's send against the
    library's, and their ratio."""
    lines = []
    for kind in ("pub/sub", "in release reply"):
        n = {
            v: sum(len(r[kind].get("TOTAL t_rel -> lease in hand", [])) for r in rs)
            for v, rs in runs.items()
        }
        lines.append(
            f"grants {kind}: p50 ms, median of {len(runs['plain'])} rounds "
            f"(n = {n['plain']} / {n['fast']})"
        )
        lines.append(f"  {'hop':<34} {'redis-py':>9} {'library':>9} {'lib/rp':>7}")
        hops = [h for r in runs["fast"] for h in r[kind]]
        for hop in dict.fromkeys(hops):
            p50 = {}
            for variant, rs in runs.items():
                values = [percentile(r[kind][hop], 0.5) for r in rs if r[kind].get(hop)]
                p50[variant] = statistics.median(values) if values else float("nan")
            ratio = p50["fast"] / p50["plain"] if p50["plain"] else float("nan")
            lines.append(f"  {hop:<34} {p50['plain']:9.3f} {p50['fast']:9.3f} {ratio:7.2f}")
    return lines


def one_run(args: argparse.Namespace, variant: str) -> list[list[Any]]:
    """The events of one run of every process, with `variant`'s send (fast or plain)."""
    env = dict(os.environ)
    env.pop("RCG_PLAIN_SEND", None)
    if variant == "plain":
        env["RCG_PLAIN_SEND"] = "1"
    server = PrivateRedis()
    try:
        with tempfile.TemporaryDirectory(prefix="handoff-trace-") as tmp:
            procs = []
            for i in range(args.procs):
                cmd = [sys.executable, "-m", "benchmarks.handoff_trace", "--child", str(i)]
                cmd += ["--url", server.url, "--out", f"{tmp}/{i}.json"]
                cmd += ["--seconds", str(args.seconds), "--hold-ms", str(args.hold_ms)]
                cmd += ["--pause-ms", str(args.pause_ms), "--workers", str(args.workers)]
                procs.append(
                    subprocess.Popen(
                        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
                    )
                )
            for p in procs:
                assert p.stdout is not None and p.stdout.readline().strip() == "ready"
            t0 = time.time() + 0.2
            for p in procs:
                assert p.stdin is not None
                p.stdin.write(f"go {t0}\n")
                p.stdin.flush()
            for p in procs:
                p.wait()
            return [
                e
                for i in range(args.procs)
                for e in json.loads(Path(f"{tmp}/{i}.json").read_text())
            ]
    finally:
        server.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--hold-ms", type=float, default=50.0)
    ap.add_argument("--pause-ms", type=float, default=50.0)
    ap.add_argument("--procs", type=int, default=3)
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--child", type=int, default=None)
    ap.add_argument("--url", default="")
    ap.add_argument("--key", default="trace")
    ap.add_argument("--out", default="")
    ap.add_argument(
        "--send",
        choices=("fast", "plain", "both"),
        default="fast",
        help="the library's send (fast), redis-py's (plain), or both alternately",
    )
    ap.add_argument("--rounds", type=int, default=2, help="--send both: runs per variant")
    args = ap.parse_args()
    if args.child is not None:
        from benchmarks.coord_worker import run_on_loop

        run_on_loop(child(args))
        return
    loop = os.environ.get("BENCH_LOOP", "uvloop")
    if args.send != "both":
        events = one_run(args, args.send)
        print(f"loop: {loop}; send: {args.send}; load average {os.getloadavg()}")
        print("\n".join(analyse(events)))
        return
    runs: dict[str, list[dict[str, dict[str, list[float]]]]] = {"plain": [], "fast": []}
    for r in range(args.rounds):
        for variant in ("plain", "fast") if r % 2 == 0 else ("fast", "plain"):
            print(f"round {r}: {variant} send ...", file=sys.stderr, flush=True)
            runs[variant].append(hops_of(one_run(args, variant)))
    print(f"loop: {loop}; redis-py's send against the library's; load average {os.getloadavg()}")
    print("\n".join(side_by_side(runs)))


if __name__ == "__main__":
    main()
