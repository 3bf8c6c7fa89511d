"""The held-lease book: the one record of what this process holds and what it suspects.

One per Coordinator, given at construction to both `Semaphores` (which enters the leases it
acquires or adopts, and reads the grace a semaphore it re-creates must get) and the `Renewer`
(which renews what the book holds, strikes out what it loses, and records a suspected data
loss). It also keeps the listeners callers register through the Coordinator, so that neither
of them has a hook set after construction.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable

from .keys import KeySpace
from .lease import Lease
from .nodes import NodeWatch

KNOWN_FOR_S = 3600.0
KNOWN_MAX = 10_000

# Called with (lease, seconds waited) on acquire and release, for metrics; must not block.
LeaseListener = Callable[[Lease, float], None]


class LeaseBook:
    def __init__(
        self, *, keyspace: KeySpace, lease_ttl_s: float, nodes: NodeWatch | None = None
    ) -> None:
        self._keyspace = keyspace
        self.lease_ttl_s = lease_ttl_s
        # Every lease this process holds and renews (not detached ones), by lease id.
        self.held: dict[str, Lease] = {}
        # Each node's tag and youth (nodes.py); None: no per-node detection (tests' doubles).
        self.nodes = nodes
        # Every semaphore is suspect until then (monotonic): the epoch key changed or vanished.
        self.all_suspected_until = 0.0
        # Semaphores this process used lately: if one of them is found missing, Redis lost it.
        self._known: OrderedDict[tuple[str, str], float] = OrderedDict()
        self.on_acquired: list[LeaseListener] = []
        self.on_released: list[LeaseListener] = []
        # Told (kind, semaphore id) when a reply shows orphans waiting for adoption.
        self.on_orphans: list[Callable[[str, str], None]] = []
        # Told every lease lost (not renewed in time, or gone from Redis).
        self.on_lost: list[Callable[[Lease], None]] = []

    @property
    def lease_ttl_ms(self) -> int:
        return int(self.lease_ttl_s * 1000)

    # -- held leases ---------------------------------------------------------------------------

    def acquired(self, lease: Lease, waited_s: float) -> None:
        self.held[lease.lease_id] = lease
        for listener in self.on_acquired:
            listener(lease, waited_s)

    def adopted(self, lease: Lease) -> None:
        self.held[lease.lease_id] = lease

    def released(self, lease: Lease) -> None:
        self.held.pop(lease.lease_id, None)
        for listener in self.on_released:
            listener(lease, 0.0)

    def forget(self, lease: Lease) -> None:
        """No longer renewed by this process (abandoned, or detached: its client renews it)."""
        self.held.pop(lease.lease_id, None)

    def lost(self, lease: Lease, reason: str) -> None:
        self.held.pop(lease.lease_id, None)
        lease.mark_lost(reason)
        for listener in self.on_lost:
            listener(lease)

    def orphans_seen(self, kind: str, semaphore_id: str) -> None:
        for listener in self.on_orphans:
            listener(kind, semaphore_id)

    # -- loss suspicion and grace --------------------------------------------------------------

    @property
    def loss_suspected_until(self) -> float:
        """Until when (monotonic) this process suspects a data loss anywhere: the epoch
        changed, or some node is young (nodes.py). For visibility (service/grace.py); each
        semaphore's own suspicion is `suspected_until`."""
        young = self.nodes.young_until_any if self.nodes is not None else 0.0
        return max(self.all_suspected_until, young)

    def suspect_all(self, seconds: float) -> None:
        """Suspect every semaphore for `seconds` (the epoch key changed or vanished)."""
        self.all_suspected_until = max(self.all_suspected_until, time.monotonic() + seconds)

    def suspected_until(self, kind: str, semaphore_id: str) -> float:
        """Until when (monotonic) the node serving this semaphore may still be missing leases
        it lost (it restarted or was promoted less than one TTL ago), or every node may."""
        until = self.all_suspected_until
        if self.nodes is not None:
            meta = self._keyspace.semaphore(semaphore_id, kind).meta
            until = max(until, self.nodes.young_until(meta))
        return until

    def node_hint(self, kind: str, semaphore_id: str) -> str:
        """The tag of the node serving this semaphore, as last read ('' unknown)."""
        if self.nodes is None:
            return ""
        return self.nodes.tag_for(self._keyspace.semaphore(semaphore_id, kind).meta)

    def grace_ms_for(self, kind: str, semaphore_id: str) -> int:
        """Grace to set if this call finds the semaphore gone. Any hint that its node lost
        data means old holders may still run, so new acquisitions must wait while those
        re-assert their leases: until the suspicion ends (the node restarted or was promoted
        less than one TTL ago, or the epoch changed: that moment plus one TTL), or one TTL if
        this process used the semaphore within the hour (far less than the keys' TTL), so it
        was lost at some moment it cannot know."""
        now = time.monotonic()
        until = self.suspected_until(kind, semaphore_id)
        if now < until:
            return max(1, int((until - now) * 1000))
        seen = self._known.get((kind, semaphore_id))
        if seen is not None and now - seen < KNOWN_FOR_S:
            return self.lease_ttl_ms
        return 0

    def is_known(self, kind: str, semaphore_id: str) -> bool:
        return (kind, semaphore_id) in self._known

    def remember(self, kind: str, semaphore_id: str) -> None:
        """This process uses the semaphore now (see grace_ms_for)."""
        key = (kind, semaphore_id)
        self._known[key] = time.monotonic()
        self._known.move_to_end(key)
        while len(self._known) > KNOWN_MAX:
            self._known.popitem(last=False)
