#!/usr/bin/env python3
"""The project's semaphore (service.coordination), driven by benchlib.

Used as its README ("Other services: sharing a semaphore") shows: one Coordinator per process
(`Coordinator.connect(url, replica_id=...)`), shared by the W workers; `acquire(id, timeout_s=)`
returns a Lease, `lease.release()` gives it back. FIFO queue in Redis, grant on release over
pub/sub, leases renewed in the background (TTL 30 s, renewed every TTL/3).

The semaphore id must be registered first (the library equivalent of `python -m service.cli
create ID LIMIT`): every process calls `registry.create(key, L)`, one wins, the others get
SemaphoreExists. The epoch key is left alone: a registered semaphore gets no restart grace.

Run it with a Python that has the project's dependencies (redis[hiredis], uvloop), e.g. the
project's venv; the project itself is found on RCG_PROJECT (a checkout path) or installed.
RCG_LOOP=asyncio runs the stdlib event loop instead of uvloop (the service's loop).

This copy lives in the project (benchmarks/peers_bench_ours.py) and runs from there: benchlib is
found beside it or on PEERS_DIR (default ~/peers, where the kit was copied). Changes from the
kit's own adapter: the command client is `Coordinator.redis` since the API cleanup (the older
`.client` still works); RCG_PLAIN_SEND=1 puts redis-py's own send_packed_command back on the
library's connections (the "before" of benchmarks/send_fast_path.py, now in the library;
RCG_FAST_SEND is the default and does nothing); RCG_PIN_S=S acquires pinned leases (a pinned grant
costs one confirming renewal per handoff; unpinned, the default, costs none).
"""

import asyncio
import contextlib
import os
import subprocess
import sys

PROJECT = os.environ.get("RCG_PROJECT", "")
if PROJECT:
    sys.path.insert(0, PROJECT)
sys.path.insert(0, os.environ.get("PEERS_DIR", os.path.expanduser("~/peers")))
PLAIN_SEND = os.environ.get("RCG_PLAIN_SEND", "") == "1"
PIN_S = float(os.environ.get("RCG_PIN_S", "0"))
if PLAIN_SEND:
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from benchmarks import send_fast_path

    send_fast_path.use_plain()

import benchlib  # noqa: E402
import redis  # noqa: E402

from service.coordination import Coordinator, SemaphoreExists  # noqa: E402

LEASE_TTL_S = 30.0
LOOP = os.environ.get("RCG_LOOP", "uvloop")


class OursSemaphore(benchlib.Impl):
    name = "service.coordination"

    async def setup(self, args, key):
        if not args.redis_url:
            raise SystemExit("--redis-url is required")
        self.key = key
        self.workers = args.workers
        self.c = await Coordinator.connect(
            args.redis_url, replica_id=f"bench-p{args.child}-{os.getpid()}", lease_ttl_s=LEASE_TTL_S
        )
        with contextlib.suppress(SemaphoreExists):  # another process of this run registered it
            await self.c.registry.create(key, args.limit)

    async def warmup(self):
        # open the pool's connections (one per concurrent worker), then one acquire + release
        # the command client: `.client` before the API cleanup, `.redis` after it
        client = getattr(self.c, "client", None) or self.c.redis
        await asyncio.gather(*(client.ping() for _ in range(self.workers)))
        await super().warmup()

    async def acquire(self, timeout_s):
        if PIN_S > 0:
            return await self.c.acquire(self.key, timeout_s=timeout_s, pin_s=PIN_S)
        return await self.c.acquire(self.key, timeout_s=timeout_s)

    async def release(self, lease):
        await lease.release()

    async def close(self):
        await self.c.close()

    def describe(self):
        try:
            commit = subprocess.run(
                ["git", "-C", PROJECT, "rev-parse", "--short", "HEAD"],
                capture_output=True,
                text=True,
                timeout=5,
            ).stdout.strip()
        except Exception:
            commit = None
        try:
            import hiredis  # noqa: F401

            parser = "hiredis"
        except ImportError:
            parser = "python"
        return {
            "project": PROJECT,
            "commit": commit,
            "loop": LOOP,
            "lease_ttl_s": LEASE_TTL_S,
            "client": f"redis-py {redis.__version__} asyncio ({parser} parser)",
            "fast_send": not PLAIN_SEND,
            "pin_s": PIN_S,
        }


if __name__ == "__main__":
    if LOOP == "uvloop":
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    benchlib.main(OursSemaphore, description=__doc__)
