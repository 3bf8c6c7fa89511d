"""The Coordinator's Redis clients: one server, a Cluster or a Sentinel-managed primary
(`RedisTopology`, `build_clients`); connections packed with hiredis, from a bounded pool.

redis-py's synchronous client packs commands in C when hiredis is installed; its asyncio client
always packs them in Python, one `encode` per argument. A script call has about 20 arguments
(seven keys, the script's ARGV, the SHA): packing it took 24 µs in Python and 2.3 µs with hiredis
on the benchmark machine, on both sides of every handoff. The bytes are identical.

`HiredisPackingConnection.send_packed_command` writes a command without the event-loop Task
redis-py's asyncio client adds to every write (see its docstring).

`BoundedConnectionPool` caps the connections one process opens, and makes a command that finds
them all busy wait for one instead of failing (see its docstring).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias, TypedDict

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import (
    AbstractConnection,
    Connection,
    ConnectionPool,
    SSLConnection,
    parse_url,
)
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import (
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
    SentinelManagedSSLConnection,
)
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, MaxConnectionsError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .subscriber import ClusterSubscriptionSource, PoolSubscriptionSource, SubscriptionSource

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

    async def send_packed_command(
        self, command: bytes | str | Iterable[bytes], check_health: bool = True
    ) -> None:
        """redis-py's `send_packed_command`, without the Task it adds to every write.

        With a `socket_timeout` (the Coordinator's connections always have one), redis-py 8.1
        writes inside `asyncio.wait_for(...)`, which on Python 3.11 runs the write in a new
        Task: the bytes leave one event-loop iteration later and the caller resumes two
        callbacks after that, ~0.1 ms on both sides of every handoff (benchmarks/README.md,
        "Where a handoff's millisecond goes").

        Here the bytes go to the transport at once (it sends them, or buffers what the socket
        does not take), and `drain()` is awaited, under the same timeout, only when it could
        do anything: when the transport holds unsent bytes (it may be above its high-water
        mark: then drain waits) or is closing (then drain reports the error the connection
        was lost with). Otherwise drain returns at once without raising, so skipping it
        changes nothing but the cost. Every error path is redis-py's: a timeout is a redis
        TimeoutError, an OSError a redis ConnectionError with redis-py's message, anything
        else (a cancellation mid-drain) is re-raised; each disconnects first, so a connection
        is never reused half-written. Not connected yet, or a health check possibly due:
        redis-py's own method, unchanged. (tests/integration/test_send_fast_path.py; the
        behaviour copied is pinned in tests/unit/test_private_contracts.py)
        """
        writer = self._writer
        if not self.is_connected or writer is None or (check_health and self.health_check_interval):
            await super().send_packed_command(command, check_health)
            return
        if isinstance(command, str):
            command = command.encode()
        if isinstance(command, bytes):
            command = [command]
        try:
            writer.writelines(command)
            transport = writer.transport
            if transport.get_write_buffer_size() or transport.is_closing():
                if self.socket_timeout:
                    async with asyncio.timeout(self.socket_timeout):
                        await writer.drain()
                else:
                    await writer.drain()
        except TimeoutError:  # asyncio.TimeoutError is TimeoutError since Python 3.11
            await self.disconnect(nowait=True)
            raise RedisTimeoutError("Timeout writing to socket") from None
        except OSError as e:
            await self.disconnect(nowait=True)
            if len(e.args) == 1:
                err_no, errmsg = "UNKNOWN", e.args[0]
            else:
                err_no = e.args[0]
                errmsg = e.args[1]
            raise RedisConnectionError(f"Error {err_no} while writing to socket. {errmsg}.") from e
        except BaseException:
            # As redis-py: a write cut short (a cancellation) leaves the connection unusable.
            await self.disconnect(nowait=True)
            raise


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


# --- The three deployments: one server, a Cluster, a Sentinel-managed primary -----------------

SINGLE, CLUSTER, SENTINEL = "single", "cluster", "sentinel"


@dataclass(frozen=True)
class RedisTopology:
    """Where Redis is and how to talk to it (see docs/redis-ha.md).

    - one server: `url` names it;
    - a Cluster (`cluster=True`): `url` names any node, the client discovers the rest;
    - Sentinel (`sentinels` and `sentinel_master`): the sentinels name the primary. `url` then
      names no server: its scheme (rediss:// for TLS, also to the sentinels), user, password,
      database and query options apply to the primary; its host is ignored. `sentinel_username`
      and `sentinel_password` authenticate to the sentinels themselves.
    """

    url: str
    cluster: bool = False
    sentinels: tuple[tuple[str, int], ...] = ()
    sentinel_master: str = ""
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        problem = self.problem()
        if problem is not None:
            raise ValueError(problem)

    @property
    def mode(self) -> str:
        if self.cluster:
            return CLUSTER
        return SENTINEL if self.sentinels else SINGLE

    def problem(self) -> str | None:
        """What is wrong with this combination, or None."""
        if self.cluster and self.sentinels:
            return "choose one of Redis Cluster (cluster) and Sentinel (sentinels), not both"
        if self.sentinels and not self.sentinel_master:
            return "Sentinel needs the name of the primary the sentinels monitor (sentinel_master)"
        if self.sentinel_master and not self.sentinels:
            return "sentinel_master is set but no sentinels are (host:port,host:port)"
        scheme = self.url.partition("://")[0].lower() if "://" in self.url else ""
        if self.mode != SINGLE and scheme not in ("redis", "rediss"):
            return f"{self.mode} mode needs a redis:// or rediss:// URL, not {scheme or 'none'}"
        if self.cluster:
            db = parse_url(self.url).get("db") or 0
            if db:
                return f"Redis Cluster has only database 0 (the URL names database {db})"
        return None


def parse_sentinels(text: str) -> tuple[tuple[str, int], ...]:
    """`"10.0.0.1:26379,sentinel-b:26379,[::1]:26379"` → ((host, port), ...); raises ValueError
    naming the bad entry."""
    found: list[tuple[str, int]] = []
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        host, sep, port_text = part.rpartition(":")
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not sep or not host or any(c in host for c in "/@ "):
            raise ValueError(f"expected host:port, got {part!r}")
        try:
            port = int(port_text)
        except ValueError:
            raise ValueError(f"port of {part!r} must be an integer") from None
        if not 1 <= port <= 65535:
            raise ValueError(f"port of {part!r} must be between 1 and 65535")
        found.append((host, port))
    return tuple(found)


class TopologyOptions(TypedDict):
    """CoordinatorConfig's options for where Redis is, beside redis_url."""

    cluster: bool
    sentinels: tuple[tuple[str, int], ...]
    sentinel_master: str
    sentinel_username: str | None
    sentinel_password: str | None


def options_from_environment(environ: Mapping[str, str]) -> TopologyOptions:
    """The service's variables REDIS_CLUSTER, REDIS_SENTINELS, REDIS_SENTINEL_MASTER,
    REDIS_SENTINEL_USERNAME and REDIS_SENTINEL_PASSWORD, for tools that read the environment
    without the service's settings (the CLI). Raises ValueError naming the variable."""

    def get(name: str) -> str:
        return environ.get(name, "").strip()

    cluster_text = get("REDIS_CLUSTER").lower()
    if cluster_text not in ("", "0", "1", "true", "false", "yes", "no", "on", "off"):
        raise ValueError(f"REDIS_CLUSTER: expected true or false, got {cluster_text!r}")
    try:
        sentinels = parse_sentinels(get("REDIS_SENTINELS"))
    except ValueError as exc:
        raise ValueError(f"REDIS_SENTINELS: {exc}") from None
    return TopologyOptions(
        cluster=cluster_text in ("1", "true", "yes", "on"),
        sentinels=sentinels,
        sentinel_master=get("REDIS_SENTINEL_MASTER"),
        sentinel_username=get("REDIS_SENTINEL_USERNAME") or None,
        sentinel_password=environ.get("REDIS_SENTINEL_PASSWORD") or None,
    )


class HiredisSentinelConnection(SentinelManagedConnection, HiredisPackingConnection):
    """A connection to whichever server the sentinels name, packed with hiredis."""


class BoundedSentinelConnectionPool(BoundedConnectionPool, SentinelConnectionPool):
    """BoundedConnectionPool's waiting and cap, for the primary the sentinels name (a failover
    closes the idle connections to the old one; each connection asks the sentinels on
    connect)."""

    def __init__(
        self, service_name: str, sentinel_manager: Sentinel, *, timeout: float, **kwargs: Any
    ) -> None:
        super().__init__(
            timeout=timeout,
            service_name=service_name,
            sentinel_manager=sentinel_manager,
            **kwargs,
        )


# A command client: `redis.asyncio.Redis` for one server and for Sentinel (its pool follows the
# primary), `redis.asyncio.RedisCluster` for a Cluster. Both offer every command the library
# uses; a RedisCluster routes each to the node that serves its key's slot.
RedisClient: TypeAlias = aioredis.Redis | RedisCluster


@dataclass
class RedisClients:
    """The command client of one deployment, and where the wake subscription connects."""

    topology: RedisTopology
    commands: RedisClient
    subscription: SubscriptionSource
    sentinel: Sentinel | None = None

    async def ping_primaries(self) -> None:
        """PING every primary: each shard of a Cluster; the primary Sentinel names."""
        if isinstance(self.commands, RedisCluster):
            await self.commands.ping(target_nodes=RedisCluster.PRIMARIES)
        else:
            await self.commands.ping()

    async def aclose(self) -> None:
        try:
            await self.commands.aclose()
        finally:
            if self.sentinel is not None:
                await self.sentinel.aclose()


def build_clients(
    topology: RedisTopology, *, timeout_s: float, max_connections: int, pool_wait_s: float
) -> RedisClients:
    """The clients of one deployment. Nothing connects yet."""
    # One quick retry survives a pooled connection that died with a Redis restart (or a
    # Cluster's topology change, after which the client re-reads the slots); more would only
    # delay the fast failure callers need when Redis is down. A timeout is not retried: a
    # server that did not answer in REDIS_TIMEOUT_SECONDS (frozen, overloaded) will not answer
    # a second try sooner, and each retry would add a whole timeout to the caller's 503.
    retry = Retry(
        ExponentialBackoff(cap=0.1, base=0.01), 1, supported_errors=(RedisConnectionError,)
    )
    if topology.cluster:
        cluster = RedisCluster.from_url(
            topology.url,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=retry,
            max_connections=max_connections,  # per node
        )
        kwargs = cluster.get_connection_kwargs()
        if kwargs.get("connection_class") is Connection:  # not TLS: pack with hiredis
            # The nodes are made from this dict when the client first reads the topology.
            kwargs["connection_class"] = HiredisPackingConnection
        return RedisClients(
            topology=topology,
            commands=cluster,
            subscription=ClusterSubscriptionSource(cluster),
        )
    if topology.sentinels:
        options: dict[str, Any] = dict(parse_url(topology.url))
        for name in ("host", "port", "path"):
            options.pop(name, None)
        tls = options.pop("connection_class", None) is SSLConnection
        sentinel_options: dict[str, Any] = {
            "socket_timeout": timeout_s,
            "socket_connect_timeout": timeout_s,
            "username": topology.sentinel_username,
            "password": topology.sentinel_password,
        }
        if tls:
            sentinel_options["ssl"] = True
            sentinel_options.update({k: v for k, v in options.items() if k.startswith("ssl_")})
        sentinel = Sentinel(list(topology.sentinels), sentinel_kwargs=sentinel_options)  # type: ignore[no-untyped-call]
        client = sentinel.master_for(
            topology.sentinel_master,
            connection_pool_class=BoundedSentinelConnectionPool,
            connection_class=SentinelManagedSSLConnection if tls else HiredisSentinelConnection,
            socket_timeout=timeout_s,
            socket_connect_timeout=timeout_s,
            retry=retry,
            max_connections=max_connections,
            timeout=pool_wait_s,
            **options,
        )
        return RedisClients(
            topology=topology,
            commands=client,
            subscription=PoolSubscriptionSource(client.connection_pool),
            sentinel=sentinel,
        )
    pool = BoundedConnectionPool.from_url(
        topology.url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=retry,
        max_connections=max_connections,
        timeout=pool_wait_s,
        connection_class=HiredisPackingConnection,  # rediss:// and unix:// keep their own
    )
    client = aioredis.Redis.from_pool(pool)  # closes the pool with the client
    return RedisClients(
        topology=topology, commands=client, subscription=PoolSubscriptionSource(pool)
    )
