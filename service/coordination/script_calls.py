"""One typed call per Lua script in redis_scripts/: named parameters in, one typed reply out.

Each method builds its script's KEYS from the KeySpace, sends its ARGV in the order the script's
header names them, and parses its one reply shape here, the only place that decodes a script's
bytes. Everything goes through `Scripts.call`, the one door to Redis for scripts.

    calls = ScriptCalls(scripts, keyspace)
    reply = await calls.acquire_slot("gpu", GLOBAL, lease_id=..., ttl_ms=30_000, ...)
    match reply:
        case Admitted(): ...  # expires_at_ms, epoch, limit, in_use, orphans, window_entry
        case Queued(): ...  # position, retry_hint_ms, ...
        case Missing(): ...  # no such semaphore
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Literal, Protocol

from .keys import GLOBAL, KeySpace, SemaphoreKeys, WindowName


class ScriptRunner(Protocol):
    """What runs a script by name (`Scripts`; a test harness may bring its own)."""

    async def call(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any: ...


# -- replies ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Admitted:
    """acquire_slot admitted the caller, or confirmed the slot a release had granted it (then
    extended to a full TTL)."""

    expires_at_ms: int  # Redis server time
    epoch: str  # the semaphore's incarnation (docs/redis-keys.md, meta)
    in_use: int
    limit: int
    orphans: int  # orphaned leases waiting for a replica to adopt them
    # With a WindowAsk: whether an entry of the window came with the slot, and if not, how long
    # until the window has room.
    window_entry: bool = False
    window_wait_ms: int = 0


@dataclass(frozen=True)
class Queued:
    """acquire_slot found no slot for the caller."""

    position: int  # in the queue, 1-based; 0: not queued (a try-once)
    retry_hint_ms: int  # ask again within this (a lease that expires sends no message)
    in_use: int
    limit: int
    orphans: int


@dataclass(frozen=True)
class Missing:
    """No such semaphore: a registered one that does not exist (or no longer)."""


AcquireReply = Admitted | Queued | Missing


@dataclass(frozen=True)
class WindowAsk:
    """An entry of a window log (same hash tag as the semaphore) to take with a slot that
    acquire_slot itself admits."""

    key: str
    limit: int
    window_ms: int


@dataclass(frozen=True)
class KeptWaiting:
    """keep_waiting: one process's waiters of a semaphore kept in its queue."""

    retry_hint_ms: int  # call again within this (a lease that expires sends no message)
    orphans: int  # orphaned leases waiting for a replica to adopt them
    # The grants this call made to the caller's own waiters, returned instead of published ('' if
    # none). See WakeDispatcher.handle.
    local_grants: str
    # The ids given that are no longer queued (granted, dropped or released): they poll now.
    gone: tuple[str, ...]


class ReleaseOutcome(IntEnum):
    NOTHING = 0  # unknown, expired or already released: nothing changed
    SLOT = 1  # a live slot was released
    QUEUE_ENTRY = 2  # a queue entry was removed


@dataclass(frozen=True)
class Released:
    outcome: ReleaseOutcome
    # The grant message for the caller's own process (its waiters that the freed slot went to),
    # returned instead of published; '' if none. See WakeDispatcher.handle.
    local_grants: str


class RenewCode(IntEnum):
    """renew_leases' verdict on one lease: kept, or why it was lost."""

    EXPIRED = 0  # it expired before this renewal
    RENEWED = 1
    REASSERTED = 2  # put back after Redis lost its data (within the grace period)
    DELETED = 3  # the semaphore was deleted
    GONE = 4  # no longer there: released by an operator, adopted, or expired and purged

    @property
    def kept(self) -> bool:
        return self in (RenewCode.RENEWED, RenewCode.REASSERTED)


@dataclass(frozen=True)
class LeaseToRenew:
    lease_id: str
    epoch: str  # the epoch it was acquired in
    holder_json: str  # written back if the lease is re-asserted
    # Ms left of its pin by its holder's clock (0: none): pinned for that if Redis has no pin
    # for it yet (a grant its waiter confirms), or again if it is re-asserted.
    pin_left_ms: int = 0


@dataclass(frozen=True)
class Renewal:
    expires_at_ms: int  # of every lease kept
    epoch: str  # the semaphore's current epoch
    codes: tuple[RenewCode, ...]  # one per lease, in the order given


@dataclass(frozen=True)
class AdoptedOrphan:
    lease_id: str  # the adopter's new id for the slot
    previous_lease_id: str
    record: dict[str, Any]  # the holder JSON its first holder wrote ({} if unreadable)
    pin_ms: int  # Redis time after which its prediction cannot be running
    orphaned_at_ms: int


@dataclass(frozen=True)
class Adoption:
    now_ms: int
    epoch: str
    limit: int  # 0: no such semaphore
    claimed: tuple[AdoptedOrphan, ...]


class CreateOutcome(IntEnum):
    EXISTED = 0  # mode "create": left unchanged
    CREATED = 1
    UPDATED = 2  # mode "ensure": limit set


@dataclass(frozen=True)
class WindowTake:
    admitted: bool
    remaining: int
    wait_ms: int  # when not admitted: the exact wait until an entry frees


@dataclass(frozen=True)
class HolderRow:
    lease_id: str
    expires_at_ms: float
    orphaned: bool
    record: dict[str, Any]  # holder JSON ({} if none or unreadable)


@dataclass(frozen=True)
class WaiterRow:
    waiter_id: str
    entry_expires_at_ms: float
    record: dict[str, Any]  # waiter record ({} if none or unreadable)


@dataclass(frozen=True)
class SemaphoreReading:
    """read_semaphore: one semaphore as of `now_ms` (Redis time)."""

    now_ms: int
    limit: int
    grace_until_ms: float
    in_use: int
    waiting: int
    orphans: int
    counters: dict[str, int]
    holders: tuple[HolderRow, ...]  # with detail only: live holders, by expiry
    waiters: tuple[WaiterRow, ...]  # with detail only: live waiters among the first 100


@dataclass(frozen=True)
class NodesNoted:
    """note_nodes: the epoch after the call, whether the call created it, and how long each
    node given is still young (ms; 0: not young)."""

    epoch: str
    created: bool
    young_ms: tuple[int, ...]


# -- the calls -------------------------------------------------------------------------------


class ScriptCalls:
    """One method per script, bound to one runner and one key space."""

    def __init__(self, scripts: ScriptRunner, keyspace: KeySpace) -> None:
        self._scripts = scripts
        self._keyspace = keyspace

    def _keys(self, semaphore_id: str, kind: str) -> SemaphoreKeys:
        return self._keyspace.semaphore(semaphore_id, kind)

    async def acquire_slot(
        self,
        semaphore_id: str,
        kind: str = GLOBAL,
        *,
        lease_id: str,
        ttl_ms: int,
        holder_json: str,
        acquired_at: float,
        replica: str,
        waiting_since: float,
        queue: bool,
        queue_ttl_ms: int,
        pin_ms: int = 0,
        create_limit: int = 0,
        grace_ms: int = 0,
        node_hint: str = "",
        keys_ttl_ms: int = 0,
        window: WindowAsk | None = None,
        window_request_id: str = "",
    ) -> AcquireReply:
        """Take a slot, or join (or stay in) the queue (acquire_slot.lua).

        `holder_json`: the lease's holder JSON object without `acquired_at`, which the script
        adds (`acquired_at`, Unix s, on admission; the grant's time for a slot granted by a
        release). `replica` and `waiting_since` (Unix s) go into the waiter record.
        `grace_ms` applies if this call creates the semaphore, and only while `node_hint` is
        still the tag of the node that serves it (NodeWatch); otherwise a full `ttl_ms`."""
        keys = self._keys(semaphore_id, kind)
        script_keys = keys.all
        args: list[object] = [
            lease_id,
            ttl_ms,
            pin_ms,
            holder_json,
            _unix_ms_precision(acquired_at),
            "1" if queue else "0",
            queue_ttl_ms,
            replica,
            _unix_ms_precision(waiting_since),
            create_limit,
            grace_ms,
            keys_ttl_ms,
            keys.channel,
            node_hint,
        ]
        if window is not None:
            script_keys = [*script_keys, window.key]
            args += [window.limit, window.window_ms, window_request_id]
        reply = await self._scripts.call("acquire_slot", script_keys, args)
        status, position, hint_ms, in_use, limit, orphans = (int(x) for x in reply[:6])
        if status == 1:
            return Admitted(
                expires_at_ms=int(reply[6]),
                epoch=text(reply[7]),
                in_use=in_use,
                limit=limit,
                orphans=orphans,
                window_entry=int(reply[8]) == 1,
                window_wait_ms=int(reply[9]),
            )
        if status == 0:
            return Queued(
                position=position,
                retry_hint_ms=hint_ms,
                in_use=in_use,
                limit=limit,
                orphans=orphans,
            )
        return Missing()

    async def keep_waiting(
        self,
        semaphore_id: str,
        kind: str = GLOBAL,
        *,
        waiter_ids: Sequence[str],
        queue_ttl_ms: int,
        local_token: str,
        keys_ttl_ms: int = 0,
    ) -> KeptWaiting:
        """Keep the queue entries of this process's `waiter_ids` alive for `queue_ttl_ms` more,
        in one call, and grant slots freed by expiry to the queue heads, as a poll by
        acquire_slot would (keep_waiting.lua). Grants to this process's waiters (`local_token`)
        come back in the reply; the ids no longer queued are named, and how many orphans wait."""
        keys = self._keys(semaphore_id, kind)
        reply = await self._scripts.call(
            "keep_waiting",
            keys.all,
            [queue_ttl_ms, keys.channel, local_token, keys_ttl_ms, *waiter_ids],
        )
        return KeptWaiting(
            retry_hint_ms=int(reply[0]),
            orphans=int(reply[1]),
            local_grants=text(reply[2]),
            gone=tuple(text(waiter_id) for waiter_id in reply[3:]),
        )

    async def release_slot(
        self,
        semaphore_id: str,
        kind: str = GLOBAL,
        *,
        lease_id: str,
        counter: str = "",
        local_token: str = "",
    ) -> Released:
        """Give back a slot or leave the queue (release_slot.lua). `counter`: a stats counter to
        count if something was released ("timed_out", "force_released"). `local_token`: this
        process's token, to get the grants to its own waiters back in the reply."""
        keys = self._keys(semaphore_id, kind)
        reply = await self._scripts.call(
            "release_slot", keys.all, [lease_id, keys.channel, counter, local_token]
        )
        return Released(outcome=ReleaseOutcome(int(reply[0])), local_grants=text(reply[1]))

    async def renew_leases(
        self,
        semaphore_id: str,
        kind: str = GLOBAL,
        *,
        ttl_ms: int,
        leases: Sequence[LeaseToRenew],
        recreate_limit: int = 0,
        grace_ms: int = 0,
        keys_ttl_ms: int = 0,
        recreate_always: bool = False,
    ) -> Renewal:
        """Renew leases of one semaphore in one call (renew_leases.lua). `recreate_limit` > 0
        re-creates a missing semaphore, with `grace_ms` of grace, if a lease's epoch began on
        another node than the one serving it now (that node lost it), or with
        `recreate_always` (the caller suspects a loss); otherwise it was deleted. A lease sent
        with the epoch '' is never re-asserted; one renewed without a pin yet (a grant being
        confirmed) or re-asserted is pinned for its `pin_left_ms` (an existing pin never moves)."""
        args: list[object] = [
            ttl_ms,
            recreate_limit,
            grace_ms,
            keys_ttl_ms,
            "1" if recreate_always else "0",
        ]
        for lease in leases:
            args += [lease.lease_id, lease.epoch, lease.holder_json, lease.pin_left_ms]
        reply = await self._scripts.call("renew_leases", self._keys(semaphore_id, kind).all, args)
        return Renewal(
            expires_at_ms=int(reply[0]),
            epoch=text(reply[1]),
            codes=tuple(RenewCode(int(code)) for code in reply[2:]),
        )

    async def adopt_orphans(
        self,
        semaphore_id: str,
        kind: str = GLOBAL,
        *,
        ttl_ms: int,
        adopter: str,
        new_ids: Sequence[str],
    ) -> Adoption:
        """Claim up to len(new_ids) orphans, each under one of `new_ids` (adopt_orphans.lua)."""
        reply = await self._scripts.call(
            "adopt_orphans", self._keys(semaphore_id, kind).all, [ttl_ms, adopter, *new_ids]
        )
        claimed = tuple(
            AdoptedOrphan(
                lease_id=text(reply[i]),
                previous_lease_id=text(reply[i + 1]),
                record=json_object(reply[i + 2]),
                pin_ms=int(reply[i + 3]),
                orphaned_at_ms=int(reply[i + 4]),
            )
            for i in range(3, len(reply), 5)
        )
        return Adoption(
            now_ms=int(reply[0]), epoch=text(reply[1]), limit=int(reply[2]), claimed=claimed
        )

    async def annotate_lease(
        self, semaphore_id: str, kind: str = GLOBAL, *, lease_id: str, holder_json: str
    ) -> bool:
        """Replace a held lease's holder JSON. False if the lease is not held."""
        keys = self._keys(semaphore_id, kind)
        reply = await self._scripts.call(
            "annotate_lease", [keys.holders, keys.info], [lease_id, holder_json]
        )
        return int(reply) == 1

    async def create_semaphore(
        self,
        semaphore_id: str,
        *,
        limit: int,
        mode: Literal["create", "ensure"],
        grace_ms: int = 0,
    ) -> CreateOutcome:
        """Create a global semaphore; "ensure" also sets the limit of an existing one."""
        keys = self._keys(semaphore_id, GLOBAL)
        reply = await self._scripts.call(
            "create_semaphore", keys.all, [limit, mode, keys.channel, grace_ms]
        )
        return CreateOutcome(int(reply))

    async def set_limit(self, semaphore_id: str, *, limit: int) -> int | None:
        """Set a global semaphore's limit; its previous limit, or None if it does not exist."""
        keys = self._keys(semaphore_id, GLOBAL)
        previous = int(await self._scripts.call("set_limit", keys.all, [limit, keys.channel]))
        return None if previous < 0 else previous

    async def delete_semaphore(self, semaphore_id: str) -> bool:
        """Delete a global semaphore and wake its waiters. False if it did not exist."""
        keys = self._keys(semaphore_id, GLOBAL)
        return int(await self._scripts.call("delete_semaphore", keys.all, [keys.channel])) == 1

    async def take_window(
        self, window: WindowName, *, limit: int, window_ms: int, request_id: str
    ) -> WindowTake:
        """One entry of a sliding window (take_window.lua)."""
        reply = await self._scripts.call(
            "take_window", [self._keyspace.window(window)], [limit, window_ms, request_id]
        )
        return WindowTake(
            admitted=int(reply[0]) == 1, remaining=int(reply[1]), wait_ms=int(reply[2])
        )

    async def note_nodes(
        self, *, token: str, ttl_ms: int, nodes: Sequence[tuple[str, int]]
    ) -> NodesNoted:
        """Note node tags with their uptime (ms), setting the epoch to `token` if it is missing
        or 'new' (note_nodes.lua)."""
        args: list[object] = [token, ttl_ms]
        for tag, uptime_ms in nodes:
            args += [tag, uptime_ms]
        reply = await self._scripts.call(
            "note_nodes", [self._keyspace.epoch, self._keyspace.nodes], args
        )
        return NodesNoted(
            epoch=text(reply[0]),
            created=int(reply[1]) == 1,
            young_ms=tuple(int(young) for young in reply[2:]),
        )

    async def read_semaphore(
        self, semaphore_id: str, kind: str = GLOBAL, *, detail: bool = False
    ) -> SemaphoreReading | None:
        """One semaphore's counts (and with `detail` its holders and waiters), read atomically
        with Redis' clock (read_semaphore.lua). None if it does not exist."""
        reply = await self._scripts.call(
            "read_semaphore", self._keys(semaphore_id, kind).all, ["1" if detail else "0"]
        )
        now_ms, limit, grace_until, in_use, waiting, orphans, counters, holders, waiters = reply
        if int(limit) == 0:
            return None
        return SemaphoreReading(
            now_ms=int(now_ms),
            limit=int(limit),
            grace_until_ms=float(grace_until),
            in_use=int(in_use),
            waiting=int(waiting),
            orphans=int(orphans),
            counters={text(counters[i]): int(counters[i + 1]) for i in range(0, len(counters), 2)},
            holders=tuple(
                HolderRow(
                    lease_id=text(holders[i]),
                    expires_at_ms=float(holders[i + 1]),
                    orphaned=int(holders[i + 2]) == 1,
                    record=json_object(holders[i + 3]),
                )
                for i in range(0, len(holders), 4)
            ),
            waiters=tuple(
                WaiterRow(
                    waiter_id=text(waiters[i]),
                    entry_expires_at_ms=float(waiters[i + 1]),
                    record=json_object(waiters[i + 2]),
                )
                for i in range(0, len(waiters), 3)
            ),
        )


# -- encoding and decoding -------------------------------------------------------------------


def _unix_ms_precision(unix_s: float) -> float:
    """A Unix time a script encodes with cjson, which keeps 14 significant digits: to the ms."""
    return round(unix_s, 3)


def text(value: object) -> str:
    """A reply's bytes as text (the client does not decode)."""
    return value.decode() if isinstance(value, bytes) else str(value)


def json_object(value: object) -> dict[str, Any]:
    """A JSON object from a reply (a holder or waiter record); {} for anything else."""
    if not value:
        return {}
    try:
        decoded = json.loads(text(value))
    except ValueError:
        return {}
    return decoded if isinstance(decoded, dict) else {}
