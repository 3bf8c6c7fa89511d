"""The library's front door: one Coordinator per process, shared by every request.

coordinator = await Coordinator.connect("redis://127.0.0.1:6379/0", replica_id="api-1")
async with await coordinator.acquire("image-generation-global", timeout_s=30):
    ...  # at most `limit` of these run at once across every process that names the id
await coordinator.close()
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass, field
from typing import cast

import redis.asyncio as aioredis

from service.aio import shielded

from .connection import RedisTopology, build_clients, parse_sentinels
from .errors import CoordinationUnavailable
from .keys import ACCOUNT, GLOBAL, KeySpace
from .lease import Holder, Lease
from .nodes import NodeWatch
from .redis_errors import guarded
from .registry import SemaphoreRegistry
from .renewal import Renewer
from .script_calls import ScriptCalls
from .scripts import Scripts
from .semaphore import AcquireOptions, Orphan, Semaphores, WindowAsk
from .wake import WakeDispatcher
from .window import SlidingWindow, WindowResult

log = logging.getLogger("service.coordination")

ACCOUNT_KEYS_TTL_MS = 24 * 3600 * 1000
ACCOUNT_WINDOW_S = 61.0  # 60 s, plus 1 s for skew between admission here and arrival upstream
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
    # The account creation window's length (ACCOUNT_WINDOW_SECONDS): Replicate's 60 s plus 1 s
    # of skew margin, shorter only for tests or an upstream that counts differently.
    account_window_s: float = ACCOUNT_WINDOW_S
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
        self.redis = build_clients(
            config.topology,
            timeout_s=config.redis_timeout_s,
            max_connections=config.max_connections,
            pool_wait_s=pool_wait_s,
        )
        commands = self.redis.commands
        # For callers outside the library (jobs, history, the CLI's readers), typed as the
        # single-server client: they use only commands a RedisCluster offers too.
        self.client = cast(aioredis.Redis, commands)
        self.scripts = Scripts(commands)
        self.dispatcher = WakeDispatcher(self.redis.subscription, self.keyspace.channel_pattern)
        self.nodes = NodeWatch(
            client=commands,
            calls=ScriptCalls(self.scripts, self.keyspace),
            lease_ttl_s=config.lease_ttl_s,
        )
        self.semaphores = Semaphores(
            scripts=self.scripts,
            keyspace=self.keyspace,
            dispatcher=self.dispatcher,
            replica_id=config.replica_id,
            lease_ttl_s=config.lease_ttl_s,
            queue_entry_ttl_s=config.queue_entry_ttl_s,
            nodes=self.nodes,
        )
        self.registry = SemaphoreRegistry(
            client=commands, scripts=self.scripts, keyspace=self.keyspace
        )
        self.window = SlidingWindow(client=commands, scripts=self.scripts, keyspace=self.keyspace)
        self.renewer = Renewer(
            scripts=self.scripts,
            keyspace=self.keyspace,
            semaphores=self.semaphores,
            nodes=self.nodes,
            on_data_loss=self.ensure_declared,
        )

    @classmethod
    async def connect(cls, redis_url: str, **options: object) -> Coordinator:
        coordinator = cls(CoordinatorConfig(redis_url=redis_url, **options))  # type: ignore[arg-type]
        await coordinator.start()
        return coordinator

    @property
    def replica_id(self) -> str:
        return self.config.replica_id

    async def start(self) -> None:
        """Never fails because Redis is down: the service starts degraded and recovers."""
        self.semaphores.refresh_epoch = self.renewer.refresh_epoch
        await self.renewer.start()  # reads the epoch first: declared semaphores may need grace
        with contextlib.suppress(CoordinationUnavailable):
            await self.ensure_declared()
        await self.dispatcher.start()

    async def close(self) -> None:
        """Release every lease this process holds, then stop the background tasks."""
        for lease in list(self.semaphores.held.values()):
            await shielded(lease.release())
        await self.renewer.close()
        await self.dispatcher.close()
        await self.redis.aclose()

    async def ensure_declared(self) -> None:
        for semaphore_id, limit in self.config.declared.items():
            grace_ms = self.semaphores.grace_ms_for(GLOBAL, semaphore_id)
            await self.registry.ensure(semaphore_id, limit, grace_ms)

    async def check(self) -> None:
        """PING Redis (every primary of a Cluster); raise CoordinationUnavailable, whose
        `reason` says what is wrong."""
        await guarded(self.redis.ping_primaries())

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
        holder: Holder | None = None,
        pin_s: float = 0.0,
    ) -> Lease:
        """A slot of a global semaphore; waits in FIFO order up to `timeout_s`. A semaphore
        declared in this process's configuration is (re)created on demand with its declared
        limit, like an account semaphore; any other must have been registered. With `pin_s`,
        the slot stays taken (orphaned, then adopted) until that long after admission if this
        process stops renewing it: for work that may outlive the process (a prediction)."""
        return await self.semaphores.acquire(
            semaphore_id,
            AcquireOptions(
                timeout_s=timeout_s,
                kind=GLOBAL,
                create_limit=self.config.declared.get(semaphore_id, 0),
                scope="semaphore",
                pin_ms=int(pin_s * 1000),
            ),
            holder or self.holder(),
        )

    async def semaphore_exists(self, semaphore_id: str) -> bool:
        return semaphore_id in self.config.declared or await self.registry.exists(semaphore_id)

    async def acquire_account(
        self,
        account: str,
        *,
        limit: int,
        timeout_s: float,
        holder: Holder | None = None,
        limit_per_minute: int = 0,
        pin_s: float = 0.0,
    ) -> Lease:
        """A slot of an account's concurrency semaphore (created on first use with `limit`).

        With `limit_per_minute`, a slot that acquire_slot itself admits comes with one entry of
        the account's creation window, taken in the same call when the window has room: the
        lease's `window_entry` is then True, and the first create needs no `take_account_rate`.
        (A slot handed over by a release comes without one: the releaser cannot know when its
        new holder will use it.)"""
        window = None
        if limit_per_minute > 0:
            window = WindowAsk(
                key=self.keyspace.window(f"{ACCOUNT}:{account}"),
                limit=limit_per_minute,
                window_ms=int(self.config.account_window_s * 1000),
            )
        return await self.semaphores.acquire(
            account,
            AcquireOptions(
                timeout_s=timeout_s,
                kind=ACCOUNT,
                create_limit=limit,
                keys_ttl_ms=ACCOUNT_KEYS_TTL_MS,
                scope="account_concurrency",
                window=window,
                pin_ms=int(pin_s * 1000),
            ),
            holder or self.holder(),
        )

    async def take_account_rate(
        self, account: str, *, limit_per_minute: int, timeout_s: float
    ) -> WindowResult:
        """One prediction creation from the account's sliding 60 s window.

        The window is enforced where the token is taken, but Replicate counts where the create
        lands; requests admitted at the edges of a window can travel with different delays
        (queued behind other work, a slow connection), bringing two admissions that were 60 s
        apart here closer than 60 s there. One second of margin absorbs that skew."""
        return await self.window.wait_take(
            f"{ACCOUNT}:{account}",
            limit_per_minute,
            timeout_s,
            window_s=self.config.account_window_s,
            limit_scope="account_rate",
            limit_id=account,
        )

    async def adopt_orphans(self, semaphore_id: str, *, kind: str, count: int) -> list[Orphan]:
        """Adopt up to `count` orphaned slots of a semaphore (docs/slot-ownership.md)."""
        return await self.semaphores.adopt(semaphore_id, kind, count)

    async def take_account_rate_once(self, account: str, *, limit_per_minute: int) -> WindowResult:
        """One try at the account's creation window: admitted with an entry, or the exact wait."""
        return await self.window.take(
            f"{ACCOUNT}:{account}", limit_per_minute, self.config.account_window_s
        )

    async def give_back_account_rate(self, account: str, entry_id: str) -> None:
        """Return a creation-window entry whose create never happened."""
        await self.window.give_back(f"{ACCOUNT}:{account}", entry_id)
