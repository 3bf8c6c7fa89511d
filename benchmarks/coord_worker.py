"""One benchmark process: N asyncio workers that acquire, hold, release (and maybe pause) in a
loop. Driven by benchmarks.coordination over stdin/stdout:

    worker → READY                (set up, connection pool warm)
    parent → GO <t0>              (unix time to start at; the run lasts --duration from t0)
    worker → DONE                 (records written to --out; no more acquisitions)
    parent → EXIT (or EOF)        (worker closes its clients and exits)

Records (JSON list of [worker, t_request, t_acquired, t_release, t_released], time.time()),
written to --out with the process's CPU seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import resource
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import redis.asyncio as aioredis

from benchmarks.coord_naive import NaiveSemaphore
from service.coordination import Coordinator, CoordinatorConfig
from service.coordination.wake import Wake

T = TypeVar("T")
Acquire = Callable[[], Awaitable[Any]]
Release = Callable[[Any], Awaitable[None]]


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def read_line() -> str:
    return (await asyncio.to_thread(sys.stdin.readline)).strip()


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run_loop(
    args: argparse.Namespace, acquire: Acquire, release: Release
) -> tuple[list[list[Any]], float]:
    # A warm-up pass outside the measured window: first-use work (script load, epoch check,
    # connections) is not what we measure.
    token = await acquire()
    await release(token)
    say("READY")
    command = await read_line()
    if not command.startswith("GO "):
        raise SystemExit(f"expected GO, got {command!r}")
    t0 = float(command.split()[1])
    end = t0 + args.duration
    hold_s = args.hold_ms / 1000
    pause_s = args.pause_ms / 1000
    records: list[list[Any]] = []
    await asyncio.sleep(max(0.0, t0 - time.time()))
    cpu_start = cpu_s()
    profiler = cProfile.Profile() if args.profile else None
    if profiler:
        profiler.enable()

    async def worker(index: int) -> None:
        name = f"{args.tag}-{index}"
        while time.time() < end:
            t_request = time.time()
            token = await acquire()
            t_acquired = time.time()
            await asyncio.sleep(hold_s)
            t_release = time.time()
            await release(token)
            t_released = time.time()
            records.append([name, t_request, t_acquired, t_release, t_released])
            if pause_s:
                await asyncio.sleep(pause_s)

    await asyncio.gather(*(worker(i) for i in range(args.workers)))
    if profiler:
        profiler.disable()
        profiler.dump_stats(args.profile)
    return records, cpu_s() - cpu_start


async def warm_pool(client: aioredis.Redis, connections: int) -> None:
    """Open the connections the workers will use (each new one sends CLIENT SETINFO)."""
    for _ in range(2):
        await asyncio.gather(*(client.ping() for _ in range(connections)))


TRACE: list[list[Any]] = []


def install_trace(c: Coordinator) -> None:
    """Diagnostics (--trace): log every script call and every wake-up with time.time(), and for
    every grant read, the Redis time at which the releasing script made it."""
    scripts = c.scripts
    plain_call = scripts.call

    async def call(name: str, keys: Any, args: Any) -> Any:
        start = time.time()
        reply = await plain_call(name, keys, args)
        status = reply[0] if isinstance(reply, list) else reply
        TRACE.append(["call", name, str(args[0]), start, time.time(), int(status)])
        return reply

    scripts.call = call  # type: ignore[method-assign]
    dispatcher = c.dispatcher
    plain_register = dispatcher.register

    def register(waiter_id: str) -> Wake:
        event = plain_register(waiter_id)
        plain_set = event.set

        def traced_set() -> None:
            TRACE.append(["wake", waiter_id, time.time()])
            plain_set()

        event.set = traced_set  # type: ignore[method-assign]
        return event

    dispatcher.register = register  # type: ignore[method-assign]
    plain_grant = dispatcher._grant

    def grant(waiter_id: str, granted: Any) -> None:
        TRACE.append(["srv", waiter_id, granted.granted_at_ms / 1000, time.time()])
        plain_grant(waiter_id, granted)

    dispatcher._grant = grant  # type: ignore[method-assign]


async def finish(args: argparse.Namespace, records: list[list[Any]], cpu: float) -> None:
    with open(args.out, "w") as fh:
        trace = list(TRACE)
        json.dump({"records": records, "cpu_s": cpu, "trace": trace}, fh)
    say("DONE")
    await read_line()  # EXIT or EOF


async def coord_mode(args: argparse.Namespace) -> None:
    c = Coordinator(
        CoordinatorConfig(
            redis_url=args.url,
            replica_id=args.tag,
            lease_ttl_s=args.lease_ttl,
            queue_entry_ttl_s=args.queue_ttl,
            cluster=args.cluster,
        )
    )
    if args.trace:
        install_trace(c)
    await c.start()
    try:
        await warm_pool(c.redis, args.workers + 2)

        async def acquire() -> Any:
            return await c.acquire(args.semaphore, timeout_s=args.timeout)

        async def release(lease: Any) -> None:
            await lease.release()

        records, cpu = await run_loop(args, acquire, release)
        await finish(args, records, cpu)
    finally:
        await c.close()


async def naive_mode(args: argparse.Namespace) -> None:
    client = aioredis.Redis.from_url(args.url, max_connections=512)
    try:
        await warm_pool(client, args.workers + 2)
        sem = NaiveSemaphore(client, args.semaphore, args.limit)
        records, cpu = await run_loop(args, sem.acquire, sem.release)
        await finish(args, records, cpu)
    finally:
        await client.aclose()


async def local_mode(args: argparse.Namespace) -> None:
    sem = asyncio.Semaphore(args.limit)

    async def acquire() -> None:
        await sem.acquire()

    async def release(_: Any) -> None:
        sem.release()

    records, cpu = await run_loop(args, acquire, release)
    await finish(args, records, cpu)


MODES = {"coord": coord_mode, "naive": naive_mode, "local": local_mode}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=sorted(MODES))
    parser.add_argument("--url", default="")
    parser.add_argument("--cluster", action="store_true", help="coord: --url names a Cluster node")
    parser.add_argument("--semaphore", default="bench")
    parser.add_argument("--limit", type=int, default=4, help="naive/local only")
    parser.add_argument("--tag", default="p0")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--hold-ms", type=float, default=50)
    parser.add_argument("--pause-ms", type=float, default=0)
    parser.add_argument("--duration", type=float, default=10)
    parser.add_argument("--timeout", type=float, default=30)
    parser.add_argument("--lease-ttl", type=float, default=30)
    parser.add_argument("--queue-ttl", type=float, default=10)
    parser.add_argument("--out", required=True)
    parser.add_argument("--trace", action="store_true", help="coord: log calls and wake-ups")
    parser.add_argument("--profile", default="", help="write a cProfile of the run here")
    args = parser.parse_args()
    run_on_loop(MODES[args.mode](args))


def run_on_loop(main: Coroutine[Any, Any, T]) -> T:
    """`main`'s result, run on uvloop as the service runs under uvicorn, unless
    BENCH_LOOP=asyncio (the parent's --loop)."""
    if os.environ.get("BENCH_LOOP", "uvloop") == "uvloop":
        import uvloop

        return uvloop.run(main)
    return asyncio.run(main)


if __name__ == "__main__":
    main()
