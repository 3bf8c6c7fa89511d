"""Redis error replies that mean "nothing can be written safely" fail closed with a reason, on
real redis-servers: a read-only replica, a full one (maxmemory), a replica cut off from its
primary, one that is loading, busy, or short of in-sync replicas. Cluster-only replies come
from a scripted RESP endpoint, through the same redis-py parser."""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import hiredis
import pytest
import redis
import redis.exceptions
from redis._parsers.base import BaseParser

from service.coordination import (
    AcquireTimeout,
    CoordinationUnavailable,
    Coordinator,
    CoordinatorConfig,
)
from service.coordination.redis_errors import unavailable
from service.limits import AccountLimits
from tests.api.conftest import ADMIN, mark_store_known, running_api, settings_for
from tests.fixtures.ports import free_port
from tests.fixtures.redis_server import RedisServer, require_redis_binary
from tests.fixtures.simulator import SimulatorHandle

pytestmark = pytest.mark.redis


@contextlib.contextmanager
def another_server() -> Iterator[RedisServer]:
    with tempfile.TemporaryDirectory(prefix="rcg-redis-") as workdir:
        server = RedisServer(require_redis_binary(), Path(workdir))
        server.start()
        try:
            yield server
        finally:
            server.stop()


async def until(condition: Callable[[], bool], what: str, timeout_s: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        assert loop.time() < deadline, f"never saw {what}"
        await asyncio.sleep(0.01)


async def connect(url: str) -> Coordinator:
    # A store with an epoch: no grace period for a young Redis (see tests/fixtures/redis_server)
    with contextlib.suppress(redis.exceptions.RedisError):
        mark_store_known(url)
    return await Coordinator.connect(url, replica_id="test")


async def assert_fails_closed(c: Coordinator, reason: str, *, take: bool = True) -> None:
    """An acquire and a window take (both scripts that write) are refused with `reason`."""
    with pytest.raises(CoordinationUnavailable) as acquire:
        await AccountLimits(c).acquire("fp", limit=5, timeout_s=1)
    assert reason in acquire.value.reason
    assert reason in str(acquire.value)  # the message
    assert acquire.value.detail  # redis-py's own words, for logs
    if take:
        with pytest.raises(CoordinationUnavailable) as took:
            await AccountLimits(c).take_rate("fp", limit_per_minute=5, timeout_s=1)
        assert reason in took.value.reason


async def test_a_read_only_replica_fails_closed(own_redis_server: RedisServer) -> None:
    primary = own_redis_server.sync_client()
    primary.config_set("repl-diskless-sync-delay", 0)  # sync the replica now, not in 5 s
    primary.close()
    with another_server() as replica:
        sync = replica.sync_client()
        sync.replicaof("127.0.0.1", own_redis_server.port)  # replica-read-only is the default
        await until(
            lambda: sync.info("replication")["master_link_status"] == "up", "the replica in sync"
        )
        c = await connect(replica.url)
        await assert_fails_closed(c, "read-only replica")
        assert await c.ping()  # it answers: the health check is not where this shows
        await c.close()
        sync.close()


async def test_a_full_redis_fails_closed_and_recovers_when_memory_is_back(
    own_redis_server: RedisServer,
) -> None:
    sync = own_redis_server.sync_client()  # the fixture runs it with noeviction
    c = await connect(own_redis_server.url)
    held = await AccountLimits(c).acquire("held", limit=5, timeout_s=1)
    sync.config_set("maxmemory", 1)
    await assert_fails_closed(c, "out of memory", take=False)
    with pytest.raises(CoordinationUnavailable, match="out of memory"):
        await c.registry.create("new", 1)
    # Redis refuses a script only at its first write, and only if that write can grow memory.
    # take_window's first write trims the log, so the take goes on and its admission is
    # recorded: over maxmemory, never over the limit.
    assert (await AccountLimits(c).take_rate("fp", limit_per_minute=1, timeout_s=1)).admitted
    with pytest.raises(AcquireTimeout):
        await AccountLimits(c).take_rate("fp", limit_per_minute=1, timeout_s=0)
    await held.release()  # freeing a slot writes nothing new: a full Redis still allows it
    sync.config_set("maxmemory", 0)
    # (A new id: one whose acquire failed is remembered as used, and would get a grace period.)
    lease = await AccountLimits(c).acquire("after", limit=5, timeout_s=1)
    await lease.release()
    await c.close()
    sync.close()


async def test_a_replica_cut_off_from_its_primary_fails_closed() -> None:
    with another_server() as replica:
        sync = replica.sync_client()
        sync.config_set("replica-serve-stale-data", "no")
        sync.replicaof("127.0.0.1", free_port())  # nothing listens there
        c = await connect(replica.url)  # starts degraded, as when Redis is down
        await assert_fails_closed(c, "lost its link to the primary")
        with pytest.raises(CoordinationUnavailable, match="lost its link to the primary"):
            await c.check()  # even PING is refused: here the health check does show it
        await c.close()
        sync.close()


async def test_a_redis_loading_its_dataset_fails_closed(own_redis_server: RedisServer) -> None:
    primary = own_redis_server.sync_client()
    primary.config_set("repl-diskless-sync-delay", 0)
    with primary.pipeline(transaction=False) as pipe:
        for i in range(5000):
            pipe.set(f"filler:{i}", "x")
        pipe.execute()
    with another_server() as replica:
        sync = replica.sync_client()
        # 1 ms per key: the replica loads its copy for about 5 s, answering while it does.
        sync.config_set("key-load-delay", 1000)
        sync.config_set("loading-process-events-interval-bytes", 1024)
        c = Coordinator(CoordinatorConfig(redis_url=replica.url, replica_id="test"))
        sync.replicaof("127.0.0.1", own_redis_server.port)
        await until(lambda: sync.info("persistence")["loading"] == 1, "the replica loading")
        with pytest.raises(CoordinationUnavailable) as raised:
            await AccountLimits(c).take_rate("fp", limit_per_minute=5, timeout_s=1)
        assert "loading its dataset" in raised.value.reason
        await c.close()
        sync.close()
    primary.close()


async def test_a_redis_busy_running_a_long_script_fails_closed(
    own_redis_server: RedisServer,
) -> None:
    c = await connect(own_redis_server.url)
    sync = own_redis_server.sync_client()
    sync.config_set("busy-reply-threshold", 50)  # ms before others are told BUSY
    looper = own_redis_server.sync_client()
    stuck = threading.Thread(target=_run_forever, args=(looper,))
    stuck.start()

    def busy() -> bool:
        try:
            sync.ping()
        except redis.exceptions.ResponseError as exc:
            return str(exc).startswith("BUSY")
        return False

    try:
        await until(busy, "the script running")
        await assert_fails_closed(c, "busy running a long script")
    finally:
        sync.script_kill()
        stuck.join(10)
    await c.close()
    sync.close()
    looper.close()


def _run_forever(client: redis.Redis) -> None:
    with contextlib.suppress(redis.exceptions.ResponseError):  # "killed by user"
        client.eval("while true do end", 0)


async def test_too_few_replicas_in_sync_fails_closed(own_redis_server: RedisServer) -> None:
    sync = own_redis_server.sync_client()
    c = await connect(own_redis_server.url)
    sync.config_set("min-replicas-to-write", 1)  # and there is none
    await assert_fails_closed(c, "too few replicas")
    sync.config_set("min-replicas-to-write", 0)
    await c.close()
    sync.close()


async def test_a_redis_at_maxclients_fails_closed_with_its_reason(
    own_redis_server: RedisServer,
) -> None:
    sync = own_redis_server.sync_client()
    sync.ping()
    sync.config_set("maxclients", 1)  # this client is the one
    c = Coordinator(CoordinatorConfig(redis_url=own_redis_server.url, replica_id="test"))
    with pytest.raises(CoordinationUnavailable) as raised:
        await AccountLimits(c).take_rate("fp", limit_per_minute=5, timeout_s=1)
    assert "maxclients" in raised.value.reason
    sync.config_set("maxclients", 10000)
    await c.close()
    sync.close()


async def test_scripts_come_back_after_a_script_flush(redis_url: str) -> None:
    c = await connect(redis_url)
    await (await AccountLimits(c).acquire("fp", limit=1, timeout_s=1)).release()
    await AccountLimits(c).take_rate("fp", limit_per_minute=5, timeout_s=1)
    sync = redis.Redis.from_url(redis_url)
    sync.script_flush()  # every EVALSHA now answers NOSCRIPT once: redis-py loads and retries
    sync.close()
    await (await AccountLimits(c).acquire("fp", limit=1, timeout_s=1)).release()
    await AccountLimits(c).take_rate("fp", limit_per_minute=5, timeout_s=1)
    await c.close()


@contextlib.asynccontextmanager
async def answering(error_line: bytes) -> AsyncIterator[str]:
    """A RESP endpoint that accepts redis-py's handshake (CLIENT SETINFO), then answers every
    command with `error_line`: the replies of a Redis Cluster without running one."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        parser = hiredis.Reader()
        while data := await reader.read(65536):
            parser.feed(data)
            while (command := parser.gets()) is not False:
                is_client = isinstance(command, list) and command[0].upper() == b"CLIENT"
                writer.write(b"+OK\r\n" if is_client else error_line + b"\r\n")
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.close()


@pytest.mark.parametrize(
    ("error_line", "reason"),
    [
        (b"-TRYAGAIN Multiple keys request during rehashing of slot", "moving this key's slot"),
        (b"-CLUSTERDOWN The cluster is down", "Cluster is down"),
        (
            b"-MISCONF Redis is configured to save RDB snapshots, but it's currently unable to "
            b"persist to disk.",
            "cannot save its snapshots",
        ),
    ],
)
async def test_cluster_and_persistence_refusals_fail_closed(error_line: bytes, reason: str) -> None:
    async with answering(error_line) as url:
        c = Coordinator(CoordinatorConfig(redis_url=url, replica_id="test"))
        with pytest.raises(CoordinationUnavailable) as raised:
            await AccountLimits(c).take_rate("fp", limit_per_minute=5, timeout_s=1)
        assert reason in raised.value.reason
        await c.close()


async def test_a_script_error_is_a_bug_and_surfaces_as_itself() -> None:
    async with answering(b"-ERR user_script:1: Script attempted to access a global") as url:
        c = Coordinator(CoordinatorConfig(redis_url=url, replica_id="test"))
        with pytest.raises(redis.exceptions.ResponseError) as raised:
            await AccountLimits(c).take_rate("fp", limit_per_minute=5, timeout_s=1)
        assert not isinstance(raised.value, CoordinationUnavailable)
        await c.close()


async def test_the_api_answers_a_full_redis_with_503_and_json(
    own_redis_server: RedisServer, simulator: SimulatorHandle
) -> None:
    mark_store_known(own_redis_server.url)
    async with running_api(settings_for(own_redis_server.url, simulator.base_url)) as api:
        sync = own_redis_server.sync_client()
        sync.config_set("maxmemory", 1)
        response = await api.post(
            "/global-semaphores", json={"semaphore_id": "full", "limit": 1}, headers=ADMIN
        )
        sync.config_set("maxmemory", 0)
        sync.close()
    assert response.status_code == 503
    assert response.headers["retry-after"]
    assert response.json()["error"]


@pytest.mark.parametrize(
    ("reply", "reason"),
    [
        ("OOM command not allowed when used memory > 'maxmemory'.", "out of memory"),
        ("READONLY You can't write against a read only replica.", "read-only replica"),
        ("MASTERDOWN Link with MASTER is down", "lost its link to the primary"),
        ("LOADING Redis is loading the dataset in memory", "loading its dataset"),
        ("BUSY Redis is busy running a script.", "busy running a long script"),
        ("NOREPLICAS Not enough good replicas to write.", "too few replicas"),
        ("MISCONF Redis is configured to save RDB snapshots", "cannot save its snapshots"),
        ("CLUSTERDOWN The cluster is down", "Cluster is down"),
        ("TRYAGAIN Multiple keys request during rehashing of slot", "moving this key's slot"),
        ("NOPERM this user has no permissions to run the 'evalsha' command", "ACL"),
        ("WRONGPASS invalid username-password pair", "credentials"),
        ("NOAUTH Authentication required.", "credentials"),
        ("ERR max number of clients reached", "maxclients"),
        ("ERR unknown command 'FOO'", None),
        ("WRONGTYPE Operation against a key holding the wrong kind of value", None),
        ("BUSYKEY Target key name already exists.", None),
    ],
)
def test_each_reply_as_redis_py_parses_it_maps_to_its_reason(
    reply: str, reason: str | None
) -> None:
    """The replies no single test server above produces (credentials, ACLs), and the rest
    again, as redis-py's parser turns them into exceptions."""
    mapped = unavailable(BaseParser.parse_error(reply))
    if reason is None:
        assert mapped is None  # a bug, not an outage: it propagates as itself
    else:
        assert mapped is not None and reason in mapped.reason
