"""A separate process that uses the coordination library, driven by the integration tests.

Modes:
  loop   workers acquire/hold/release until --duration; prints one JSON line per hold
  hold   takes --count slots, prints HELD, then holds them (renewing) and prints LOST on loss
  queue  one acquire with --timeout; prints GOT <tag> once it has the slot, holds --hold-ms
  spell  takes --count slots one after the other (after SIGUSR1 with --wait-signal; a 503 is
         tried again), holds each for --hold-ms or until it is lost, then releases it; prints
         one JSON line when
         it gets a slot ({"got": id, "at": unix s}) and one when it stops using it ({"end":
         id, "at": unix s, "how": "released" | "lost"}): the intervals a test compares

Where Redis is: --url alone (one server), with --cluster, or --sentinels and --sentinel-master
(the library's options, docs/redis-ha.md). --declare ID=LIMIT declares a semaphore.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import time

from service.coordination import CoordinationUnavailable, Coordinator, CoordinatorConfig, Lease


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


async def spell_mode(c: Coordinator, args: argparse.Namespace) -> None:
    if args.wait_signal:
        go = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, go.set)
        emit("WAITING")
        await go.wait()

    async def keep(lease: Lease) -> None:
        try:
            await asyncio.wait_for(lease.lost.wait(), args.hold_ms / 1000)
            how = "lost"
        except TimeoutError:
            how = "released"
        ended = time.time()  # it stops using the slot here, before it gives it back
        if how == "released":
            await lease.release()
        emit(json.dumps({"end": lease.lease_id, "at": ended, "how": how}))

    async def take() -> Lease:
        # As a caller would: a 503 (Redis failing over) is tried again until the timeout.
        deadline = time.monotonic() + args.timeout
        while True:
            try:
                return await c.acquire(args.semaphore, timeout_s=deadline - time.monotonic())
            except CoordinationUnavailable:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)

    kept = []
    for _ in range(args.count):
        lease = await take()
        emit(json.dumps({"got": lease.lease_id, "at": time.time()}))
        kept.append(asyncio.create_task(keep(lease)))
    await asyncio.gather(*kept)


async def main(args: argparse.Namespace) -> None:
    declared = dict(item.split("=") for item in args.declare)
    c = Coordinator(
        CoordinatorConfig(
            redis_url=args.url,
            replica_id=args.tag,
            lease_ttl_s=args.ttl,
            queue_entry_ttl_s=args.queue_ttl,
            cluster=args.cluster,
            sentinels=args.sentinels,
            sentinel_master=args.sentinel_master,
            declared={name: int(limit) for name, limit in declared.items()},
        )
    )
    await c.start()
    emit("READY")
    try:
        if args.mode == "loop":
            await loop_mode(c, args)
        elif args.mode == "hold":
            await hold_mode(c, args)
        elif args.mode == "spell":
            await spell_mode(c, args)
        else:
            await queue_mode(c, args)
    finally:
        await c.close()
    emit("DONE")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["loop", "hold", "queue", "spell"])
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
    parser.add_argument("--wait-signal", action="store_true")
    parser.add_argument("--cluster", action="store_true")
    parser.add_argument("--sentinels", default="")
    parser.add_argument("--sentinel-master", default="")
    parser.add_argument("--declare", action="append", default=[])
    asyncio.run(main(parser.parse_args()))
