"""Runs the real Lua scripts on fakeredis with a controllable Redis clock, through the same typed
calls the library makes (service/coordination/script_calls.py)."""

from __future__ import annotations

import json
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

import fakeredis
import pytest
from fakeredis import _commands as fake_commands
from fakeredis._socket._fakesocket import FakeSocket
from fakeredis.commands_mixins import server_mixin

from service.coordination.keys import KeySpace, SemaphoreKeys
from service.coordination.script_calls import (
    AcquireReply,
    Adoption,
    CreateOutcome,
    LeaseToRenew,
    Released,
    ReleaseOutcome,
    Renewal,
    ScriptCalls,
    SemaphoreReading,
    WindowAsk,
    WindowTake,
)
from service.coordination.scripts import Scripts, script_source

HOLDER = {"replica": "r", "purpose": "", "prediction_id": None, "acquired_at": 1.5}
T = TypeVar("T")


# fakeredis has no INFO; the scripts read a node's identity from it (node_tag in
# redis_scripts/lib/semaphore.lua). This one answers the two sections they read, with the
# identity a test gives its FakeServer (Harness.restart_node, Harness.promote_replica).
def _fake_info(self: Any, *sections: bytes) -> bytes:
    run_id, replid = getattr(self._server, "rcg_identity", ("a" * 40, "b" * 40))
    wanted = {section.lower() for section in sections} or {b"server", b"replication"}
    lines = []
    if wanted & {b"server", b"all", b"default", b"everything"}:
        lines += ["# Server", f"run_id:{run_id}", "uptime_in_seconds:100000", ""]
    if wanted & {b"replication", b"all", b"default", b"everything"}:
        lines += ["# Replication", "role:master", f"master_replid:{replid}", ""]
    return "\r\n".join(lines).encode()


FakeSocket.rcg_info = _fake_info  # type: ignore[attr-defined]
fake_commands.SUPPORTED_COMMANDS["info"] = fake_commands.Signature("info", "rcg_info", (), (bytes,))


class FakeClock:
    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def time(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeScripts:
    """The scripts on a synchronous fakeredis client, behind the interface ScriptCalls uses."""

    def __init__(self, client: fakeredis.FakeRedis) -> None:
        self._scripts = {
            name: client.register_script(script_source(name)) for name in Scripts.NAMES
        }

    async def call(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return self._scripts[name](keys=list(keys), args=list(args))


def done(call: Coroutine[Any, Any, T]) -> T:
    """The result of a script call (it never suspends: fakeredis answers at once)."""
    try:
        call.send(None)
    except StopIteration as finished:
        return finished.value  # type: ignore[no-any-return]
    call.close()
    raise RuntimeError("a script call suspended")


class Harness:
    """Sync access to every script, with the keys of one semaphore ("s", prefix "t") and one
    window ("a")."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.server = fakeredis.FakeServer()
        self.server.rcg_identity = ("1" * 40, "2" * 40)  # type: ignore[attr-defined]
        self.nodes_changed = 0
        self.client = fakeredis.FakeRedis(server=self.server)
        self.keyspace = KeySpace("t")
        self.calls = ScriptCalls(FakeScripts(self.client), self.keyspace)
        self.keys: SemaphoreKeys = self.keyspace.semaphore("s")
        self.pubsub = self.client.pubsub()
        # The wake channel itself and every process's grant channel ("<channel>:<token>").
        self.pubsub.psubscribe(self.keys.channel + "*")
        self.pubsub.get_message(timeout=0.1)

    def node_tag(self) -> str:
        """The tag the scripts compute for this node (node_tag in lib/semaphore.lua)."""
        run_id, replid = self.server.rcg_identity  # type: ignore[attr-defined]
        return f"{run_id[:8]}{replid[:8]}"

    def _new_identity(self) -> None:
        self.nodes_changed += 1
        run_id, replid = (f"{self.nodes_changed:x}".rjust(8, "c") * 5 for _ in range(2))
        self.server.rcg_identity = (run_id, "d" + replid[1:])  # type: ignore[attr-defined]

    def restart_node(self, *, keep: bool = False) -> None:
        """The node restarts: a new identity, and (unless `keep`, as AOF would) no data."""
        self._new_identity()
        if not keep:
            self.client.flushall()

    def promote_replica(self, *, lost: Sequence[tuple[str, str]] = ()) -> None:
        """A failover: another node serves the data, without the writes in `lost` (pairs of
        sorted set or hash key and member: what the replica never received)."""
        self._new_identity()
        for key, member in lost:
            if self.client.type(key) == b"zset":
                self.client.zrem(key, member)
            else:
                self.client.hdel(key, member)

    def create(self, limit: int) -> CreateOutcome:
        return done(self.calls.create_semaphore("s", limit=limit, mode="create"))

    def ensure(self, limit: int) -> CreateOutcome:
        return done(self.calls.create_semaphore("s", limit=limit, mode="ensure"))

    def set_limit(self, limit: int) -> int | None:
        return done(self.calls.set_limit("s", limit=limit))

    def delete(self) -> bool:
        return done(self.calls.delete_semaphore("s"))

    def acquire(
        self,
        lease_id: str,
        *,
        ttl_ms: int = 1000,
        queue: bool = True,
        create_limit: int = 0,
        grace_ms: int = 0,
        queue_ttl_ms: int = 3000,
        holder: dict[str, Any] | None = None,
        window: tuple[str, int, int, str] | None = None,
        pin_ms: int = 0,
        node_hint: str | None = None,
    ) -> AcquireReply:
        """`window`: (log key, limit, window ms, request id) to take an entry with the slot.
        `holder`: the holder JSON Redis should keep, `acquired_at` included."""
        fields = dict(holder or HOLDER)
        acquired_at = float(fields.pop("acquired_at"))
        return done(
            self.calls.acquire_slot(
                "s",
                lease_id=lease_id,
                ttl_ms=ttl_ms,
                pin_ms=pin_ms,
                holder_json=json.dumps(fields, separators=(",", ":")),
                acquired_at=acquired_at,
                replica="r",
                waiting_since=1.5,
                queue=queue,
                queue_ttl_ms=queue_ttl_ms,
                create_limit=create_limit,
                grace_ms=grace_ms,
                node_hint=self.node_tag() if node_hint is None else node_hint,
                window=None if window is None else WindowAsk(*window[:3]),
                window_request_id="" if window is None else window[3],
            )
        )

    def release(self, lease_id: str) -> ReleaseOutcome:
        return self.release_as(lease_id).outcome

    def release_as(self, lease_id: str, token: str = "", counter: str = "") -> Released:
        """release_slot by the process whose token is `token` ('' none)."""
        return done(
            self.calls.release_slot("s", lease_id=lease_id, counter=counter, local_token=token)
        )

    def renew(
        self,
        leases: list[tuple[str, str]],
        *,
        ttl_ms: int = 1000,
        create_limit: int = 0,
        grace_ms: int = 1000,
        recreate_always: bool = True,
    ) -> Renewal:
        """`create_limit` > 0: re-create a missing semaphore (always, unless
        `recreate_always` is False: then only if a lease's epoch began on another node)."""
        return done(
            self.calls.renew_leases(
                "s",
                ttl_ms=ttl_ms,
                leases=[LeaseToRenew(lease_id, epoch, "{}") for lease_id, epoch in leases],
                recreate_limit=create_limit,
                grace_ms=grace_ms,
                recreate_always=recreate_always,
            )
        )

    def adopt(self, new_ids: list[str], *, ttl_ms: int = 1000) -> Adoption:
        return done(
            self.calls.adopt_orphans("s", ttl_ms=ttl_ms, adopter="adopter", new_ids=new_ids)
        )

    def take(self, limit: int, request_id: str, window_ms: int = 60_000) -> WindowTake:
        return done(
            self.calls.take_window("a", limit=limit, window_ms=window_ms, request_id=request_id)
        )

    def read(self, *, detail: bool = True) -> SemaphoreReading | None:
        return done(self.calls.read_semaphore("s", detail=detail))

    def live_holders(self) -> int:
        now_ms = int(self.clock.now * 1000)
        return int(self.client.zcount(self.keys.holders, f"({now_ms}", "+inf"))

    def published(self) -> list[str]:
        return [data for _, data in self.published_on()]

    def published_on(self) -> list[tuple[str, str]]:
        """(channel, message) of everything published since the last call."""
        out: list[tuple[str, str]] = []
        while True:
            message = self.pubsub.get_message(timeout=0.01)
            if message is None:
                return out
            if message["type"] in ("message", "pmessage"):
                out.append((message["channel"].decode(), message["data"].decode()))

    def holder_expiry(self, lease_id: str) -> int | None:
        score = self.client.zscore(self.keys.holders, lease_id)
        return None if score is None else int(score)

    def queued(self) -> list[str]:
        return [m.decode() for m in self.client.zrange(self.keys.queue, 0, -1)]

    def now_ms(self) -> int:
        """The scripts' `now` (fakeredis TIME: rounded to the microsecond, then ms floored)."""
        return round(self.clock.now * 1_000_000) // 1000

    def annotate(self, lease_id: str, holder: dict[str, Any]) -> bool:
        """annotate_lease: replace a held lease's holder JSON, or False if it is not held."""
        return done(
            self.calls.annotate_lease(
                "s", lease_id=lease_id, holder_json=json.dumps(holder, separators=(",", ":"))
            )
        )

    def drain_published(self) -> list[tuple[str, str]]:
        """Like `published_on`, without waiting: what is already delivered (fakeredis delivers a
        PUBLISH synchronously)."""
        out: list[tuple[str, str]] = []
        while True:
            message = self.pubsub.get_message(timeout=0)
            if message is None:
                return out
            if message["type"] in ("message", "pmessage"):
                out.append((message["channel"].decode(), message["data"].decode()))

    def members(self, key: str) -> dict[str, int]:
        """A sorted set's members and scores (holders, pins, orphans, queue, qexp)."""
        return {m.decode(): int(s) for m, s in self.client.zrange(key, 0, -1, withscores=True)}


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(server_mixin, "time", fake)
    return fake


@pytest.fixture
def harness(clock: FakeClock) -> Harness:
    return Harness(clock)


def redis_clock(monkeypatch: pytest.MonkeyPatch, clock: FakeClock) -> None:
    """Make `clock` the fake Redis server's only clock: for TIME (as the `clock` fixture does)
    and for key expiry too. fakeredis otherwise expires keys (PEXPIRE, PTTL) by the wall clock,
    so under a controlled clock a key's TTL would never run out, or run out at a wall-clock
    moment that has nothing to do with the test."""
    from fakeredis._socket import _base

    monkeypatch.setattr(server_mixin, "time", clock)
    monkeypatch.setattr(_base, "time", clock)
