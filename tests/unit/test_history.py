"""The dashboard's shared history (service/observability/history.py): records, their merge over
replicas, the keys on fakeredis, the sampler's bookkeeping, and one run on a real redis-server
(a real Coordinator; the memory a replica's 16 minutes of records take)."""

from __future__ import annotations

import itertools
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import fakeredis
import pytest
import redis.asyncio as aioredis

from service.coordination import GLOBAL, Coordinator, SemaphoreNotFound, SemaphoreView
from service.fingerprint import ACCOUNT
from service.limits import AccountLimits
from service.observability.history import (
    BUCKET_S,
    HISTORY_S,
    KEEP_S,
    MAX_ACCOUNTS,
    MAX_SEMAPHORES,
    WAIT_EDGES_S,
    HistorySampler,
    HistoryStore,
    Record,
    bucket_key,
    merge,
    quantile,
    wait_bucket,
)
from service.observability.metrics import Metrics

NOW_S = 1_800_000_003.5  # inside the bucket that starts at 1_800_000_000


def waits(**counts: int) -> list[int]:
    """A wait histogram from {"<edge index>": count}; "inf" for the last bucket."""
    found = [0] * (len(WAIT_EDGES_S) + 1)
    for index, count in counts.items():
        found[len(WAIT_EDGES_S) if index == "inf" else int(index.lstrip("b"))] = count
    return found


# -- pure logic ---------------------------------------------------------------------------------


def test_a_wait_goes_to_the_first_bucket_whose_upper_bound_holds_it() -> None:
    assert wait_bucket(0.0) == 0
    assert wait_bucket(0.001) == 0
    assert wait_bucket(0.0011) == 1
    assert wait_bucket(1.0) == WAIT_EDGES_S.index(1.0)
    assert wait_bucket(299.0) == len(WAIT_EDGES_S) - 1
    assert wait_bucket(301.0) == len(WAIT_EDGES_S)


def test_quantiles_interpolate_inside_their_bucket_like_histogram_quantile() -> None:
    assert quantile(0.5, waits()) is None
    # 10 waits in (0.5, 1.0]: p50 is halfway through the bucket, p99 near its top.
    ten = waits(b9=10)
    assert quantile(0.5, ten) == pytest.approx(0.75)
    assert quantile(0.99, ten) == pytest.approx(0.995)
    # 98 quick, 2 slow: p50 among the quick, p99 in the slow bucket.
    mixed = waits(b0=98, b12=2)
    assert quantile(0.5, mixed) == pytest.approx(0.001 * 50 / 98)
    assert quantile(0.99, mixed) == pytest.approx(5.0 + 5.0 * 1 / 2)
    # Above the last edge: that edge (an upper bound is unknown).
    assert quantile(0.99, waits(inf=3)) == WAIT_EDGES_S[-1]


def test_a_record_round_trips_compactly_and_malformed_ones_are_dropped() -> None:
    record = Record(
        span_s=9.96,
        gauges={"sem:gpu": [2, 1, 4], "acct:0123456789abcdef": [3, 0, 60]},
        admitted=[5, 7],
        throttled=2,
        waits=waits(b1=4, b9=8),
    )
    text = record.to_json()
    assert json.loads(text)["w"] == [0, 4, 0, 0, 0, 0, 0, 0, 0, 8]  # trailing zeros trimmed
    back = Record.from_json(text)
    assert back == Record(
        span_s=10.0,
        gauges=record.gauges,
        admitted=[5, 7],
        throttled=2,
        waits=waits(b1=4, b9=8),
    )
    for bad in ("", "nope", "[]", '{"g": [1]}', '{"a": "x"}', '{"g": {"sem:x": [1]}, "w": 3}'):
        assert Record.from_json(bad) is None, bad
    # Missing fields are zero; extra list items are ignored.
    assert Record.from_json('{"a": [1, 2, 3], "w": []}') == Record(admitted=[1, 2])


def test_merge_takes_the_highest_gauge_and_sums_each_replicas_counts() -> None:
    times = [0, 10, 20]
    a = Record(
        span_s=10,
        gauges={"sem:gpu": [2, 1, 4], "acct:aaaa": [1, 0, 60]},
        admitted=[3, 6],
        throttled=1,
        waits=waits(b0=6, b9=3),
    )
    b = Record(
        span_s=5,
        gauges={"sem:gpu": [3, 0, 4], "acct:bbbb": [2, 2, 60]},
        admitted=[1, 2],
        throttled=3,
        waits=waits(b0=2, b9=1),
    )
    later = Record(span_s=10, gauges={"sem:gpu": [0, 0, 8], "acct:aaaa": [0, 0, 60]})
    history = merge(BUCKET_S, times, [[a, b], [], [later]])

    assert history.replicas == [2, 0, 1]
    gpu, acct_a, acct_b = history.limits  # global semaphores first, then accounts
    assert (gpu.kind, gpu.semaphore_id) == (GLOBAL, "gpu")
    assert gpu.in_use == [3, None, 0]  # max over replicas (both read the same Redis)
    assert gpu.waiting == [1, None, 0]
    assert gpu.limit == 8  # the latest bucket's
    assert (acct_a.kind, acct_a.in_use) == (ACCOUNT, [1, None, 0])
    assert acct_b.in_use == [2, None, None]
    # Counts are each replica's own: summed, per minute over the longest span of the bucket.
    assert history.admitted_per_min["semaphore"] == [(3 + 1) * 6.0, None, 0.0]
    assert history.admitted_per_min["account"] == [(6 + 2) * 6.0, None, 0.0]
    assert history.throttled_per_min == [24.0, None, 0.0]
    # The waits' histograms are summed before the quantiles: 8 fast, 4 slow.
    assert history.wait_p50_s[0] == pytest.approx(round(0.001 * 6 / 8, 4))
    assert history.wait_p99_s[0] == pytest.approx(round(0.5 + 0.5 * (11.88 - 8) / 4, 4))
    assert history.wait_p50_s[1:] == [None, None]
    # Accounts, most recently seen first.
    assert history.accounts == ["aaaa", "bbbb"]


def test_a_short_span_does_not_inflate_a_rate() -> None:
    history = merge(BUCKET_S, [0], [[Record(span_s=0.01, admitted=[0, 1])]])
    assert history.admitted_per_min["account"] == [60.0]  # one admission in (at least) 1 s


# -- the keys, on fakeredis ---------------------------------------------------------------------


@pytest.fixture
async def fake() -> AsyncIterator[aioredis.Redis]:
    client = fakeredis.FakeAsyncRedis(server=fakeredis.FakeServer())
    try:
        yield client
    finally:
        await client.aclose()


async def test_a_record_lands_in_its_bucket_for_16_minutes_and_is_read_back(
    fake: aioredis.Redis,
) -> None:
    store = HistoryStore(fake, "rcg")
    bucket = store.bucket_of(NOW_S)
    assert bucket == 1_800_000_000
    await store.write(bucket, "api-1", Record(span_s=3, gauges={"sem:gpu": [1, 0, 2]}))
    await store.write(bucket, "api-2", Record(span_s=3, gauges={"sem:gpu": [2, 0, 2]}))
    key = bucket_key("rcg", bucket)
    assert key == "rcg:{history}:1800000000"
    assert 0 < await fake.ttl(key) <= KEEP_S
    assert KEEP_S >= HISTORY_S + BUCKET_S  # a bucket outlives the window it is shown in
    assert set(await fake.hkeys(key)) == {b"api-1", b"api-2"}

    history = await store.read(NOW_S)
    assert len(history.times) == HISTORY_S // BUCKET_S == 90
    assert history.times[-1] == bucket
    assert history.times[0] == bucket - 89 * BUCKET_S
    assert history.replicas[-1] == 2
    assert history.limits[0].in_use[-1] == 2
    assert history.limits[0].in_use[:-1] == [None] * 89


async def test_only_the_last_15_minutes_are_read_and_a_bad_field_is_skipped(
    fake: aioredis.Redis,
) -> None:
    store = HistoryStore(fake, "rcg")
    now_bucket = store.bucket_of(NOW_S)
    too_old = now_bucket - 90 * BUCKET_S
    await store.write(too_old, "api-1", Record(gauges={"sem:old": [1, 0, 1]}))
    await store.write(now_bucket - BUCKET_S, "api-1", Record(gauges={"sem:gpu": [1, 0, 2]}))
    await fake.hset(bucket_key("rcg", now_bucket), "garbage", "{not json")
    history = await store.read(NOW_S)
    assert [s.semaphore_id for s in history.limits] == ["gpu"]
    assert history.replicas[-1] == 0  # the garbage field counts as no record
    recent = await store.read(NOW_S, buckets=2)
    assert recent.times == [now_bucket - BUCKET_S, now_bucket]
    assert recent.limits[0].in_use == [1, None]


# -- the sampler, with a stand-in coordinator ---------------------------------------------------


@dataclass
class FakeLease:
    semaphore_id: str
    kind: str


class FakeRegistry:
    def __init__(self) -> None:
        self.views: dict[tuple[str, str], SemaphoreView] = {}
        self.listed: list[str] = []

    async def list(self) -> list[str]:
        return list(self.listed)

    async def view(self, semaphore_id: str, kind: str = GLOBAL) -> SemaphoreView:
        try:
            return self.views[(kind, semaphore_id)]
        except KeyError:
            raise SemaphoreNotFound(semaphore_id) from None


class FakeCoordinator:
    def __init__(self, client: aioredis.Redis) -> None:
        self.redis = client
        self.prefix = "rcg"
        self.replica_id = "api-1"
        self.on_acquired: list[Any] = []
        self.held: dict[str, FakeLease] = {}
        self.registry = FakeRegistry()

    def held_leases(self) -> list[FakeLease]:
        return list(self.held.values())


def sampler_for(coordinator: FakeCoordinator, metrics: Metrics | None = None) -> HistorySampler:
    return HistorySampler(coordinator, metrics)  # type: ignore[arg-type]


async def test_the_sampler_records_admissions_waits_429s_and_peaks(fake: aioredis.Redis) -> None:
    coordinator = FakeCoordinator(fake)
    metrics = Metrics(process_metrics=False)
    metrics.upstream_throttle("create")  # before the sampler: not this replica's history
    sampler = sampler_for(coordinator, metrics)
    assert coordinator.on_acquired == [sampler.observe_acquire]
    coordinator.registry.listed = ["gpu", "gone"]  # "gone" is deleted between list and view
    coordinator.registry.views[(GLOBAL, "gpu")] = SemaphoreView("gpu", limit=4, in_use=3, waiting=2)
    coordinator.registry.views[(ACCOUNT, "f00d")] = SemaphoreView("f00d", 60, in_use=1, waiting=0)

    for listener in coordinator.on_acquired:
        listener(FakeLease("gpu", GLOBAL), 0.0005)
        listener(FakeLease("f00d", ACCOUNT), 0.7)
        listener(FakeLease("f00d", ACCOUNT), 0.7)
    metrics.upstream_throttle("create")
    metrics.upstream_throttle("poll")
    await sampler.sample()
    # The gauges drop, one more admission: the record keeps the peak and adds the count.
    coordinator.registry.views[(GLOBAL, "gpu")] = SemaphoreView("gpu", limit=4, in_use=1, waiting=0)
    sampler.observe_acquire(FakeLease("gpu", GLOBAL), 0.0005)  # type: ignore[arg-type]
    await sampler.sample()

    history = await sampler.store.read()
    records = [
        Record.from_json(raw)
        for start in history.times[-2:]
        for raw in (await fake.hgetall(bucket_key("rcg", start))).values()
    ]
    total = Record()
    for record in records:
        assert record is not None
        total.admitted = [x + y for x, y in zip(total.admitted, record.admitted, strict=True)]
        total.throttled += record.throttled
        for key, gauge in record.gauges.items():
            total.peak(key, *gauge)
        total.waits = [x + y for x, y in zip(total.waits, record.waits, strict=True)]
    assert total.admitted == [2, 2]
    assert total.throttled == 2
    assert total.waits == waits(b0=2, b9=2)
    assert total.gauges == {"sem:gpu": [3, 2, 4], "acct:f00d": [1, 0, 60]}
    await sampler.close()
    assert coordinator.on_acquired == []


async def test_the_sampler_names_recent_and_held_accounts_within_its_caps(
    fake: aioredis.Redis,
) -> None:
    coordinator = FakeCoordinator(fake)
    sampler = sampler_for(coordinator)
    coordinator.registry.listed = [f"sem-{i:02d}" for i in range(MAX_SEMAPHORES + 5)]
    for name in coordinator.registry.listed:
        coordinator.registry.views[(GLOBAL, name)] = SemaphoreView(name, 1, 0, 0)
    for i in range(MAX_ACCOUNTS + 5):
        fp = f"{i:016x}"
        coordinator.registry.views[(ACCOUNT, fp)] = SemaphoreView(fp, 60, 0, 0)
        sampler.observe_acquire(FakeLease(fp, ACCOUNT), 0.0)  # type: ignore[arg-type]
    await sampler.sample()
    (record,) = [
        Record.from_json(raw)
        for raw in (
            await fake.hgetall(bucket_key("rcg", (await sampler.store.read()).times[-1]))
        ).values()
    ]
    assert record is not None
    accounts = [k for k in record.gauges if k.startswith("acct:")]
    semaphores = [k for k in record.gauges if k.startswith("sem:")]
    assert len(semaphores) == MAX_SEMAPHORES
    assert len(accounts) == MAX_ACCOUNTS
    assert "acct:" + f"{MAX_ACCOUNTS + 4:016x}" in accounts  # the most recent are kept
    assert "acct:" + f"{0:016x}" not in accounts


async def test_a_sample_without_redis_is_skipped_quietly() -> None:
    client = aioredis.Redis(port=1, socket_connect_timeout=0.2, socket_timeout=0.2)
    try:
        sampler = sampler_for(FakeCoordinator(client))
        await sampler.sample()  # no exception: the bucket is just missing
        await sampler.close()
    finally:
        await client.aclose()


# -- a real redis-server ------------------------------------------------------------------------


@pytest.mark.redis
async def test_a_real_coordinator_samples_its_limits_and_a_replica_stays_small(
    redis_url: str, redis_client: aioredis.Redis
) -> None:
    coordinator = await Coordinator.connect(redis_url, replica_id="api-1", lease_ttl_s=30.0)
    try:
        metrics = Metrics(process_metrics=False)
        sampler = HistorySampler(coordinator, metrics)
        await coordinator.registry.create("gpu", 2)
        leases = [await coordinator.acquire("gpu", timeout_s=1) for _ in range(2)]
        account = "0123456789abcdef"
        leases.append(await AccountLimits(coordinator).acquire(account, limit=3, timeout_s=1))
        await sampler.sample()
        history = await sampler.store.read()
        by_id = {s.semaphore_id: s for s in history.limits}
        assert by_id["gpu"].in_use[-1] == 2 and by_id["gpu"].limit == 2
        assert by_id[account].kind == ACCOUNT and by_id[account].in_use[-1] == 1
        assert by_id[account].limit == 3
        assert history.accounts == [account]
        assert sum(v or 0 for v in history.admitted_per_min["semaphore"]) > 0
        assert sum(v or 0 for v in history.admitted_per_min["account"]) > 0
        assert history.wait_p50_s[-1] is not None
        for lease in leases:
            await lease.release()
        await sampler.close()
    finally:
        await coordinator.close()

    # Memory: one replica's 16 minutes of records (96 buckets), typical (three limits) and at
    # the cap (32 limits, ids of the longest allowed 128 characters, large numbers), measured
    # with MEMORY USAGE. The 96 bucket keys' own overhead is shared by every replica.
    store = HistoryStore(redis_client, "mem")
    full = Record(
        span_s=10.0,
        gauges={f"sem:{'s' * 125}-{i:02d}": [9999, 9999, 99999] for i in range(MAX_SEMAPHORES)}
        | {f"acct:{i:016x}": [9999, 9999, 99999] for i in range(MAX_ACCOUNTS)},
        admitted=[99999, 99999],
        throttled=9999,
        waits=[99999] * (len(WAIT_EDGES_S) + 1),
    )
    typical = Record(
        span_s=10.0,
        gauges={"sem:image-generation-global": [4, 2, 10], "acct:0123456789abcdef": [3, 1, 60]}
        | {"acct:fedcba9876543210": [1, 0, 60]},
        admitted=[12, 30],
        throttled=1,
        waits=waits(b0=20, b3=5, b9=4, b10=1),
    )
    buckets = KEEP_S // BUCKET_S
    assert buckets == 96
    used = [0]
    for name, record in (("typical", typical), ("at-cap", full), ("typical-2", typical)):
        for i in range(buckets):
            await store.write(i * BUCKET_S, name, record)
        keys = [bucket_key("mem", i * BUCKET_S) for i in range(buckets)]
        used.append(sum([int(await redis_client.memory_usage(k, samples=0) or 0) for k in keys]))
    keys_and_first, at_cap, typical_replica = (b - a for a, b in itertools.pairwise(used))
    print(f"history memory per replica: typical {typical_replica} B, at the cap {at_cap} B")
    assert typical_replica < 30_000
    assert at_cap < 400_000
    assert keys_and_first - typical_replica < 20_000  # the keys themselves
