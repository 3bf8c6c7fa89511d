"""The library's front door: one Coordinator per process, shared by every request.

coordinator = await Coordinator.connect("redis://127.0.0.1:6379/0", replica_id="api-1")
async with await coordinator.acquire("image-generation-global", timeout_s=30):
    ...  # at most `limit` of these run at once across every process that names the id
async with await coordinator.acquire("tenant-7", kind="tenant", create_limit=4, timeout_s=30,
                                     window_limit=100, window_s=60):
    ...  # a semaphore created on first use, with an entry of the window attached to it
await coordinator.close()

Its public API is this class's public methods and properties (with `registry` and `window`),
and what service/coordination/__init__.py exports; `semaphores`, `renewer`, `scripts`,
`keyspace`, `nodes`, `dispatcher` and `book` are its parts, open to the package's tests only.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast

import redis.asyncio as aioredis

from service.aio import shielded

from .book import LeaseBook
from .connection import RedisTopology, build_clients, parse_sentinels
from .errors import CoordinationUnavailable
from .keys import GLOBAL, AttachedWindow, KeySpace
from .lease import Holder, Lease
from .nodes import NodeWatch
from .redis_errors import guarded
from .registry import SemaphoreRegistry
from .renewal import Renewer
from .script_calls import ScriptCalls
from .scripts import Scripts
from .semaphore import AcquireOptions, LeaseListener, Orphan, Semaphores, WindowAsk
from .subscriber import ChannelSubscription
from .wake import WakeDispatcher
from .window import WINDOW_S, SlidingWindow

log = logging.getLogger("service.coordination")

DEFAULT_MAX_CONNECTIONS = 128


@dataclass(frozen=True)
class CoordinatorConfig:
    redis_url: str
    prefix: str = "rcg"
    replica_id: str = "replica"
    lease_ttl_s: float = 30.0
    queue_entry_ttl_s: float = 10.0
    redis_timeout_s: float = 2.0
    declared: dict[str, int] = field(default_factory=dict)
    # The most connections this process opens for commands (the wake subscription adds one).
    # A command that finds them all busy waits up to `pool_wait_s` (default: redis_timeout_s)
    # for one, then fails closed with CoordinationSaturated. Opened on demand, kept once opened.
    max_connections: int = DEFAULT_MAX_CONNECTIONS
    pool_wait_s: float | None = None
    # Where Redis is (docs/redis-ha.md): with none of these, redis_url names the one server.
    # A Cluster: `cluster=True`, redis_url names any node (one per slot: max_connections is per
    # node). Sentinel: `sentinels` (("host", port), ...) or "host:port,host:port", and
    # `sentinel_master`, the name they monitor; redis_url then names no server, only the
    # primary's scheme (rediss:// for TLS, to the sentinels too), user, password and database
    # ("redis://" when there is none). `sentinel_username`/`sentinel_password`: the
    # sentinels' own credentials.
    cluster: bool = False
    sentinels: tuple[tuple[str, int], ...] | str = ()
    sentinel_master: str = ""
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if "{" in self.prefix or "}" in self.prefix:
            # Every key of a semaphore shares one hash tag, `{kind:id}`: a brace in the prefix
            # would become the tag of every key, putting them all in one Cluster slot.
            raise ValueError(f"prefix must not contain {{ or }} (got {self.prefix!r})")
        self.topology  # noqa: B018 - raises ValueError for a bad combination

    @property
    def topology(self) -> RedisTopology:
        sentinels = self.sentinels
        if isinstance(sentinels, str):
            sentinels = parse_sentinels(sentinels)
        return RedisTopology(
            url=self.redis_url or ("redis://" if sentinels else ""),
            cluster=self.cluster,
            sentinels=tuple((str(host), int(port)) for host, port in sentinels),
            sentinel_master=self.sentinel_master,
            sentinel_username=self.sentinel_username,
            sentinel_password=self.sentinel_password,
        )


class Coordinator:
    def __init__(self, config: CoordinatorConfig) -> None:
        self.config = config
        self.keyspace = KeySpace(config.prefix)
        # One server, a Cluster or a Sentinel-managed primary (connection.build_clients).
        pool_wait_s = config.redis_timeout_s if config.pool_wait_s is None else config.pool_wait_s
        self._clients = build_clients(
            config.topology,
            timeout_s=config.redis_timeout_s,
            max_connections=config.max_connections,
            pool_wait_s=pool_wait_s,
        )
        commands = self._clients.commands
        self._redis = cast(aioredis.Redis, commands)
        self.scripts = Scripts(commands)
        self.dispatcher = WakeDispatcher(self._clients.subscription, self.keyspace.channel_pattern)
        self.nodes = NodeWatch(
            client=commands,
            calls=ScriptCalls(self.scripts, self.keyspace),
            lease_ttl_s=config.lease_ttl_s,
        )
        # What this process holds and suspects: one book, shared by the two that keep it.
        self.book = LeaseBook(
            keyspace=self.keyspace, lease_ttl_s=config.lease_ttl_s, nodes=self.nodes
        )
        self.renewer = Renewer(
            scripts=self.scripts,
            keyspace=self.keyspace,
            book=self.book,
            nodes=self.nodes,
            on_data_loss=self.ensure_declared,
        )
        self.semaphores = Semaphores(
            scripts=self.scripts,
            keyspace=self.keyspace,
            dispatcher=self.dispatcher,
            replica_id=config.replica_id,
            queue_entry_ttl_s=config.queue_entry_ttl_s,
            book=self.book,
            renewer=self.renewer,
        )
        self.registry = SemaphoreRegistry(
            client=commands, scripts=self.scripts, keyspace=self.keyspace
        )
        self.window = SlidingWindow(client=commands, scripts=self.scripts, keyspace=self.keyspace)
        self._subscriptions: set[ChannelSubscription] = set()

    @classmethod
    async def connect(cls, redis_url: str, **options: object) -> Coordinator:
        coordinator = cls(CoordinatorConfig(redis_url=redis_url, **options))  # type: ignore[arg-type]
        await coordinator.start()
        return coordinator

    @property
    def replica_id(self) -> str:
        return self.config.replica_id

    @property
    def redis(self) -> aioredis.Redis:
        """The command client, for callers that keep keys of their own in the same Redis (the
        jobs store, the history sampler, operators' read-only readers). Typed as the
        single-server client: they must use only commands a RedisCluster offers too, on keys
        under `prefix`."""
        return self._redis

    @property
    def prefix(self) -> str:
        """Every key of this library starts with it (docs/redis-keys.md)."""
        return self.keyspace.prefix

    @property
    def lease_ttl_s(self) -> float:
        return self.book.lease_ttl_s

    @property
    def loss_suspected_until(self) -> float:
        """Until when (monotonic) this process suspects a Redis data loss anywhere."""
        return self.book.loss_suspected_until

    def grace_ms_for(self, kind: str, semaphore_id: str) -> int:
        """The grace a semaphore would get were an acquisition to create it now (0: none)."""
        return self.book.grace_ms_for(kind, semaphore_id)

    async def refresh_epoch(self) -> None:
        """Read the epoch and the nodes' identities now, unless that was done within 1 s."""
        await self.renewer.refresh_epoch()

    def held_leases(self) -> list[Lease]:
        """The leases this process holds and renews (not detached ones)."""
        return list(self.book.held.values())

    @property
    def on_acquired(self) -> list[LeaseListener]:
        """Told (lease, seconds waited) on every acquisition; must not block."""
        return self.book.on_acquired

    @property
    def on_lost(self) -> list[Callable[[Lease], None]]:
        """Told every lease this process lost (not renewed in time, or gone from Redis)."""
        return self.book.on_lost

    @property
    def on_orphans(self) -> list[Callable[[str, str], None]]:
        """Told (kind, semaphore id) when an acquisition sees orphans waiting for adoption."""
        return self.book.on_orphans

    async def start(self) -> None:
        """Never fails because Redis is down: the service starts degraded and recovers."""
        await self.renewer.start()  # reads the epoch first: declared semaphores may need grace
        with contextlib.suppress(CoordinationUnavailable):
            await self.ensure_declared()
        await self.dispatcher.start()

    async def close(self) -> None:
        """Fail the acquires still waiting, release every lease this process holds, then stop
        the background tasks."""
        await self.semaphores.close()
        for lease in list(self.book.held.values()):
            await shielded(lease.release())
        await self.renewer.close()
        await self.dispatcher.close()
        for subscription in list(self._subscriptions):
            await subscription.close()
        await self._clients.aclose()

    def subscribe(
        self,
        channel: str,
        on_message: Callable[[bytes], None],
        *,
        on_up: Callable[[], None] | None = None,
        on_down: Callable[[Exception], None] | None = None,
    ) -> ChannelSubscription:
        """Follow the pub/sub `channel` (its exact name: glob characters are escaped) until
        the subscription is closed, or this Coordinator is. Each message's payload goes to
        `on_message` as soon as it is read, in the event loop's read callback: it must not
        block. Works in every deployment, as the wake subscription does (docs/redis-ha.md):
        one server; the Sentinel primary, followed through failovers; any node of a Cluster
        (classic PUBLISH reaches every node). One connection of its own, reconnected with a
        backoff; messages published while it is down are lost (`on_down(error)` says when it
        went down, `on_up()` when it is subscribed again, and the first time). Needs a
        running event loop."""
        subscription = ChannelSubscription(
            self._clients.subscription,
            channel,
            on_message,
            on_up=on_up,
            on_down=on_down,
        )
        self._subscriptions.add(subscription)
        subscription.add_done_callback(lambda: self._subscriptions.discard(subscription))
        return subscription

    async def ensure_declared(self) -> None:
        for semaphore_id, limit in self.config.declared.items():
            grace_ms = self.book.grace_ms_for(GLOBAL, semaphore_id)
            await self.registry.ensure(semaphore_id, limit, grace_ms)

    async def check(self) -> None:
        """PING Redis (every primary of a Cluster); raise CoordinationUnavailable, whose
        `reason` says what is wrong."""
        await guarded(self._clients.ping_primaries())

    async def ping(self) -> bool:
        try:
            await self.check()
        except CoordinationUnavailable:
            return False
        return True

    def holder(self, purpose: str = "", prediction_id: str | None = None) -> Holder:
        return Holder(replica=self.replica_id, purpose=purpose, prediction_id=prediction_id)

    async def acquire(
        self,
        semaphore_id: str,
        *,
        timeout_s: float,
        kind: str = GLOBAL,
        create_limit: int = 0,
        keys_ttl_s: float = 0.0,
        holder: Holder | None = None,
        pin_s: float = 0.0,
        window_limit: int = 0,
        window_s: float = WINDOW_S,
        scope: str = "semaphore",
    ) -> Lease:
        """A slot of the semaphore `semaphore_id` of `kind`; waits in FIFO order up to
        `timeout_s` (0: one try, never queued). Raises SemaphoreNotFound, AcquireTimeout (naming
        `scope`), CoordinationUnavailable.

        `create_limit` > 0 creates the semaphore on first use with that limit (and raises its
        limit to it); then `keys_ttl_s` > 0 lets its keys expire that long after their last
        use. A global semaphore declared in this process's configuration is (re)created on
        demand with its declared limit; any other global one must have been registered. With
        `pin_s`, the slot stays taken (orphaned, then adopted) until that long after admission
        if this process stops renewing it: for work that may outlive the process.

        With `window_limit` > 0, a slot that this call's script itself admits comes with one
        entry of the window attached to the semaphore (AttachedWindow: at most `window_limit`
        in any `window_s`), taken in the same call when the window has room: the lease's
        `window_entry` is then True (`window_entry_id` gives it back unused), else
        `window_wait_s` says when the window has room. A slot handed over by a release comes
        without one (the releaser cannot know when its new holder will use it)."""
        if kind == GLOBAL and create_limit <= 0:
            create_limit = self.config.declared.get(semaphore_id, 0)
        window = None
        if window_limit > 0:
            window = WindowAsk(
                key=self.keyspace.window(AttachedWindow(semaphore_id, kind)),
                limit=window_limit,
                window_ms=int(window_s * 1000),
            )
        return await self.semaphores.acquire(
            semaphore_id,
            AcquireOptions(
                timeout_s=timeout_s,
                kind=kind,
                create_limit=create_limit,
                keys_ttl_ms=int(keys_ttl_s * 1000),
                scope=scope,
                window=window,
                pin_ms=int(pin_s * 1000),
            ),
            holder or self.holder(),
        )

    async def semaphore_exists(self, semaphore_id: str) -> bool:
        return semaphore_id in self.config.declared or await self.registry.exists(semaphore_id)

    async def adopt_orphans(self, semaphore_id: str, *, kind: str, count: int) -> list[Orphan]:
        """Adopt up to `count` orphaned slots of a semaphore (docs/slot-ownership.md)."""
        return await self.semaphores.adopt(semaphore_id, kind, count)
