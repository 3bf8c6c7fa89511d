"""How long a grant message takes from the publishing call to the subscriber's handler: redis-py's
PubSub.get_message loop (what WakeDispatcher used before) against service.coordination's
Subscription (the message handled in the transport's callback).

    python -m benchmarks.wake_delivery [--messages 400] [--rounds 5]

A publisher process sends an EVALSHA that PUBLISHes its send time every 50 ms (both processes
idle in between, as a releasing holder and a parked waiter are); a subscriber process of each
kind, in turn, records receive time minus send time (time.time(), one host). Prints p50/p90/p99
per round and the medians over rounds, side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import time

import redis.asyncio as aioredis

from benchmarks.coord_redis import PrivateRedis
from benchmarks.coord_worker import run_on_loop
from benchmarks.coordination import percentile
from service.coordination.subscriber import Subscription

PUBLISH_LUA = "redis.call('PUBLISH', KEYS[1], ARGV[1]) return 1"
KINDS = ("redis-py PubSub", "Subscription")


async def subscribe_redis_py(url: str, count: int) -> list[float]:
    client = aioredis.Redis.from_url(url)
    pubsub = client.pubsub(ignore_subscribe_messages=True)
    await pubsub.psubscribe("bench:*")
    print("READY", flush=True)
    delays: list[float] = []
    while len(delays) < count:
        message = await pubsub.get_message(timeout=1.0)
        if message is None:
            continue
        delays.append(time.time() - float(message["data"]))
        await asyncio.sleep(0)  # as WakeDispatcher did: let woken waiters run first
    await pubsub.aclose()  # type: ignore[no-untyped-call]
    await client.aclose()
    return delays


async def subscribe_callback(url: str, count: int) -> list[float]:
    client = aioredis.Redis.from_url(url)
    delays: list[float] = []
    done = asyncio.get_running_loop().create_future()

    def on_message(data: bytes) -> None:
        delays.append(time.time() - float(data))
        if len(delays) == count and not done.done():
            done.set_result(None)

    subscription = await Subscription.open(client.connection_pool, ["bench:*"], on_message, 5)
    print("READY", flush=True)
    await done
    subscription.close()
    await client.aclose()
    return delays


async def publish(url: str, count: int) -> None:
    client = aioredis.Redis.from_url(url)
    sha = await client.script_load(PUBLISH_LUA)
    for _ in range(count):
        await asyncio.sleep(0.05)
        await client.evalsha(sha, 1, "bench:x", repr(time.time()))  # type: ignore[misc]
    await client.aclose()


def run_round(url: str, kind: str, count: int) -> list[float]:
    sub = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks.wake_delivery",
            "--role",
            kind,
            "--url",
            url,
            "--messages",
            str(count),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert sub.stdout is not None
    if sub.stdout.readline().strip() != "READY":
        raise SystemExit(f"{kind} subscriber did not start")
    # A few extra messages in case the first ones race the subscription.
    run_on_loop(publish(url, count + 5))
    out, _ = sub.communicate(timeout=30)
    return [float(x) * 1000 for x in out.split()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--role", choices=KINDS, help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        subscribe = subscribe_redis_py if args.role == KINDS[0] else subscribe_callback
        delays = run_on_loop(subscribe(args.url, args.messages))
        print(" ".join(f"{d:.6f}" for d in delays))
        return
    server = PrivateRedis()
    try:
        p50s: dict[str, list[float]] = {kind: [] for kind in KINDS}
        p99s: dict[str, list[float]] = {kind: [] for kind in KINDS}
        print(f"{args.messages} messages per round, 50 ms apart; send → handled, ms")
        for r in range(args.rounds):
            for kind in KINDS:
                ms = run_round(server.url, kind, args.messages)
                p50s[kind].append(percentile(ms, 0.5))
                p99s[kind].append(percentile(ms, 0.99))
                print(
                    f"round {r + 1}  {kind:<16} p50 {percentile(ms, 0.5):.3f}  "
                    f"p90 {percentile(ms, 0.9):.3f}  p99 {percentile(ms, 0.99):.3f}"
                )
        print("median over rounds:")
        for kind in KINDS:
            print(
                f"  {kind:<16} p50 {statistics.median(p50s[kind]):.3f}  "
                f"p99 {statistics.median(p99s[kind]):.3f}"
            )
        ratio = statistics.median(p50s[KINDS[1]]) / statistics.median(p50s[KINDS[0]])
        print(f"  p50 ratio Subscription / PubSub: {ratio:.2f}")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
