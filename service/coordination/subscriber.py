"""A pattern subscription whose messages are handled in the transport's data callback.

A grant message is on the critical path of every contended handoff. redis-py's PubSub hands a
message over through a reader task: the bytes wake the task, the task runs the message through
its retry, parser and dispatch layers, and only then can a waiter be woken. Here the message is
parsed with hiredis and handed to `on_message` in the same callback that received it, so the
waiter runs in the next event-loop iteration. On the benchmark machine, an EVALSHA that
publishes, from an idle process to an idle subscriber (`python -m benchmarks.wake_delivery`,
median of 5 rounds): send → handled p50 0.62 ms with PubSub.get_message, 0.52 ms here; p99 about
0.95 ms both ways (noise).

redis-py still opens the connection, with whatever the URL asks for (AUTH, TLS, a unix socket,
HELLO); its transport is then handed to `_PushProtocol`. A subscribed connection only ever
receives, apart from the PINGs of the health check, which also notice a connection that died
without a word.

Where it connects is a `SubscriptionSource`:

- one server: that server (`PoolSubscriptionSource`, the command pool's connection settings);
- Sentinel: the primary the sentinels name now (the same, with a Sentinel pool); every health
  check also asks the sentinels, and a subscription on a server that is no longer the primary
  is given up, so it follows a failover even when the old primary stays up;
- a Cluster: any one node (`ClusterSubscriptionSource`). Classic PUBLISH is broadcast to every
  node of a Cluster, replicas included, so one PSUBSCRIBE anywhere receives every semaphore's
  messages; when that node is lost, the next attempt starts with the next node.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any

import hiredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

Address = tuple[str, int]
SENTINEL_CHECK_TIMEOUT_S = 2.0  # the longest a health check waits for the sentinels


class SubscriptionLost(ConnectionError):
    pass


class _PushProtocol(asyncio.Protocol):
    def __init__(
        self, transport: asyncio.WriteTransport, patterns: int, on_message: Callable[[bytes], None]
    ) -> None:
        loop = asyncio.get_running_loop()
        self.transport = transport
        self.subscribed: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.last_read = time.monotonic()
        self._reader = hiredis.Reader()
        self._awaiting_confirmations = patterns
        self._on_message = on_message

    def data_received(self, data: bytes) -> None:
        self.last_read = time.monotonic()
        self._reader.feed(data)
        while True:
            try:
                reply: Any = self._reader.gets()
            except hiredis.ProtocolError:
                self.transport.close()
                return
            if reply is False:
                return
            self._handle(reply)

    def _handle(self, reply: Any) -> None:
        # RESP2 and RESP3 (a push) both parse to a list: [b"pmessage", pattern, channel, data].
        if isinstance(reply, list) and reply:
            kind = reply[0]
            if kind == b"pmessage" and len(reply) == 4:
                self._on_message(reply[3])
            elif kind == b"psubscribe":
                self._awaiting_confirmations -= 1
                if self._awaiting_confirmations == 0 and not self.subscribed.done():
                    self.subscribed.set_result(None)
        elif isinstance(reply, hiredis.ReplyError):  # e.g. NOPERM for the patterns
            if not self.subscribed.done():
                self.subscribed.set_exception(SubscriptionLost(f"subscribe refused: {reply}"))
            self.transport.close()

    def eof_received(self) -> bool:
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        for future in (self.subscribed, self.closed):
            if not future.done():
                future.set_exception(SubscriptionLost("subscription connection lost"))
                future.exception()  # nobody need be awaiting it: no "never retrieved" warning


class SubscriptionSource:
    """Where the subscription connects: `connect` returns a new, connected redis-py connection
    that belongs to the caller; `is_current` says whether a subscription at `address` still
    receives what it should (asked once per health check)."""

    async def connect(self) -> AbstractConnection:
        raise NotImplementedError

    async def is_current(self, address: Address | None) -> bool:
        return True

    async def aclose(self) -> None:
        """Nothing to close: every connection made belongs to its subscription."""


class PoolSubscriptionSource(SubscriptionSource):
    """A connection as `pool` makes them (its class and settings: AUTH, TLS, HELLO, a unix
    socket), outside the pool: the subscription does not take a command connection. With a
    Sentinel pool the connection asks the sentinels for the primary when it connects."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    async def connect(self) -> AbstractConnection:
        pool = self._pool
        connection: AbstractConnection = pool.connection_class(**pool.connection_kwargs)
        await connection.connect()  # type: ignore[no-untyped-call]
        return connection

    async def is_current(self, address: Address | None) -> bool:
        pool = self._pool
        if not isinstance(pool, SentinelConnectionPool) or address is None:
            return True
        try:
            async with asyncio.timeout(SENTINEL_CHECK_TIMEOUT_S):
                host, port = await pool.sentinel_manager.discover_master(pool.service_name)
        except (RedisError, OSError, TimeoutError):
            return True  # the sentinels cannot tell now: keep the subscription
        return (str(host), int(port)) == address


class ClusterSubscriptionSource(SubscriptionSource):
    """A connection to one node of a Cluster, with the cluster client's connection settings;
    each attempt starts with the node after the one used last (the first at random), and
    tries every known node before it gives up."""

    def __init__(self, cluster: RedisCluster) -> None:
        self._cluster = cluster
        self._last: str | None = None

    async def connect(self) -> AbstractConnection:
        nodes = self._cluster.get_nodes()
        if not nodes:
            await self._cluster.initialize()  # reads the topology (raises if no node answers)
            nodes = self._cluster.get_nodes()
        nodes.sort(key=lambda node: node.name)
        names = [node.name for node in nodes]
        start = names.index(self._last) + 1 if self._last in names else random.randrange(len(nodes))
        error: BaseException | None = None
        for index in range(len(nodes)):
            node = nodes[(start + index) % len(nodes)]
            # As the cluster client's own connections: no retry below the cluster's.
            options = {**node.connection_kwargs, "retry": Retry(NoBackoff(), 0)}
            connection: AbstractConnection = node.connection_class(**options)
            try:
                await connection.connect()  # type: ignore[no-untyped-call]
            except (RedisError, OSError) as exc:
                error = exc
                continue
            self._last = node.name
            return connection
        raise SubscriptionLost(f"no cluster node accepted the subscription: {error!r}")

    async def is_current(self, address: Address | None) -> bool:
        nodes = self._cluster.get_nodes()
        if not nodes or address is None:
            return True  # the client is re-reading the topology: cannot tell
        return any((str(node.host), int(node.port)) == address for node in nodes)


def _address(connection: AbstractConnection) -> Address | None:
    host, port = getattr(connection, "host", None), getattr(connection, "port", None)
    if host is None or port is None:
        return None  # a unix socket
    return (str(host), int(port))


class Subscription:
    def __init__(
        self,
        protocol: _PushProtocol,
        writer: asyncio.StreamWriter,
        source: SubscriptionSource | None = None,
        address: Address | None = None,
    ) -> None:
        self._protocol = protocol
        # Kept alive: a StreamWriter that is collected closes its transport.
        self._writer = writer
        self._source = source or SubscriptionSource()
        self.address = address  # the server subscribed to (None for a unix socket)

    @classmethod
    async def open(
        cls,
        source: SubscriptionSource | ConnectionPool,
        patterns: list[str],
        on_message: Callable[[bytes], None],
        timeout_s: float,
    ) -> Subscription:
        """Connect where `source` says (a ConnectionPool: as that pool would connect) and
        subscribe to `patterns`. Raises redis-py's connection errors, SubscriptionLost or
        TimeoutError."""
        if isinstance(source, ConnectionPool):
            source = PoolSubscriptionSource(source)
        connection = await source.connect()
        address = _address(connection)
        writer = connection._writer  # private: pinned, tests/unit/test_private_contracts.py
        if writer is None:
            raise SubscriptionLost("connection closed while opening")
        # The transport is ours from here: the connection object must not close it when it is
        # collected (its __del__ closes a writer it still has).
        connection._reader = connection._writer = None
        transport = writer.transport
        protocol = _PushProtocol(transport, len(patterns), on_message)
        transport.set_protocol(protocol)
        # (hiredis's stub types the argument as a 1-tuple)
        transport.write(hiredis.pack_command(("PSUBSCRIBE", *patterns)))  # type: ignore[arg-type]
        try:
            await asyncio.wait_for(protocol.subscribed, timeout_s)
        except BaseException:
            transport.close()
            raise
        return cls(protocol, writer, source, address)

    async def serve(self, health_check_s: float) -> None:
        """Return never; raise SubscriptionLost once the connection is gone. A connection that
        read nothing since the PING sent one health-check interval ago is given up, and so is
        one to a server that no longer gets the messages (see SubscriptionSource.is_current).
        (Replies already in the socket are read before this task resumes, so an event-loop
        stall alone does not count as silence.)"""
        protocol = self._protocol
        pinged_at: float | None = None
        while True:
            await asyncio.wait([protocol.closed], timeout=health_check_s)
            if protocol.closed.done():
                protocol.closed.result()  # raises SubscriptionLost
            if pinged_at is not None and protocol.last_read < pinged_at:
                protocol.transport.close()
                raise SubscriptionLost("subscription connection silent")
            if not await self._source.is_current(self.address):
                protocol.transport.close()
                raise SubscriptionLost("the subscribed server no longer serves this deployment")
            pinged_at = time.monotonic()
            protocol.transport.write(b"*1\r\n$4\r\nPING\r\n")

    def close(self) -> None:
        self._protocol.transport.close()
