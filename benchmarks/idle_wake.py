"""What waking an idle CPU costs on this machine: one round trip back-to-back against the same
round trip after an idle gap, with and without a CPU kept busy.

    python -m benchmarks.idle_wake [--samples 300] [--gap-ms 12]

One process (uvloop) PINGs a private redis-server, and EVALSHAs a script that PUBLISHes to a
subscribed second process, which records the delivery (time.time(), one host):

    back-to-back   the next call right after the previous reply
    after a gap    the next call after sleeping --gap-ms (as a release after a 50 ms hold finds
                   Redis, and the waiter's process, asleep for ~12 ms)

each twice: with the machine as it is, and with a spinning helper process (a busy loop) that
keeps one CPU from idling. On a VM whose idle CPUs halt (guest_halt_poll_ns 0 here), the gap
costs a CPU wake-up per sleeping process on the path; the spinner shows how much of it that
is. Diagnostics only: the spinner burns a whole CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import subprocess
import sys
import time

import redis.asyncio as aioredis

from benchmarks.coord_redis import PrivateRedis
from benchmarks.coord_worker import run_on_loop
from benchmarks.coordination import percentile

PUBLISH_LUA = "redis.call('PUBLISH', KEYS[1], ARGV[1]) return 1"


def spin(stop_at: float) -> None:
    while time.time() < stop_at:
        pass


async def subscriber(url: str, count: int) -> None:
    from service.coordination.subscriber import Subscription

    client = aioredis.Redis.from_url(url)
    delays: list[float] = []
    done = asyncio.get_running_loop().create_future()

    def on_message(data: bytes) -> None:
        delays.append((time.time() - float(data)) * 1e6)
        if len(delays) == count and not done.done():
            done.set_result(None)

    sub = await Subscription.open(client.connection_pool, ["idle:*"], on_message, 5)
    print("READY", flush=True)
    await done
    sub.close()
    print(" ".join(f"{d:.1f}" for d in delays), flush=True)
    await client.aclose()


async def measure(url: str, samples: int, gap_s: float) -> dict[str, float]:
    client = aioredis.Redis.from_url(url)
    script = client.register_script(PUBLISH_LUA)
    await client.ping()
    out: dict[str, float] = {}
    for label, pause in (("back-to-back", 0.0), ("after a gap", gap_s)):
        rtts = []
        for _ in range(samples):
            if pause:
                await asyncio.sleep(pause)
            t = time.perf_counter()
            await client.ping()
            rtts.append((time.perf_counter() - t) * 1e6)
        out[f"PING rtt, {label}"] = percentile(rtts, 0.5)
    sub = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks.idle_wake",
            "--subscriber",
            url,
            "--samples",
            str(samples * 2),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert sub.stdout is not None and sub.stdout.readline().strip() == "READY"
    for pause in (0.0, gap_s):
        for _ in range(samples):
            await asyncio.sleep(pause if pause else 0.001)
            await script(keys=["idle:x"], args=[repr(time.time())])
    delays = [float(x) for x in sub.stdout.readline().split()]
    sub.wait()
    out["EVALSHA+PUBLISH -> subscriber, 1 ms apart"] = percentile(delays[:samples], 0.5)
    out["EVALSHA+PUBLISH -> subscriber, after a gap"] = percentile(delays[samples:], 0.5)
    await client.aclose()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--gap-ms", type=float, default=12.0)
    ap.add_argument("--subscriber", default="")
    args = ap.parse_args()
    if args.subscriber:
        run_on_loop(subscriber(args.subscriber, args.samples))
        return
    server = PrivateRedis()
    try:
        rows: dict[str, list[float]] = {}
        for busy in (False, True):
            spinner = None
            if busy:
                spinner = multiprocessing.Process(target=spin, args=(time.time() + 600,))
                spinner.start()
            for k, v in run_on_loop(measure(server.url, args.samples, args.gap_ms / 1000)).items():
                rows.setdefault(k, []).append(v)
            if spinner is not None:
                spinner.terminate()
                spinner.join()
        print("| p50 µs | as is | one CPU kept busy |\n|---|---:|---:|")
        for k, (a, b) in rows.items():
            print(f"| {k} | {a:.0f} | {b:.0f} |")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
