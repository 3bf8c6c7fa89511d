"""The connections of the Coordinator's client: packed with hiredis, from a bounded pool.

redis-py's synchronous client packs commands in C when hiredis is installed; its asyncio client
always packs them in Python, one `encode` per argument. A script call has about 20 arguments
(seven keys, the script's ARGV, the SHA): packing it took 24 µs in Python and 2.3 µs with hiredis
on the benchmark machine, on both sides of every handoff. The bytes are identical.

`BoundedConnectionPool` caps the connections one process opens, and makes a command that finds
them all busy wait for one instead of failing (see its docstring).
"""

from __future__ import annotations

import asyncio
from typing import Any

from redis.asyncio.connection import AbstractConnection, Connection, ConnectionPool
from redis.exceptions import DataError, MaxConnectionsError

hiredis: Any
try:
    import hiredis
except ImportError:  # pragma: no cover - hiredis is a dependency; the fallback stays correct
    hiredis = None


class HiredisPackingConnection(Connection):
    def pack_command(self, *args: Any) -> list[bytes]:
        # hiredis encodes str as strict UTF-8: any other encoding setting keeps redis-py's packer.
        encoder = self.encoder
        if hiredis is None or (encoder.encoding, encoder.encoding_errors) != ("utf-8", "strict"):
            return super().pack_command(*args)
        # As redis-py does: a command name with spaces ("CLIENT SETINFO") is several arguments.
        if isinstance(args[0], str):
            args = (*args[0].encode().split(), *args[1:])
        elif b" " in args[0]:
            args = (*args[0].split(), *args[1:])
        # redis-py refuses these rather than guess how to send them; so must we.
        for arg in args:
            if arg is None or isinstance(arg, bool):
                raise DataError(
                    f"Invalid input of type: '{type(arg).__name__}'. Convert to a bytes, string, "
                    "int or float first."
                )
        try:
            return [hiredis.pack_command(args)]
        except TypeError as exc:
            raise DataError(str(exc)) from exc


class PoolExhausted(MaxConnectionsError):
    """No connection of the pool came free within its wait: this process is saturated."""

    def __init__(self, max_connections: int, waited_s: float) -> None:
        super().__init__(
            f"all {max_connections} connections stayed busy for {waited_s:g}s (pool wait)"
        )
        self.max_connections = max_connections
        self.waited_s = waited_s


class BoundedConnectionPool(ConnectionPool):
    """At most `max_connections` connections; a command that finds them all busy waits, in
    arrival order, up to `timeout` seconds for one to come free, then raises PoolExhausted.

    redis-py's default pool fails such a command at once with MaxConnectionsError, a
    ConnectionError: 800 concurrent calls on a 512-connection pool failed 288 of them as "Redis
    unreachable" while Redis was idle. A command holds its connection for one round trip, so a
    queue of callers drains in milliseconds: waiting is the back-pressure, failing is not.

    Why not redis-py's BlockingConnectionPool: it enters an asyncio timeout for every command,
    waiting or not (+8 µs per command, measured), lets a newcomer overtake a waiter, and reports
    its wait running out as a plain ConnectionError, like a refused connect. Here a semaphore
    holds one permit per connection taken: free permits cost nothing, waiters are served first
    come first served, and running out is an error of its own.

    Connections are opened on demand and kept once opened (redis-py closes none for being
    idle), so a process holds at most `max_connections`: after a burst, that many sit idle.
    """

    def __init__(self, *, timeout: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.timeout = timeout
        self.waiting = 0  # callers waiting for a connection now: the back-pressure, as a gauge
        self._permits = asyncio.Semaphore(self.max_connections)

    async def get_connection(self, *args: Any, **kwargs: Any) -> AbstractConnection:
        if self._permits.locked():
            self.waiting += 1
            try:
                async with asyncio.timeout(self.timeout):
                    await self._permits.acquire()
            except TimeoutError:
                raise PoolExhausted(self.max_connections, self.timeout) from None
            finally:
                self.waiting -= 1
        else:
            await self._permits.acquire()  # returns at once: a permit is free
        try:
            # Synchronous: nothing can take the permit's connection slot in between.
            connection: AbstractConnection = self.get_available_connection()  # type: ignore[no-untyped-call]
        except BaseException:
            self._permits.release()
            raise
        try:
            await self.ensure_connection(connection)
        except BaseException:
            await self.release(connection)  # returns the permit too
            raise
        return connection

    async def release(self, connection: AbstractConnection) -> None:
        try:
            await super().release(connection)
        finally:
            self._permits.release()
