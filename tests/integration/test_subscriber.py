"""The wake subscription's connection (service.coordination.subscriber), on a real redis-server."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio as aioredis

from service.coordination import Coordinator
from service.coordination.subscriber import (
    PoolSubscriptionSource,
    Subscription,
    SubscriptionLost,
    literal_pattern,
    stay_subscribed,
)
from tests.fixtures.redis_server import RedisServer

pytestmark = pytest.mark.redis


async def open_subscription(
    url: str, patterns: list[str]
) -> tuple[aioredis.Redis, Subscription, list[bytes]]:
    client = aioredis.Redis.from_url(url)
    received: list[bytes] = []
    subscription = await Subscription.open(client.connection_pool, patterns, received.append, 2)
    return client, subscription, received


async def until(condition: object, timeout_s: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():  # type: ignore[operator]
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def until_no_pubsub_client(client: aioredis.Redis, timeout_s: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while clients := await client.client_list(_type="pubsub"):
        assert loop.time() < deadline, clients
        await asyncio.sleep(0.01)


async def test_messages_of_every_pattern_arrive_in_order(redis_url: str) -> None:
    client, subscription, received = await open_subscription(redis_url, ["a:*", "b"])
    await client.publish("a:1", "first")
    await client.publish("b", "second")
    await client.publish("c", "not subscribed")
    await client.publish("a:2", b"\xff third")
    await until(lambda: len(received) == 3)
    assert received == [b"first", b"second", b"\xff third"]
    subscription.close()
    await client.aclose()


async def test_a_killed_connection_ends_serve(redis_url: str, redis_client: aioredis.Redis) -> None:
    client, subscription, _ = await open_subscription(redis_url, ["a:*"])
    serving = asyncio.create_task(subscription.serve(health_check_s=5))
    await redis_client.client_kill_filter(_type="pubsub")
    with pytest.raises(SubscriptionLost):
        await asyncio.wait_for(serving, 2)
    await client.aclose()


async def test_a_silent_connection_is_given_up(own_redis_server: RedisServer) -> None:
    client, subscription, _ = await open_subscription(own_redis_server.url, ["a:*"])
    serving = asyncio.create_task(subscription.serve(health_check_s=0.2))
    await asyncio.sleep(0.5)
    assert not serving.done()  # PINGs answered: alive
    own_redis_server.sync_client().execute_command("CLIENT", "PAUSE", 1000, "ALL")
    with pytest.raises(SubscriptionLost, match="silent"):
        await asyncio.wait_for(serving, 1)
    await client.aclose()


async def test_an_event_loop_stall_alone_does_not_give_up_a_live_connection(
    redis_url: str,
) -> None:
    client, subscription, received = await open_subscription(redis_url, ["a:*"])
    serving = asyncio.create_task(subscription.serve(health_check_s=0.2))
    await asyncio.sleep(0.3)  # a PING is out
    time.sleep(0.7)  # the loop stalls for over three intervals; the PONG waits in the socket
    await asyncio.sleep(0.5)
    assert not serving.done()
    await client.publish("a:1", "still here")
    await until(lambda: received == [b"still here"])
    subscription.close()
    await client.aclose()


async def test_the_url_credentials_open_it_and_a_refused_pattern_raises(
    own_redis_server: RedisServer,
) -> None:
    admin = own_redis_server.sync_client()
    admin.execute_command("ACL", "SETUSER", "waker", "on", ">s3cret", "+@all", "~*", "&grants:*")
    base = own_redis_server.url.replace("redis://", "redis://waker:s3cret@")
    client, subscription, received = await open_subscription(base, ["grants:*"])
    await client.publish("grants:x", "hello")
    await until(lambda: received == [b"hello"])
    subscription.close()
    with pytest.raises(SubscriptionLost, match="refused"):
        await open_subscription(base, ["other:*"])
    await client.aclose()


async def test_a_failing_handler_wakes_every_waiter_and_keeps_the_subscription(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    c = await Coordinator.connect(redis_url, replica_id="t")
    wake = c.dispatcher.register("some-waiter")
    handled: list[str] = []

    def handle(data: str, *, local: bool = False) -> None:
        handled.append(data)
        if data == "boom":
            raise RuntimeError("bug")

    c.dispatcher.handle = handle  # type: ignore[method-assign]
    channel = f"{c.keyspace.channel_pattern.replace('*', 'x')}:{c.dispatcher.token}"
    await redis_client.publish(channel, "boom")
    await until(lambda: wake.is_set())
    await redis_client.publish(channel, "after")
    await until(lambda: handled == ["boom", "after"])
    assert c.dispatcher.reconnects == 0
    await c.close()


def test_messages_arrive_on_uvloop_as_the_service_runs(redis_server: RedisServer) -> None:
    # The service runs under uvicorn on uvloop, whose transports are not asyncio's: the handover
    # of redis-py's transport to the subscription must work there too.
    uvloop = pytest.importorskip("uvloop")

    async def scenario() -> list[bytes]:
        client, subscription, received = await open_subscription(redis_server.url, ["a:*"])
        await client.publish("a:1", "on uvloop")
        await until(lambda: received == [b"on uvloop"])
        assert isinstance(asyncio.get_running_loop(), uvloop.Loop)
        subscription.close()
        await client.aclose()
        return received

    assert uvloop.run(scenario()) == [b"on uvloop"]


# --- stay_subscribed, and one literal channel (Coordinator.subscribe) ---------------------------


async def test_stay_subscribed_comes_back_after_a_loss_and_says_so(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    received: list[bytes] = []
    events: list[str] = []
    task = asyncio.create_task(
        stay_subscribed(
            PoolSubscriptionSource(redis_client.connection_pool),
            ["s:*"],
            received.append,
            on_up=lambda: events.append("up"),
            on_down=lambda error: events.append(f"down {type(error).__name__}"),
        )
    )
    await until(lambda: events == ["up"])
    await redis_client.publish("s:1", "before")
    await until(lambda: received == [b"before"])
    await redis_client.client_kill_filter(_type="pubsub")
    await until(lambda: events == ["up", "down SubscriptionLost", "up"])
    await redis_client.publish("s:1", "after")
    await until(lambda: received == [b"before", b"after"])
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await until_no_pubsub_client(redis_client)  # cancelled: its connection is closed


async def test_stay_subscribed_retries_with_a_backoff_while_redis_is_away(
    own_redis_server: RedisServer,
) -> None:
    client = aioredis.Redis.from_url(own_redis_server.url)
    events: list[str] = []
    own_redis_server.stop()
    task = asyncio.create_task(
        stay_subscribed(
            PoolSubscriptionSource(client.connection_pool),
            ["s:*"],
            lambda data: None,
            on_up=lambda: events.append("up"),
            on_down=lambda error: events.append("down"),
        )
    )
    await asyncio.sleep(0.5)  # attempts after 0, 50, 150, 350 ms: 4, not hundreds
    assert 3 <= events.count("down") <= 5 and "up" not in events, events
    own_redis_server.start()
    await until(lambda: events[-1:] == ["up"], timeout_s=4)  # the backoff is at most 2 s
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await client.aclose()


def test_a_literal_pattern_escapes_every_glob_character() -> None:
    assert literal_pattern("rcg:replicate-webhooks") == "rcg:replicate-webhooks"
    assert literal_pattern("a*b?c[d]e\\f") == "a\\*b\\?c\\[d\\]e\\\\f"


async def test_coordinator_subscribe_follows_its_channel_and_no_other(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    c = await Coordinator.connect(redis_url, replica_id="t")
    channel = "rcg:literal-[ab]*?\\channel"
    received: list[bytes] = []
    ups: list[str] = []

    def handle(data: bytes) -> None:
        if data == b"boom":
            raise RuntimeError("a bug in the handler")
        received.append(data)

    subscription = c.subscribe(channel, handle, on_up=lambda: ups.append("up"))
    # The channel's name read as a pattern, for comparison: it matches the near misses, and
    # not the channel itself ("[ab]" is one character).
    naive_client, naive, as_pattern = await open_subscription(redis_url, [channel])
    assert await subscription.wait_connected(2)
    near_misses = ["rcg:literal-axychannel", "rcg:literal-bQchannel", "rcg:literal-a*?\\channel"]
    for near_miss in near_misses:
        await redis_client.publish(near_miss, near_miss)
    await redis_client.publish(channel, "boom")  # logged; the subscription goes on
    await redis_client.publish(channel, "exact")
    await until(lambda: received == [b"exact"])
    await until(lambda: len(as_pattern) == len(near_misses))
    await asyncio.sleep(0.1)
    assert as_pattern == [m.encode() for m in near_misses]
    assert received == [b"exact"]
    assert subscription.reconnects == 0 and ups == ["up"]
    assert c.dispatcher.reconnects == 0  # a connection of its own
    await c.close()
    assert subscription.closed and not subscription.connected
    naive.close()
    await naive_client.aclose()
    await until_no_pubsub_client(redis_client)
