"""What callers see while a failover lasts, for test_redis_failover_cluster.py and
test_redis_failover_sentinel.py."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from service.coordination import AcquireTimeout, CoordinationUnavailable, Coordinator
from service.coordination_errors import unavailable as http_unavailable

# What a failover may look like to a caller while it lasts: each a clear sentence.
FAILOVER_REASONS = (
    "Redis is unreachable",
    "Redis did not answer in time",
    "Redis Cluster is down",
    "Redis Cluster kept redirecting",
    "Redis Cluster has slots no node serves",
    "Redis Cluster is unreachable",
    "Redis Sentinel names no reachable primary",
    "Redis primary was demoted by a failover",
    "Redis is a read-only replica",
    "Redis replica has lost its link to the primary",
)

# A failover opens one lease TTL of grace on the node (docs/redis-ha.md, per-node loss
# detection): a short TTL keeps the wait for it short.
LEASE_TTL_S = 3.0


@dataclass
class Outage:
    """What callers saw while a failover lasted."""

    reasons: list[str] = field(default_factory=list)
    recovered_after_s: float | None = None


async def ride_out(c: Coordinator, semaphore_id: str, timeout_s: float = 40.0) -> Outage:
    """Acquire and release in a loop until it works again, collecting each failure."""
    outage = Outage()
    began = time.monotonic()
    while time.monotonic() - began < timeout_s:
        try:
            lease = await c.acquire(semaphore_id, timeout_s=0.5)
        except CoordinationUnavailable as exc:
            outage.reasons.append(exc.reason)
            response = http_unavailable(exc)
            assert response.status_code == 503
            assert exc.reason in str(response)
            await asyncio.sleep(0.1)
            continue
        except AcquireTimeout:
            continue  # a data-loss grace after the failover: admitting nothing is safe
        await lease.release()
        outage.recovered_after_s = time.monotonic() - began
        return outage
    raise AssertionError(f"never recovered; saw {sorted(set(outage.reasons))}")


def assert_clear(outage: Outage) -> None:
    assert outage.reasons, "the failover was never seen as unavailable"
    unclear = [r for r in outage.reasons if not r.startswith(FAILOVER_REASONS)]
    assert not unclear, f"unclear reasons: {sorted(set(unclear))}"
