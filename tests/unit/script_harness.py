"""Runs the real Lua scripts on fakeredis with a controllable Redis clock."""

from __future__ import annotations

import json
from typing import Any

import fakeredis
import pytest
from fakeredis.commands_mixins import server_mixin

from service.coordination.keys import KeySpace, SemaphoreKeys
from service.coordination.scripts import Scripts, script_source

HOLDER = {"replica": "r", "purpose": "", "prediction_id": None, "acquired_at": 1.5}


class FakeClock:
    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.now = start

    def time(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Harness:
    """Sync access to every script, with the keys of one semaphore and one window."""

    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
        self.scripts = {
            name: self.client.register_script(script_source(name)) for name in Scripts.NAMES
        }
        self.keys: SemaphoreKeys = KeySpace("t").semaphore("s")
        self.pubsub = self.client.pubsub()
        # The wake channel itself and every process's grant channel ("<channel>:<token>").
        self.pubsub.psubscribe(self.keys.channel + "*")
        self.pubsub.get_message(timeout=0.1)

    def run(self, name: str, keys: list[str], args: list[Any]) -> Any:
        return self.scripts[name](keys=keys, args=args)

    def create(self, limit: int) -> int:
        return int(
            self.run("create_semaphore", self.keys.all, [limit, "create", self.keys.channel])
        )

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
    ) -> list[Any]:
        """`window`: (log key, limit, window ms, request id) to take an entry with the slot."""
        keys, extra = self.keys.all, []
        if window is not None:
            keys = [*keys, window[0]]
            extra = list(window[1:])
        return list(
            self.run(
                "acquire_slot",
                keys,
                [
                    lease_id,
                    ttl_ms,
                    json.dumps(holder or HOLDER, separators=(",", ":")),
                    "1" if queue else "0",
                    queue_ttl_ms,
                    create_limit,
                    grace_ms,
                    0,
                    self.keys.channel,
                    json.dumps({"replica": "r", "since": 1.5}),
                    pin_ms,
                    *extra,
                ],
            )
        )

    def release(self, lease_id: str) -> int:
        return int(self.run("release_slot", self.keys.all, [lease_id, self.keys.channel, ""]))

    def renew(
        self,
        leases: list[tuple[str, str]],
        *,
        ttl_ms: int = 1000,
        create_limit: int = 0,
        grace_ms: int = 1000,
    ) -> list[Any]:
        args: list[Any] = [ttl_ms, create_limit, grace_ms, 0]
        for lease_id, epoch in leases:
            args += [lease_id, epoch, "{}"]
        return list(self.run("renew_leases", self.keys.all, args))

    def adopt(self, new_ids: list[str], *, ttl_ms: int = 1000) -> list[Any]:
        return list(self.run("adopt_orphans", self.keys.all, [ttl_ms, "adopter", *new_ids]))

    def take(self, limit: int, request_id: str, window_ms: int = 60_000) -> list[int]:
        return [
            int(x)
            for x in self.run("take_window", ["t:{win:a}:log"], [limit, window_ms, request_id])
        ]

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

    def annotate(self, lease_id: str, holder: dict[str, Any]) -> int:
        """annotate_lease: replace a held lease's holder JSON (1), or 0 if it is not held."""
        return int(
            self.run(
                "annotate_lease",
                [self.keys.holders, self.keys.info],
                [lease_id, json.dumps(holder, separators=(",", ":"))],
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
