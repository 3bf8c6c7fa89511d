"""Every Redis key and channel name, in one place (documented in docs/redis-keys.md).

All keys of one semaphore share the hash tag `{<kind>:<id>}`, so each script touches one cluster
slot. Kinds: `sem` (global semaphores, registered by id), `acct` (one per Replicate account
fingerprint). Windows use `{win:<scope>}`, except an account's creation window, which shares
its account's tag (`{acct:<fp>}:window`) so that one script can take a slot and an entry.

Channels are not keys: a semaphore's wake channel `<base>:wake` carries plain wake-ups (a
delete), and `<base>:wake:<token>` the grants to one process's waiters (the grant protocol:
service/coordination/semaphore.py).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

GLOBAL = "sem"
ACCOUNT = "acct"


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
        )

    def window(self, scope: str) -> str:
        # An account's creation window ("acct:<fp>") lives under the account's own hash tag,
        # beside its concurrency semaphore, so that acquire_slot can take a slot and a window
        # entry in one call. Every other window has a tag of its own.
        if scope.startswith(f"{ACCOUNT}:"):
            return f"{self.prefix}:{{{scope}}}:window"
        return f"{self.prefix}:{{win:{scope}}}:log"

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
