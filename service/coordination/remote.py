"""Leases held by a remote client (another service, any language) rather than by this process.

A remote lease is granted like any other (`Coordinator.acquire`: FIFO with every waiter), but
from then on the *client* renews and releases it, through whichever replica it reaches. So:

- it is taken out of the held-lease book (`LeaseBook.held`) at once: this process's Renewer
  must not keep it alive (a client that stopped renewing must lose its slot within one TTL),
  and `Coordinator.close` must not release it (the client still holds it when this replica
  shuts down);
- renewing and releasing need nothing but the semaphore id and the lease id, and read everything
  else from Redis, so any replica can serve them;
- its holder JSON carries `"remote": true`, and only leases so marked can be renewed or released
  here: a lease id of an in-process holder (a generation) is "not found" to this door.

A worked timeline, lease TTL 30 s (Redis server time):

    t=0   client X → replica 1: grant      → L1 expires t=30 (removed from replica 1's renewer)
    t=10  client X → replica 2: renew L1   → renew_leases with the current epoch → expires t=40
    t=50  nobody renewed: L1 expired at t=40; the next acquire purges it
    t=51  client X → replica 1: renew L1   → code 0 (lost, never re-added) → None → HTTP 404

The renewal passes the semaphore's *current* epoch (read just before), so a missing lease is
reported lost and never re-asserted; the re-assertion path of renew_leases is for in-process
holders after a Redis data loss, which know the epoch they acquired in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .coordinator import Coordinator
from .keys import GLOBAL
from .lease import Holder, Lease
from .redis_errors import guarded
from .script_calls import LeaseToRenew, ReleaseOutcome, ScriptCalls, json_object, text

# The longest `holder` text a remote client may attach (shown to operators).
MAX_HOLDER_TEXT = 200


@dataclass
class RemoteHolder(Holder):
    """What operators see about a remote lease: `replica` names the granting replica."""

    remote: bool = True  # in its JSON: only leases so marked are renewed or released remotely
    detached: ClassVar[bool] = True


def remote_holder(coordinator: Coordinator, description: str = "") -> RemoteHolder:
    return RemoteHolder(
        replica=f"remote via {coordinator.replica_id}",
        purpose=description or "remote lease",
    )


async def acquire_remote(
    coordinator: Coordinator, semaphore_id: str, *, timeout_s: float, description: str = ""
) -> Lease:
    """A slot of a registered global semaphore for a remote client; FIFO with every waiter.

    Raises SemaphoreNotFound, AcquireTimeout, CoordinationUnavailable like `Coordinator.acquire`.
    The returned Lease is detached: never renewed nor released by this process.
    """
    lease = await coordinator.acquire(
        semaphore_id, timeout_s=timeout_s, holder=remote_holder(coordinator, description)
    )
    # No await between the grant and this line: the Renewer can never have seen it.
    coordinator.book.forget(lease)
    return lease


def _is_remote(raw_holder: object) -> bool:
    return json_object(raw_holder).get("remote") is True


def _calls(coordinator: Coordinator) -> ScriptCalls:
    return ScriptCalls(coordinator.scripts, coordinator.keyspace)


async def renew_remote(coordinator: Coordinator, semaphore_id: str, lease_id: str) -> int | None:
    """Extend a live remote lease by one TTL. Its new expiry (Redis ms), or None when it is lost,
    unknown, not a remote lease, or its semaphore is gone."""
    keys = coordinator.keyspace.semaphore(semaphore_id, GLOBAL)
    pipe = coordinator.redis.pipeline(transaction=False)
    pipe.hget(keys.info, lease_id)
    pipe.hget(keys.meta, "epoch")
    raw_holder, epoch = await guarded(pipe.execute())
    if not _is_remote(raw_holder) or epoch is None:
        return None
    # Only reached if Redis lost its data between the two calls above and the lease is inside
    # the re-created semaphore's grace: then re-asserting it is right, and this is its holder.
    holder_json = remote_holder(coordinator, "remote lease (re-asserted)").to_json()
    # No recreate_limit: never re-create a deleted semaphore; no keys TTL: registered keys.
    renewal = await guarded(
        _calls(coordinator).renew_leases(
            semaphore_id,
            GLOBAL,
            ttl_ms=coordinator.book.lease_ttl_ms,
            # No pin: a remote lease is never pinned (acquire_remote asks for none).
            leases=[LeaseToRenew(lease_id, text(epoch), holder_json, pin_left_ms=0)],
        )
    )
    return renewal.expires_at_ms if renewal.codes[0].kept else None


async def release_remote(coordinator: Coordinator, semaphore_id: str, lease_id: str) -> bool:
    """Give back a remote lease. Idempotent: True only if a live slot was freed by this call."""
    keys = coordinator.keyspace.semaphore(semaphore_id, GLOBAL)
    if not _is_remote(await guarded(coordinator.redis.hget(keys.info, lease_id))):
        return False
    released = await guarded(
        _calls(coordinator).release_slot(semaphore_id, GLOBAL, lease_id=lease_id)
    )
    return released.outcome == ReleaseOutcome.SLOT
