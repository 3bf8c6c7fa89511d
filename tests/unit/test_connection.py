"""The hiredis-packing connection sends exactly what redis-py's own packer sends; the clients
of each deployment (one server, a Cluster, Sentinel) are built as configured; the errors of a
Cluster or a failover fail closed with their reason."""

from __future__ import annotations

import os
from typing import Any, cast

import pytest
import redis.exceptions
from pydantic import ValidationError
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import Connection, SSLConnection
from redis.asyncio.sentinel import (
    MasterNotFoundError,
    SentinelConnectionPool,
    SentinelManagedSSLConnection,
)
from redis.exceptions import (
    ClusterDownError,
    ClusterError,
    DataError,
    MasterDownError,
    MaxConnectionsError,
    MovedError,
    ReadOnlyError,
    RedisClusterException,
    ResponseError,
    SlotNotCoveredError,
    TryAgainError,
)

from service.__main__ import describe_settings_error
from service.app import coordinator_config
from service.config import Settings
from service.coordination import CoordinationUnavailable, CoordinatorConfig
from service.coordination.connection import (
    BoundedConnectionPool,
    HiredisPackingConnection,
    HiredisSentinelConnection,
    RedisTopology,
    build_clients,
    options_from_environment,
    parse_sentinels,
)
from service.coordination.errors import CoordinationSaturated
from service.coordination.redis_errors import guarded, unavailable
from service.coordination.subscriber import ClusterSubscriptionSource, PoolSubscriptionSource

COMMANDS: list[tuple[Any, ...]] = [
    ("PING",),
    ("CLIENT SETINFO", "LIB-NAME", "redis-py"),
    (b"CONFIG GET", b"maxmemory"),
    ("EVALSHA", "a" * 40, 7, *[f"rcg:{{sem:ü}}:{k}" for k in range(7)], 30000, -1, "{}"),
    ("SET", b"\x00\xff binary", "x" * 100_000),
    ("ZADD", "k", 1.5, "m", 1e-7, "n", 12345678901234567890),
]


@pytest.mark.parametrize("args", COMMANDS)
def test_packed_bytes_match_redis_py(args: tuple[Any, ...]) -> None:
    ours = b"".join(HiredisPackingConnection().pack_command(*args))
    theirs = b"".join(Connection().pack_command(*args))
    assert ours == theirs


@pytest.mark.parametrize("bad", [None, True, object()])
def test_values_redis_py_refuses_are_refused(bad: object) -> None:
    with pytest.raises(DataError):
        Connection().pack_command("SET", "k", bad)
    with pytest.raises(DataError):
        HiredisPackingConnection().pack_command("SET", "k", bad)


def test_another_encoding_keeps_redis_pys_packer() -> None:
    latin = HiredisPackingConnection(encoding="latin-1")
    assert b"".join(latin.pack_command("SET", "k", "é")) == b"".join(
        Connection(encoding="latin-1").pack_command("SET", "k", "é")
    )


# --- Where Redis is: one server, a Cluster, Sentinel (no server needed) ------------------------


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("", ()),
        ("10.0.0.1:26379", (("10.0.0.1", 26379),)),
        (" a:1 , b:2 ,", (("a", 1), ("b", 2))),
        ("[::1]:26379", (("::1", 26379),)),
    ],
)
def test_sentinel_lists_are_parsed(text: str, parsed: tuple[tuple[str, int], ...]) -> None:
    assert parse_sentinels(text) == parsed


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("sentinel-a", "expected host:port"),
        (":26379", "expected host:port"),
        ("a:b", "must be an integer"),
        ("a:0", "between 1 and 65535"),
        ("redis://a:26379", "expected host:port"),
    ],
)
def test_bad_sentinel_lists_name_the_entry(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_sentinels(text)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"cluster": True, "sentinels": "a:1", "sentinel_master": "m"}, "not both"),
        ({"sentinels": "a:1"}, "sentinel_master"),
        ({"sentinel_master": "m"}, "no sentinels"),
        ({"redis_url": "unix:///tmp/r.sock", "cluster": True}, "redis:// or rediss://"),
        ({"redis_url": "redis://h:1/3", "cluster": True}, "only database 0"),
        ({"prefix": "app{x}"}, "must not contain"),
    ],
)
def test_coordinator_config_refuses_what_cannot_work(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CoordinatorConfig(**{"redis_url": "redis://h:1/0", **options})


def test_the_environment_describes_the_mode_for_the_cli() -> None:
    options = options_from_environment(
        {
            "REDIS_SENTINELS": "s1:26379,s2:26379",
            "REDIS_SENTINEL_MASTER": "primary",
            "REDIS_SENTINEL_PASSWORD": "pw",
        }
    )
    assert options["sentinels"] == (("s1", 26379), ("s2", 26379))
    assert (options["sentinel_master"], options["sentinel_password"]) == ("primary", "pw")
    assert options_from_environment({"REDIS_CLUSTER": "TRUE"})["cluster"] is True
    with pytest.raises(ValueError, match="REDIS_CLUSTER"):
        options_from_environment({"REDIS_CLUSTER": "maybe"})
    with pytest.raises(ValueError, match="REDIS_SENTINELS"):
        options_from_environment({"REDIS_SENTINELS": "nope"})


async def test_one_server_gets_the_bounded_hiredis_pool() -> None:
    clients = build_clients(
        RedisTopology("redis://u:p@h:1/2"), timeout_s=2, max_connections=7, pool_wait_s=1
    )
    try:
        pool = clients.commands.connection_pool
        assert isinstance(pool, BoundedConnectionPool)
        assert pool.connection_class is HiredisPackingConnection
        assert (pool.max_connections, pool.timeout) == (7, 1)
        assert isinstance(clients.subscription, PoolSubscriptionSource)
    finally:
        await clients.aclose()


async def test_a_timeout_is_not_retried_a_dead_connection_is() -> None:
    """A frozen Redis answers a caller's 503 after one REDIS_TIMEOUT_SECONDS per call, not two
    (measured with a SIGSTOPped server and a 1 s timeout: an acquire failed after 4.05 s with
    timeouts retried, 2.0 s without); a pooled connection that died is still retried once."""
    clients = build_clients(
        RedisTopology("redis://h:1/0"), timeout_s=2, max_connections=7, pool_wait_s=1
    )
    try:
        retry = clients.commands.connection_pool.connection_kwargs["retry"]
        assert retry._retries == 1
        assert retry._supported_errors == (redis.exceptions.ConnectionError,)
        assert not issubclass(redis.exceptions.TimeoutError, retry._supported_errors)
    finally:
        await clients.aclose()


async def test_a_cluster_gets_a_cluster_client_whose_nodes_pack_with_hiredis() -> None:
    clients = build_clients(
        RedisTopology("redis://app:secret@node-a:7000", cluster=True),
        timeout_s=2,
        max_connections=9,
        pool_wait_s=1,
    )
    try:
        cluster = clients.commands
        assert isinstance(cluster, RedisCluster)
        kwargs = cluster.get_connection_kwargs()
        assert kwargs["connection_class"] is HiredisPackingConnection
        assert (kwargs["username"], kwargs["password"]) == ("app", "secret")
        assert kwargs["max_connections"] == 9
        assert isinstance(clients.subscription, ClusterSubscriptionSource)
    finally:
        await clients.aclose()


async def test_a_tls_cluster_keeps_its_tls_connections() -> None:
    clients = build_clients(
        RedisTopology("rediss://node-a:7000", cluster=True),
        timeout_s=2,
        max_connections=9,
        pool_wait_s=1,
    )
    try:
        kwargs = cast(RedisCluster, clients.commands).get_connection_kwargs()
        assert kwargs["connection_class"] is SSLConnection
    finally:
        await clients.aclose()


@pytest.mark.parametrize("tls", [False, True])
async def test_sentinel_gets_a_bounded_pool_that_follows_the_primary(tls: bool) -> None:
    topology = RedisTopology(
        f"{'rediss' if tls else 'redis'}://app:secret@ignored/3",
        sentinels=(("s1", 26379), ("s2", 26380)),
        sentinel_master="primary",
        sentinel_username="watcher",
        sentinel_password="sentinel-secret",
    )
    clients = build_clients(topology, timeout_s=2, max_connections=5, pool_wait_s=1)
    try:
        pool = clients.commands.connection_pool
        assert isinstance(pool, BoundedConnectionPool)
        assert isinstance(pool, SentinelConnectionPool)
        assert pool.service_name == "primary"
        assert pool.max_connections == 5
        expected = SentinelManagedSSLConnection if tls else HiredisSentinelConnection
        assert pool.connection_class is expected
        kwargs = pool.connection_kwargs
        assert (kwargs["username"], kwargs["password"], kwargs["db"]) == ("app", "secret", 3)
        assert "host" not in kwargs
        assert clients.sentinel is not None
        sentinel_kwargs = clients.sentinel.sentinel_kwargs
        assert (sentinel_kwargs["username"], sentinel_kwargs["password"]) == (
            "watcher",
            "sentinel-secret",
        )
        assert sentinel_kwargs.get("ssl", False) is tls
        assert "sentinel-secret" not in repr(topology)
    finally:
        await clients.aclose()


# --- Cluster and failover errors fail closed, each with its reason ------------------------------


class _Node:
    max_connections = 12


def _max_connections() -> MaxConnectionsError:
    exc = MaxConnectionsError()
    exc.connection = _Node()  # type: ignore[attr-defined]  # as the cluster client sets it
    return exc


@pytest.mark.parametrize(
    ("exc", "reason"),
    [
        (ClusterError("TTL exhausted."), "Redis Cluster kept redirecting"),
        (ClusterDownError("The cluster is down"), "Redis Cluster is down"),
        (TryAgainError("Multiple keys request during rehashing"), "moving this key's slot"),
        (MovedError("3999 127.0.0.1:6381"), "set REDIS_CLUSTER=true"),
        (SlotNotCoveredError("Slot 12 not covered"), "slots no node serves"),
        (
            RedisClusterException("Redis Cluster cannot be connected. Please provide ..."),
            "Redis Cluster is unreachable",
        ),
        (RedisClusterException("All slots are not covered after ..."), "slots no node serves"),
        (MasterNotFoundError("No master found for 'p'"), "Redis Sentinel names no reachable"),
        (
            redis.exceptions.ConnectionError("The previous master is now a slave"),
            "demoted by a failover",
        ),
        (ReadOnlyError("You can't write against a read only replica."), "read-only replica"),
        (MasterDownError("Link with MASTER is down"), "lost its link to the primary"),
        (ResponseError("NOREPLICAS Not enough good replicas to write."), "too few replicas"),
    ],
)
def test_cluster_and_failover_errors_fail_closed_with_their_reason(
    exc: Exception, reason: str
) -> None:
    mapped = unavailable(exc)
    assert mapped is not None and reason in mapped.reason


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        (
            "Error 111 connecting to 10.0.0.5:6379. Connection refused.",
            "Redis is unreachable at 10.0.0.5:6379",
        ),
        (
            "Error -2 connecting to redis-a.internal:6380. Name or service not known.",
            "Redis is unreachable at redis-a.internal:6380",
        ),
        ("Connection closed by server.", "Redis is unreachable"),
    ],
)
def test_unreachable_names_the_server_but_never_a_password(message: str, reason: str) -> None:
    mapped = unavailable(redis.exceptions.ConnectionError(message))
    assert mapped is not None and mapped.reason == reason
    timed_out = unavailable(redis.exceptions.TimeoutError("Timeout reading from 10.0.0.5:6379"))
    assert timed_out is not None
    assert timed_out.reason == "Redis did not answer in time (10.0.0.5:6379)"


async def test_an_unreachable_server_is_named_by_its_address_only() -> None:
    """A refused connect through the client, with a password in the URL: the reason names the
    host and port the client tried, and nothing of the URL's credentials."""
    from tests.fixtures.ports import free_port

    port = free_port()
    clients = build_clients(
        RedisTopology(url=f"redis://app:s3cret@127.0.0.1:{port}/0"),
        timeout_s=0.5,
        max_connections=2,
        pool_wait_s=0.5,
    )
    try:
        with pytest.raises(CoordinationUnavailable) as raised:
            await guarded(clients.commands.ping())
    finally:
        await clients.aclose()
    assert raised.value.reason == f"Redis is unreachable at 127.0.0.1:{port}"
    assert "s3cret" not in str(raised.value) and "s3cret" not in raised.value.detail


def test_a_cluster_nodes_busy_connections_are_saturation() -> None:
    mapped = unavailable(_max_connections())
    assert isinstance(mapped, CoordinationSaturated)
    assert mapped.max_connections == 12


@pytest.mark.parametrize(
    "exc",
    [
        RedisClusterException("EVALSHA - all keys must map to the same key slot"),
        RedisClusterException("No way to dispatch this command to Redis Cluster. Missing key."),
        ResponseError("CROSSSLOT Keys in request don't hash to the same slot"),
    ],
)
def test_cluster_errors_that_are_bugs_surface_as_themselves(exc: Exception) -> None:
    assert unavailable(exc) is None


async def test_guarded_maps_the_cluster_clients_own_exceptions() -> None:
    async def fails() -> None:
        raise RedisClusterException("Redis Cluster cannot be connected. Please provide ...")

    with pytest.raises(CoordinationUnavailable, match="Redis Cluster is unreachable"):
        await guarded(fails())


# --- The service's variables ---------------------------------------------------------------------


def _settings_error(monkeypatch: pytest.MonkeyPatch, env: dict[str, str]) -> str:
    for name in list(os.environ):
        if name.startswith("REDIS_"):
            monkeypatch.delenv(name)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as caught:
        Settings()
    return describe_settings_error(caught.value)


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"REDIS_KEY_PREFIX": "app{1}"}, "REDIS_KEY_PREFIX: must not contain {"),
        ({"REDIS_CLUSTER": "true"}, "REDIS_CLUSTER: REDIS_CLUSTER=true needs"),
        (
            {"REDIS_CLUSTER": "true", "REDIS_URL": "redis://h:7000/2"},
            "REDIS_CLUSTER: a Redis Cluster has only database 0",
        ),
        ({"REDIS_SENTINELS": "s1"}, "REDIS_SENTINELS: expected host:port"),
        (
            {"REDIS_SENTINELS": "s1:26379"},
            "REDIS_SENTINEL_MASTER: required with REDIS_SENTINELS",
        ),
        (
            {"REDIS_SENTINEL_MASTER": "primary"},
            "REDIS_SENTINEL_MASTER: needs REDIS_SENTINELS",
        ),
        (
            {
                "REDIS_URL": "redis://h:7000",
                "REDIS_CLUSTER": "true",
                "REDIS_SENTINELS": "s1:26379",
                "REDIS_SENTINEL_MASTER": "primary",
            },
            "REDIS_SENTINELS: set either REDIS_SENTINELS or REDIS_CLUSTER=true",
        ),
    ],
)
def test_bad_redis_settings_stop_the_service_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str
) -> None:
    # (with or without pydantic's "Value error, " in front of the message)
    assert expected in _settings_error(monkeypatch, env).replace("Value error, ", "")


def test_sentinel_settings_reach_the_coordinator_config(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("REDIS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("REDIS_SENTINELS", "s1:26379, s2:26379")
    monkeypatch.setenv("REDIS_SENTINEL_MASTER", "primary")
    monkeypatch.setenv("REDIS_SENTINEL_PASSWORD", "sentinel-secret")
    settings = Settings()
    # REDIS_URL names no server under Sentinel; set, it would carry the primary's credentials.
    assert settings.redis_url == "redis://"
    config = coordinator_config(settings)
    assert config.topology.mode == "sentinel"
    assert config.topology.sentinels == (("s1", 26379), ("s2", 26379))
    assert config.sentinel_password == "sentinel-secret"
    assert "sentinel-secret" not in repr(config)


def test_cluster_settings_reach_the_coordinator_config(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("REDIS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("REDIS_URL", "rediss://app:pw@node-a:7000")
    monkeypatch.setenv("REDIS_CLUSTER", "true")
    config = coordinator_config(Settings())
    assert config.topology.mode == "cluster"
    assert config.redis_url == "rediss://app:pw@node-a:7000"


def test_the_sentinel_password_is_a_secret_of_the_logs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Masked in every log line (service.__main__.configure_logging), and never echoed by a
    configuration error."""
    from service import __main__ as main
    from service.observability import logs

    for name in list(os.environ):
        if name.startswith("REDIS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("REDIS_SENTINELS", "s1:26379")
    monkeypatch.setenv("REDIS_SENTINEL_MASTER", "primary")
    monkeypatch.setenv("REDIS_SENTINEL_PASSWORD", "sentinel-secret-42")
    seen: dict[str, Any] = {}
    monkeypatch.setattr(logs, "configure_logging", lambda *a, **kw: seen.update(kw))
    main.configure_logging(Settings())
    assert "sentinel-secret-42" in seen["known_secrets"]
    assert "REDIS_SENTINEL_PASSWORD" in main._SECRET_VARIABLES
