"""A private redis-server for the benchmark (loopback, free port, no persistence), and the
server-side counters the benchmark reads from it."""

from __future__ import annotations

import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import redis

from benchmarks.coord_naive import ACQUIRE_LUA
from service.coordination.scripts import Scripts, script_source
from tests.fixtures.redis_server import RedisServer


class PrivateRedis:
    """The tests' RedisServer (loopback, free port, no persistence, noeviction) in a temporary
    directory, with a client; stopped by `stop()`."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server not found on PATH (apt-get install redis-server)")
        self._dir = tempfile.TemporaryDirectory(prefix="coord-bench-redis-")
        self._server = RedisServer(binary, Path(self._dir.name))
        try:
            self._server.start()
        except RuntimeError:
            self._server.stop()
            self._dir.cleanup()
            raise SystemExit("redis-server did not start") from None
        self.port = self._server.port
        self.client = redis.Redis(port=self.port, socket_timeout=10)

    @property
    def url(self) -> str:
        return self._server.url

    def version(self) -> str:
        return str(self.client.info("server")["redis_version"])

    def stop(self) -> None:
        self._server.stop()
        self.client.close()
        self._dir.cleanup()


_CALL = re.compile(r"redis\.p?call\(\s*'([A-Za-z]+)'")


def lua_commands(*sources: str) -> frozenset[str]:
    """The command names these Lua sources call."""
    return frozenset(m.lower() for text in sources for m in _CALL.findall(text))


# What runs inside Lua, per implementation. A command both sent by a client and called from Lua
# would be counted as in-Lua: for service.coordination that is INFO, which the scripts read the
# node's identity with, and which each process also sends once per lease TTL / 3 per node to
# note the nodes (negligible here).
LUA_COMMANDS = {
    "coord": lua_commands(*(script_source(name) for name in Scripts.NAMES)),
    "naive": lua_commands(ACQUIRE_LUA),
    "local": frozenset(),
}
LUA_COMMANDS["cluster"] = LUA_COMMANDS["coord"]  # the same library, on a Redis Cluster


@dataclass(frozen=True)
class ServerCounters:
    """INFO commandstats and INFO cpu at one moment.

    Redis 7 counts the commands a script runs (redis.call) in commandstats as well, so the total
    is split: `client` = commands that arrived over a connection (EVALSHA, ZREM, SET, PING, ...),
    `in_lua` = commands whose name only ever appears inside the Lua scripts. The two INFO calls
    of each reading (commandstats, cpu) are taken out of the difference of two readings.
    `reads`: how many nodes' readings this sums (a Cluster's primaries).
    """

    calls: dict[str, int]
    cpu_s: float
    reads: int = 1

    @classmethod
    def read(cls, client: redis.Redis) -> ServerCounters:
        stats = client.info("commandstats")
        calls = {key.removeprefix("cmdstat_"): int(value["calls"]) for key, value in stats.items()}
        cpu = client.info("cpu")
        return cls(calls, float(cpu["used_cpu_sys"]) + float(cpu["used_cpu_user"]))

    @classmethod
    def read_all(cls, clients: list[redis.Redis]) -> ServerCounters:
        """The sum over several nodes (a Cluster's primaries)."""
        total = cls({}, 0.0, 0)
        for client in clients:
            total = total.plus(cls.read(client))
        return total

    def minus(self, before: ServerCounters) -> ServerCounters:
        names = set(self.calls) | set(before.calls)
        delta = {n: self.calls.get(n, 0) - before.calls.get(n, 0) for n in names}
        # The earlier reading's own INFO calls (commandstats counts a command once it ran).
        delta["info"] = delta.get("info", 0) - 2 * before.reads
        return ServerCounters(
            {n: d for n, d in delta.items() if d}, self.cpu_s - before.cpu_s, self.reads
        )

    def client(self, impl: str) -> int:
        lua = LUA_COMMANDS[impl]
        return sum(v for k, v in self.calls.items() if k.split("|")[0] not in lua)

    def in_lua(self, impl: str) -> int:
        lua = LUA_COMMANDS[impl]
        return sum(v for k, v in self.calls.items() if k.split("|")[0] in lua)

    @property
    def total(self) -> int:
        return sum(self.calls.values())

    def plus(self, other: ServerCounters) -> ServerCounters:
        names = set(self.calls) | set(other.calls)
        return ServerCounters(
            {n: self.calls.get(n, 0) + other.calls.get(n, 0) for n in names},
            self.cpu_s + other.cpu_s,
            self.reads + other.reads,
        )
