"""The dashboard's last 15 minutes, kept in Redis so that every replica draws the same charts.

Every replica samples every INTERVAL_S (2 s) and keeps one record per 10 s bucket, rewritten in
place while the bucket fills (so the charts are at most one interval behind):

    rcg:{history}:<bucket start, Unix s of the Redis clock>      hash, TTL KEEP_S (960 s)
        <replica id> → {"s": seconds covered,
                        "g": {"sem:<id>" | "acct:<fp>": [in use, waiting, limit]},
                        "a": [semaphore admissions, account admissions],
                        "t": upstream 429s,
                        "w": [admissions per wait bucket, WAIT_EDGES_S then +Inf]}

What a record holds, and how reading merges the replicas' records of one bucket:

- `g`, gauges: each limit's slots in use and waiters, the highest this replica read from Redis
  during the bucket. Every replica reads the same Redis, so they are merged with max (as
  /metrics' semaphore gauges are aggregated with max, not sum). Registered global semaphores
  (at most MAX_SEMAPHORES) and the accounts this replica admitted in the last 15 minutes or
  holds now (at most MAX_ACCOUNTS, the most recent): an account appears on the dashboard once
  some replica admitted it.
- `a`, `t`, `w`: this replica's own admissions (Coordinator.on_acquired, by scope), the 429s
  Replicate sent it (the upstream_throttled_total counter) and its admissions' waits in
  buckets: summed over replicas. Rates are per minute over the seconds the bucket's records
  cover; p50 and p99 interpolate linearly inside the merged wait buckets (as Prometheus'
  histogram_quantile does), so they are exact to a bucket.

Memory, per replica: KEEP_S / BUCKET_S = 96 fields of one record each: ≈ 22 KB with three
limits (a 170-byte record), at most ≈ 350 KB at the cap (32 limits whose ids all have the
longest allowed 128 characters: a 3.3 KB record), plus ≈ 15 KB for the 96 bucket keys, shared by
all replicas (tests/unit/test_history.py measures it with MEMORY USAGE on a real redis-server).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import redis.asyncio as aioredis

from service.coordination import (
    GLOBAL,
    CoordinationError,
    Coordinator,
    Lease,
    SemaphoreNotFound,
    SemaphoreView,
    guarded,
)
from service.fingerprint import ACCOUNT
from service.observability.metrics import Metrics

log = logging.getLogger("service.observability.history")

BUCKET_S = 10
HISTORY_S = 15 * 60
KEEP_S = HISTORY_S + 60  # a bucket written at its end stays readable for the whole 15 minutes
INTERVAL_S = 2.0
READ_TIMEOUT_S = 2.0
CLOSE_TIMEOUT_S = 0.5
MAX_SEMAPHORES = 16
MAX_ACCOUNTS = 16
# Upper bounds (seconds) of the wait buckets, 1-2-5 steps up to QUEUE_TIMEOUT_SECONDS' default.
WAIT_EDGES_S = (
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5,
    1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
SCOPES = ("semaphore", "account")


def bucket_key(prefix: str, bucket_start_s: int) -> str:
    return f"{prefix}:{{history}}:{bucket_start_s}"


def limit_key(kind: str, semaphore_id: str) -> str:
    return f"{kind}:{semaphore_id}"


def wait_bucket(seconds: float) -> int:
    for index, edge in enumerate(WAIT_EDGES_S):
        if seconds <= edge:
            return index
    return len(WAIT_EDGES_S)


def quantile(q: float, counts: Sequence[int]) -> float | None:
    """The q-quantile of waits counted in WAIT_EDGES_S buckets (+Inf last), interpolated
    linearly inside its bucket; None when nothing was counted. Above the last edge: that edge."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q * total
    seen = 0
    for index, count in enumerate(counts):
        if count and seen + count >= rank:
            if index >= len(WAIT_EDGES_S):
                return WAIT_EDGES_S[-1]
            low = WAIT_EDGES_S[index - 1] if index else 0.0
            high = WAIT_EDGES_S[index]
            return low + (high - low) * max(0.0, rank - seen) / count
        seen += count
    return WAIT_EDGES_S[-1]


@dataclass
class Record:
    """One replica's record of one bucket (see the module docstring for the fields)."""

    span_s: float = 0.0
    gauges: dict[str, list[int]] = field(default_factory=dict)
    admitted: list[int] = field(default_factory=lambda: [0, 0])
    throttled: int = 0
    waits: list[int] = field(default_factory=lambda: [0] * (len(WAIT_EDGES_S) + 1))

    def peak(self, key: str, in_use: int, waiting: int, limit: int) -> None:
        old = self.gauges.get(key)
        if old is None:
            self.gauges[key] = [in_use, waiting, limit]
        else:
            self.gauges[key] = [max(old[0], in_use), max(old[1], waiting), limit]

    def to_json(self) -> str:
        waits = list(self.waits)
        while waits and waits[-1] == 0:
            waits.pop()
        return json.dumps(
            {
                "s": round(self.span_s, 1),
                "g": self.gauges,
                "a": self.admitted,
                "t": self.throttled,
                "w": waits,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Record | None:
        """None for anything malformed (a record is only ever advisory)."""
        try:
            raw = json.loads(text)
            gauges = {str(k): _ints(v, 3) for k, v in dict(raw.get("g", {})).items()}
            return cls(
                span_s=float(raw.get("s", 0)),
                gauges=gauges,
                admitted=_ints(raw.get("a", []), len(SCOPES)),
                throttled=int(raw.get("t", 0)),
                waits=_ints(raw.get("w", []), len(WAIT_EDGES_S) + 1),
            )
        except (ValueError, TypeError, AttributeError):
            return None


def _ints(values: object, size: int) -> list[int]:
    """Exactly `size` non-negative integers: missing ones are 0, extra ones dropped."""
    if not isinstance(values, list):
        raise TypeError("expected a list")
    found = [max(0, int(v)) for v in values[:size]]
    return found + [0] * (size - len(found))


@dataclass
class LimitSeries:
    kind: str  # GLOBAL or ACCOUNT
    semaphore_id: str
    limit: int | None = None
    in_use: list[int | None] = field(default_factory=list)
    waiting: list[int | None] = field(default_factory=list)
    last_seen: int = -1  # index of the last bucket with a value


@dataclass
class History:
    """The merged last 15 minutes: one value per bucket (None where no replica wrote one)."""

    bucket_s: int
    times: list[int]  # bucket starts, Unix s (Redis clock)
    replicas: list[int]  # how many replicas wrote each bucket
    limits: list[LimitSeries]
    admitted_per_min: dict[str, list[float | None]]  # by scope: semaphore, account
    throttled_per_min: list[float | None]
    wait_p50_s: list[float | None]
    wait_p99_s: list[float | None]

    @property
    def accounts(self) -> list[str]:
        """Account fingerprints seen in the window, most recently seen first."""
        found = [s for s in self.limits if s.kind == ACCOUNT]
        return [s.semaphore_id for s in sorted(found, key=lambda s: -s.last_seen)]


def merge(bucket_s: int, times: list[int], buckets: Sequence[Iterable[Record]]) -> History:
    """Records per bucket (any number of replicas each) → one History."""
    limits: dict[str, LimitSeries] = {}
    size = len(times)
    replicas: list[int] = []
    admitted: dict[str, list[float | None]] = {scope: [] for scope in SCOPES}
    throttled: list[float | None] = []
    p50: list[float | None] = []
    p99: list[float | None] = []
    for index, records in enumerate(buckets):
        records = list(records)
        replicas.append(len(records))
        if not records:
            for rates in admitted.values():
                rates.append(None)
            throttled.append(None)
            p50.append(None)
            p99.append(None)
            continue
        span_s = max(1.0, max(r.span_s for r in records))
        for scope_index, scope in enumerate(SCOPES):
            count = sum(r.admitted[scope_index] for r in records)
            admitted[scope].append(round(count * 60 / span_s, 2))
        throttled.append(round(sum(r.throttled for r in records) * 60 / span_s, 2))
        waits = [sum(column) for column in zip(*(r.waits for r in records), strict=True)]
        p50.append(_rounded(quantile(0.5, waits)))
        p99.append(_rounded(quantile(0.99, waits)))
        for record in records:
            for key, (in_use, waiting, limit) in record.gauges.items():
                kind, _, semaphore_id = key.partition(":")
                if kind not in (GLOBAL, ACCOUNT) or not semaphore_id:
                    continue
                series = limits.get(key)
                if series is None:
                    series = limits[key] = LimitSeries(
                        kind, semaphore_id, in_use=[None] * size, waiting=[None] * size
                    )
                series.in_use[index] = max(series.in_use[index] or 0, in_use)
                series.waiting[index] = max(series.waiting[index] or 0, waiting)
                # The limit now: the latest bucket's (the highest, if replicas disagree).
                latest = index > series.last_seen
                series.limit = limit if latest else max(series.limit or 0, limit)
                series.last_seen = index
    ordered = sorted(limits.values(), key=lambda s: (s.kind != GLOBAL, s.semaphore_id))
    return History(bucket_s, times, replicas, ordered, admitted, throttled, p50, p99)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


class HistoryStore:
    """Writes one replica's records and reads everyone's, in the keys above."""

    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str,
        *,
        bucket_s: int = BUCKET_S,
        history_s: int = HISTORY_S,
        keep_s: int = KEEP_S,
    ) -> None:
        self._client = client
        self.prefix = prefix
        self.bucket_s = bucket_s
        self.buckets = history_s // bucket_s
        self.keep_s = keep_s

    def bucket_of(self, now_s: float) -> int:
        return int(now_s // self.bucket_s) * self.bucket_s

    async def now_s(self) -> float:
        seconds, micros = await guarded(self._client.time())
        return int(seconds) + int(micros) / 1e6

    async def write(self, bucket_start_s: int, replica_id: str, record: Record) -> None:
        key = bucket_key(self.prefix, bucket_start_s)
        pipe = self._client.pipeline(transaction=False)
        pipe.hset(key, replica_id, record.to_json())
        pipe.expire(key, self.keep_s)
        await guarded(pipe.execute())

    async def read(self, now_s: float | None = None, *, buckets: int | None = None) -> History:
        """The last `buckets` buckets (all 15 minutes by default), the current one last."""
        if now_s is None:
            now_s = await self.now_s()
        last = self.bucket_of(now_s)
        count = self.buckets if buckets is None else max(1, min(buckets, self.buckets))
        times = [last - (count - 1 - i) * self.bucket_s for i in range(count)]
        pipe = self._client.pipeline(transaction=False)
        for start in times:
            pipe.hgetall(bucket_key(self.prefix, start))
        replies = await guarded(pipe.execute())
        records = [
            [r for r in (Record.from_json(v) for v in reply.values()) if r is not None]
            for reply in replies
        ]
        return merge(self.bucket_s, times, records)


class HistorySampler:
    """Samples this replica into the shared history every `interval_s`, in the background.

    sampler = HistorySampler(coordinator, metrics); sampler.start()  ...  await sampler.close()

    Listens to the coordinator's acquisitions (admissions, waits, accounts seen) and reads
    429s from `metrics`. Never raises out of a sample: without Redis the bucket is skipped."""

    def __init__(
        self,
        coordinator: Coordinator,
        metrics: Metrics | None = None,
        *,
        interval_s: float = INTERVAL_S,
        store: HistoryStore | None = None,
    ) -> None:
        self._coordinator = coordinator
        self._metrics = metrics
        self.interval_s = interval_s
        self.store = store or HistoryStore(coordinator.redis, coordinator.prefix)
        self._accounts: OrderedDict[str, float] = OrderedDict()  # fingerprint → monotonic seen
        self._fresh = Record()  # events since the last sample
        self._record = Record()
        self._bucket: int | None = None
        self._record_started = self._last_sample = time.monotonic()
        self._throttled_seen = self._throttled_total()
        self._task: asyncio.Task[None] | None = None
        coordinator.on_acquired.append(self.observe_acquire)

    # -- listening ------------------------------------------------------------------------

    def observe_acquire(self, lease: Lease, waited_s: float) -> None:
        """Coordinator.on_acquired listener."""
        self._fresh.admitted[0 if lease.kind == GLOBAL else 1] += 1
        self._fresh.waits[wait_bucket(waited_s)] += 1
        if lease.kind == ACCOUNT:
            self._seen(lease.semaphore_id)

    def _seen(self, account: str) -> None:
        self._accounts[account] = time.monotonic()
        self._accounts.move_to_end(account)
        while len(self._accounts) > MAX_ACCOUNTS:
            self._accounts.popitem(last=False)

    def _throttled_total(self) -> int:
        if self._metrics is None:
            return 0
        return int(
            sum(
                s.value
                for family in self._metrics.upstream_throttled.collect()
                for s in family.samples
                if s.name.endswith("_total")
            )
        )

    # -- sampling -------------------------------------------------------------------------

    async def sample(self) -> None:
        """Read the gauges, fold in what happened since the last sample, write the bucket."""
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                now_s = await self.store.now_s()
                views = await self._views()
        except (TimeoutError, CoordinationError) as exc:
            log.debug("history: sample skipped", extra={"error": type(exc).__name__})
            return
        now = time.monotonic()
        bucket = self.store.bucket_of(now_s)
        if bucket != self._bucket:
            # What happened since the previous sample goes to the new bucket, which covers it.
            self._bucket = bucket
            self._record = Record()
            self._record_started = self._last_sample
        fresh, self._fresh = self._fresh, Record()
        record = self._record
        record.admitted = [a + b for a, b in zip(record.admitted, fresh.admitted, strict=True)]
        record.waits = [a + b for a, b in zip(record.waits, fresh.waits, strict=True)]
        throttled = self._throttled_total()
        record.throttled += max(0, throttled - self._throttled_seen)
        self._throttled_seen = throttled
        for kind, view in views:
            record.peak(limit_key(kind, view.semaphore_id), view.in_use, view.waiting, view.limit)
        record.span_s = now - self._record_started
        self._last_sample = now
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                await self.store.write(bucket, self._coordinator.replica_id, record)
        except (TimeoutError, CoordinationError) as exc:
            log.debug("history: sample not written", extra={"error": type(exc).__name__})

    async def _views(self) -> list[tuple[str, SemaphoreView]]:
        ids = (await self._coordinator.registry.list())[:MAX_SEMAPHORES]
        cutoff = time.monotonic() - HISTORY_S
        for account, seen in list(self._accounts.items()):
            if seen < cutoff:
                del self._accounts[account]
        for lease in list(self._coordinator.held_leases()):
            if lease.kind == ACCOUNT and lease.semaphore_id not in self._accounts:
                self._seen(lease.semaphore_id)
        wanted = [(GLOBAL, i) for i in ids] + [(ACCOUNT, a) for a in reversed(self._accounts)]
        found = await asyncio.gather(
            *(self._coordinator.registry.view(i, kind) for kind, i in wanted),
            return_exceptions=True,
        )
        for result in found:
            # A semaphore deleted (or an account's keys expired) since it was listed: skip it.
            if isinstance(result, BaseException) and not isinstance(result, SemaphoreNotFound):
                raise result
        return [
            (kind, view)
            for (kind, _), view in zip(wanted, found, strict=True)
            if isinstance(view, SemaphoreView)
        ]

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="history-sampler")

    async def _run(self) -> None:
        while True:
            try:
                await self.sample()
            except Exception:  # a bug here must never take the replica down
                log.exception("history: sample failed")
            await asyncio.sleep(self.interval_s)

    async def close(self) -> None:
        """Stop sampling, after one last sample (bounded), and stop listening."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            # The last moments' events; bounded, so that shutdown never waits on a slow Redis.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(CLOSE_TIMEOUT_S):
                    await self.sample()
        with contextlib.suppress(ValueError):
            self._coordinator.on_acquired.remove(self.observe_acquire)
