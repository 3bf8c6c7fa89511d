"""Every Redis key and channel name, in one place (documented in docs/redis-keys.md).

All keys of one semaphore share the hash tag `{<kind>:<id>}`, so each script touches one cluster
slot. A kind is any short name: `sem` for global semaphores, registered by id (the service names its
per-account semaphores `acct`: service.fingerprint.ACCOUNT). A window has a tag of its own,
`{win:<scope>}`, unless it is attached to a semaphore: then it shares the semaphore's tag
(`{<kind>:<id>}:window`), so that one script can take a slot and an entry.

Channels are not keys: a semaphore's wake channel `<base>:wake` carries plain wake-ups (a
delete), and `<base>:wake:<token>` the grants to one process's waiters (the grant protocol:
service/coordination/semaphore.py).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

GLOBAL = "sem"  # registered global semaphores


@dataclass(frozen=True)
class SemaphoreKeys:
    kind: str
    semaphore_id: str
    meta: str
    holders: str
    info: str
    queue: str
    qexp: str
    qinfo: str
    stats: str
    pins: str
    orphans: str
    channel: str
    # The window attached to this semaphore (not among `all`: only a call that takes an entry
    # of it with a slot sends it).
    window: str

    @property
    def all(self) -> list[str]:
        """In the order every semaphore script expects (redis_scripts/lib/semaphore.lua)."""
        return [
            self.meta,
            self.holders,
            self.info,
            self.queue,
            self.qexp,
            self.qinfo,
            self.stats,
            self.pins,
            self.orphans,
        ]

    def grant_channel(self, token: str) -> str:
        """Where this semaphore's grants to one process's waiters are announced."""
        return f"{self.channel}:{token}"


@dataclass(frozen=True)
class AttachedWindow:
    """A window attached to a semaphore: its log lives beside the semaphore, under the same
    hash tag, so that acquiring a slot can take an entry of it in the same script call
    (Coordinator.acquire's `window_limit`). Any other window is named by a scope string."""

    semaphore_id: str
    kind: str = GLOBAL


# A sliding window: a scope of its own, or attached to a semaphore.
WindowName = str | AttachedWindow


@dataclass(frozen=True)
class KeySpace:
    prefix: str = "rcg"

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - KeySpace is a frozen value, never freed early
    def semaphore(self, semaphore_id: str, kind: str = GLOBAL) -> SemaphoreKeys:
        base = f"{self.prefix}:{{{kind}:{semaphore_id}}}"
        return SemaphoreKeys(
            kind=kind,
            semaphore_id=semaphore_id,
            meta=f"{base}:meta",
            holders=f"{base}:holders",
            info=f"{base}:info",
            queue=f"{base}:queue",
            qexp=f"{base}:qexp",
            qinfo=f"{base}:qinfo",
            stats=f"{base}:stats",
            pins=f"{base}:pins",
            orphans=f"{base}:orphans",
            channel=f"{base}:wake",
            window=f"{base}:window",
        )

    def window(self, window: WindowName) -> str:
        """A window's log: one of its own (`{win:<scope>}`), or the one attached to a
        semaphore, under the semaphore's hash tag (SemaphoreKeys.window)."""
        if isinstance(window, AttachedWindow):
            return self.semaphore(window.semaphore_id, window.kind).window
        return f"{self.prefix}:{{win:{window}}}:log"

    @property
    def registry(self) -> str:
        """SET of registered global semaphore ids (for listing only)."""
        return f"{self.prefix}:semaphores"

    @property
    def epoch(self) -> str:
        """A random token; when it vanishes or changes, Redis lost its data."""
        return f"{self.prefix}:epoch"

    @property
    def nodes(self) -> str:
        """HASH node tag -> when first seen (server ms; 0: trusted): how long ago each node that
        serves semaphores restarted or was promoted. Its hash tag is the epoch key's whole name,
        so both live in one slot (redis_scripts/note_nodes.lua)."""
        return f"{{{self.prefix}:epoch}}:nodes"

    @property
    def channel_pattern(self) -> str:
        """Every semaphore's wake channel; with `:<token>` appended, one process's grants."""
        return f"{self.prefix}:{{*}}:wake"
