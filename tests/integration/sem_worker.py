"""A separate process that uses the coordination library, driven by the integration tests.

Modes:
  loop   workers acquire/hold/release until --duration; prints one JSON line per hold
  hold   takes --count slots, prints HELD, then holds them (renewing) and prints LOST on loss
  queue  one acquire with --timeout; prints GOT <tag> once it has the slot, holds --hold-ms
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from service.coordination import Coordinator, CoordinatorConfig, Lease


def emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


async def loop_mode(c: Coordinator, args: argparse.Namespace) -> None:
    end = time.monotonic() + args.duration

    async def worker(index: int) -> None:
        while time.monotonic() < end:
            lease = await c.acquire(args.semaphore, timeout_s=30)
            start = time.time()
            await asyncio.sleep(args.hold_ms / 1000)
            stop = time.time()
            await lease.release()
            emit(json.dumps({"w": f"{args.tag}-{index}", "start": start, "end": stop}))
            if args.pause_ms:
                await asyncio.sleep(args.pause_ms / 1000)

    await asyncio.gather(*(worker(i) for i in range(args.workers)))


async def hold_mode(c: Coordinator, args: argparse.Namespace) -> None:
    leases: list[Lease] = []
    for _ in range(args.count):
        lease = await c.acquire(args.semaphore, timeout_s=args.timeout)
        lease.on_lost(lambda lost: emit(f"LOST {lost.lease_id}"))
        leases.append(lease)
    emit("HELD " + " ".join(lease.lease_id for lease in leases))
    while True:
        await asyncio.sleep(0.05)
        valid = sum(lease.is_valid() for lease in leases)
        if args.report_valid:
            emit(f"VALID {valid}")


async def queue_mode(c: Coordinator, args: argparse.Namespace) -> None:
    lease = await c.acquire(args.semaphore, timeout_s=args.timeout)
    emit(f"GOT {args.tag} {time.time()}")
    await asyncio.sleep(args.hold_ms / 1000)
    await lease.release()


async def main(args: argparse.Namespace) -> None:
    c = Coordinator(
        CoordinatorConfig(
            redis_url=args.url,
            replica_id=args.tag,
            lease_ttl_s=args.ttl,
            queue_entry_ttl_s=args.queue_ttl,
        )
    )
    await c.start()
    emit("READY")
    try:
        if args.mode == "loop":
            await loop_mode(c, args)
        elif args.mode == "hold":
            await hold_mode(c, args)
        else:
            await queue_mode(c, args)
    finally:
        await c.close()
    emit("DONE")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["loop", "hold", "queue"])
    parser.add_argument("--url", required=True)
    parser.add_argument("--semaphore", required=True)
    parser.add_argument("--tag", default="p")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--hold-ms", type=float, default=20)
    parser.add_argument("--pause-ms", type=float, default=0)
    parser.add_argument("--duration", type=float, default=3)
    parser.add_argument("--count", type=int, default=1)
    parser.add_argument("--timeout", type=float, default=30)
    parser.add_argument("--ttl", type=float, default=30)
    parser.add_argument("--queue-ttl", type=float, default=10)
    parser.add_argument("--report-valid", action="store_true")
    asyncio.run(main(parser.parse_args()))
