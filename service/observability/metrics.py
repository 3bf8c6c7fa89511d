"""Prometheus metrics of one app, in a registry of its own (several apps may share a process).

    http_requests_total{route,method,status}          counter  (route = template, never the path)
    http_request_duration_seconds{route,method}       histogram
    http_requests_in_progress                         gauge
    generations_total{model,outcome}                  counter  (Generator.on_outcome)
    generation_duration_seconds{model}                histogram
    upstream_requests_total{kind}                     counter  create|poll|cancel|account|other
    upstream_throttled_total{kind}                    counter  (HTTP 429 from Replicate)
    semaphore_wait_seconds{scope}                     histogram scope: semaphore|account_concurrency
    leases_lost_total{scope}                          counter  (Coordinator.on_lost)
    limit_timeouts_total{scope}                       counter  (a 429 naming the limit it waited on)
    event_loop_lag_seconds                            histogram how late the loop ran a timer
    event_loop_lag_max_seconds                        gauge    largest lag in the last 60 s
    coordination_up                                   gauge    1 if Redis answered this scrape
    semaphore_limit{semaphore_id}                     gauge    ┐ read from Redis at scrape time,
    semaphore_in_use{semaphore_id}                    gauge    │ registered global semaphores
    semaphore_waiters{semaphore_id}                   gauge    │ only (at most MAX_SEMAPHORES)
    semaphore_leases_expired_reclaimed_total{...}     counter  │ expired leases purged by Redis
    semaphore_events_total{semaphore_id,event}        counter  ┘ acquired|timed_out|lost|...
    service_info{version,replica_id}                  gauge    1

Labels never carry tokens, account fingerprints or request data: routes are templates, models
and scopes come from fixed sets, semaphore ids are chosen by operators. Account semaphores are
therefore not exported one by one (their ids are fingerprints).

The semaphore gauges and `semaphore_*_total` come from Redis and are the same on every replica:
aggregate them with max(), not sum(). Every other series is this replica's own.

`GET /metrics` (`router`) serves the text exposition without authentication, as Prometheus
scrapers expect: it shows counts, route templates, model names and operator-chosen semaphore
ids, nothing about callers. Keep it on the internal network (do not route it through a public
ingress). The app keeps its Metrics in `app.state.metrics`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from service.coordination import GLOBAL, CoordinationError, Coordinator, Lease, SemaphoreView
from service.errors import Unavailable
from service.observability.loop_lag import RecentMax

log = logging.getLogger("service.observability")

CONTENT_TYPE = CONTENT_TYPE_LATEST
MAX_SEMAPHORES = 200
SCRAPE_REDIS_TIMEOUT_S = 1.0

HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
GENERATION_BUCKETS = (0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 900)
WAIT_BUCKETS = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
# From "unnoticeable" to "longer than a lease TTL" (LEASE_TTL_SECONDS, 30 s by default).
LOOP_LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
LIMIT_SCOPES = frozenset(
    {"semaphore", "account_concurrency", "account_rate", "account_poll_budget", "upstream"}
)
_SEMAPHORE_EVENTS = ("acquired", "timed_out", "lost", "force_released", "reasserted")


def lease_scope(lease: Lease) -> str:
    return "semaphore" if lease.kind == GLOBAL else "account_concurrency"


def upstream_kind(method: str, path: str) -> str:
    """Which Replicate call a request is, from its method and path (ids never become labels)."""
    parts = [p for p in path.split("/") if p]
    if parts and parts[0] == "v1":
        parts = parts[1:]
    if method == "POST" and parts and parts[-1] == "cancel":
        return "cancel"
    if method == "POST" and parts and parts[-1] == "predictions":
        return "create"
    if method == "GET" and len(parts) == 2 and parts[0] == "predictions":
        return "poll"
    if method == "GET" and parts == ["account"]:
        return "account"
    return "other"


_MAX_CHILDREN = 4096  # label values are from small sets; past this, look them up each time

K = TypeVar("K")
V = TypeVar("V")


def _remember(children: dict[K, V], key: K, child: V) -> None:
    if len(children) < _MAX_CHILDREN:
        children[key] = child


@dataclass
class _Snapshot:
    redis_up: bool = False
    views: list[SemaphoreView] = field(default_factory=list)


class SemaphoreCollector(Collector):
    """Yields the semaphore series from the last `refresh` (done just before each render)."""

    def __init__(self) -> None:
        self.snapshot = _Snapshot()
        self.refreshed = False

    def collect(self) -> Iterator[Metric]:
        snap = self.snapshot
        up = GaugeMetricFamily(
            "coordination_up", "1 if Redis answered the last metrics scrape, else 0"
        )
        up.add_metric([], 1.0 if snap.redis_up else 0.0)
        yield up
        limit = GaugeMetricFamily(
            "semaphore_limit", "Limit of a registered global semaphore", labels=["semaphore_id"]
        )
        in_use = GaugeMetricFamily(
            "semaphore_in_use", "Live leases of a global semaphore", labels=["semaphore_id"]
        )
        waiters = GaugeMetricFamily(
            "semaphore_waiters", "Waiters queued on a global semaphore", labels=["semaphore_id"]
        )
        reclaimed = CounterMetricFamily(
            "semaphore_leases_expired_reclaimed",
            "Leases that expired unrenewed and were reclaimed (Redis-side, all replicas)",
            labels=["semaphore_id"],
        )
        events = CounterMetricFamily(
            "semaphore_events",
            "Semaphore events counted in Redis (all replicas)",
            labels=["semaphore_id", "event"],
        )
        for view in snap.views:
            sid = [view.semaphore_id]
            limit.add_metric(sid, view.limit)
            in_use.add_metric(sid, view.in_use)
            waiters.add_metric(sid, view.waiting)
            reclaimed.add_metric(sid, view.counters.get("expired", 0))
            for event in _SEMAPHORE_EVENTS:
                events.add_metric([view.semaphore_id, event], view.counters.get(event, 0))
        yield from (limit, in_use, waiters, reclaimed, events)


class Metrics:
    """Every metric of one app. Methods are shaped to be hooked directly as listeners."""

    def __init__(self, *, process_metrics: bool = True) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.http_requests = Counter(
            "http_requests_total",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=r,
        )
        self.http_duration = Histogram(
            "http_request_duration_seconds",
            "HTTP request duration, until the response is complete",
            ["route", "method"],
            buckets=HTTP_BUCKETS,
            registry=r,
        )
        self.http_in_progress = Gauge(
            "http_requests_in_progress", "HTTP requests being served", registry=r
        )
        self.generations = Counter(
            "generations_total",
            "Generation tasks by model and outcome",
            ["model", "outcome"],
            registry=r,
        )
        self.generation_duration = Histogram(
            "generation_duration_seconds",
            "Generation task duration (limits, prediction, outputs)",
            ["model"],
            buckets=GENERATION_BUCKETS,
            registry=r,
        )
        self.upstream_requests = Counter(
            "upstream_requests_total",
            "HTTP requests sent to Replicate (every attempt, retries included)",
            ["kind"],
            registry=r,
        )
        self.upstream_throttled = Counter(
            "upstream_throttled_total", "Replicate answers with HTTP 429", ["kind"], registry=r
        )
        self.semaphore_wait = Histogram(
            "semaphore_wait_seconds",
            "Time from asking for a slot to holding it",
            ["scope"],
            buckets=WAIT_BUCKETS,
            registry=r,
        )
        self.leases_lost = Counter(
            "leases_lost_total",
            "Leases this replica held that expired before renewal (work was stopped)",
            ["scope"],
            registry=r,
        )
        self.orphans_settled = Counter(
            "orphans_settled_total",
            "Orphaned slots (their replica stopped renewing while the prediction could run) this "
            "replica adopted and gave back, by how: cancelled, ended (already terminal), "
            "waited_out (held until the prediction's hard deadline)",
            ["outcome"],
            registry=r,
        )
        self.orphan_settle_seconds = Histogram(
            "orphan_settle_seconds",
            "From a slot being orphaned to it being given back, for orphans this replica settled",
            buckets=(0.5, 1, 2, 5, 10, 30, 60, 300, 900, 1800),
            registry=r,
        )
        self.limit_timeouts = Counter(
            "limit_timeouts_total",
            "Requests refused after waiting too long on a limit (HTTP 429), by limit",
            ["scope"],
            registry=r,
        )
        self.loop_lag = Histogram(
            "event_loop_lag_seconds",
            "How late the event loop woke a timer (scheduling delay), sampled every 0.1 s; a "
            "stall longer than the lease TTL loses leases",
            buckets=LOOP_LAG_BUCKETS,
            registry=r,
        )
        self._recent_lag = RecentMax()
        self.loop_lag_max = Gauge(
            "event_loop_lag_max_seconds",
            "Largest event-loop lag sampled in the last 60 s",
            registry=r,
        )
        self.loop_lag_max.set_function(lambda: self._recent_lag.value(time.monotonic()))
        self.info = Gauge(
            "service_info",
            "Version and replica id of this process",
            ["version", "replica_id"],
            registry=r,
        )
        self.semaphores = SemaphoreCollector()
        r.register(self.semaphores)
        # The labelled children of the per-request series, by label values: `.labels()` costs
        # a lock and a few dict look-ups per call, several times per request.
        self._request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._generation_children: dict[tuple[str, str], tuple[Counter, Histogram]] = {}
        self._upstream_children: dict[str, Counter] = {}
        self._wait_children: dict[str, Histogram] = {}
        if process_metrics:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)

    # -- hooks ----------------------------------------------------------------------------

    def set_info(self, *, version: str, replica_id: str) -> None:
        self.info.labels(version=version, replica_id=replica_id).set(1)

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        key = (route, method, status)
        children = self._request_children.get(key)
        if children is None:
            label = method if method in _METHODS else "OTHER"
            children = (
                self.http_requests.labels(route=route, method=label, status=str(status)),
                self.http_duration.labels(route=route, method=label),
            )
            _remember(self._request_children, key, children)
        children[0].inc()
        children[1].observe(seconds)

    def observe_generation(self, model: str, outcome: str, seconds: float) -> None:
        """Generator.on_outcome listener: (model, outcome, seconds)."""
        key = (model, outcome)
        children = self._generation_children.get(key)
        if children is None:
            children = (
                self.generations.labels(model=model, outcome=outcome),
                self.generation_duration.labels(model=model),
            )
            _remember(self._generation_children, key, children)
        children[0].inc()
        children[1].observe(seconds)

    def upstream_request(self, kind: str) -> None:
        child = self._upstream_children.get(kind)
        if child is None:
            child = self.upstream_requests.labels(kind=kind)
            _remember(self._upstream_children, kind, child)
        child.inc()

    def upstream_throttle(self, kind: str) -> None:
        self.upstream_throttled.labels(kind=kind).inc()

    def observe_upstream_response(self, method: str, path: str, status: int) -> None:
        """One attempt sent to Replicate; `status` 0 when no response came (network error)."""
        kind = upstream_kind(method, path)
        self.upstream_request(kind)
        if status == 429:
            self.upstream_throttle(kind)

    def observe_acquire(self, lease: Lease, waited_s: float) -> None:
        """Coordinator.on_acquired listener."""
        scope = lease_scope(lease)
        child = self._wait_children.get(scope)
        if child is None:
            child = self.semaphore_wait.labels(scope=scope)
            _remember(self._wait_children, scope, child)
        child.observe(waited_s)

    def observe_lost(self, lease: Lease) -> None:
        """Coordinator.on_lost listener."""
        self.leases_lost.labels(scope=lease_scope(lease)).inc()

    def observe_orphan(self, outcome: str, seconds: float) -> None:
        """OrphanKeeper.on_settled listener."""
        self.orphans_settled.labels(outcome=outcome).inc()
        self.orphan_settle_seconds.observe(seconds)

    def observe_loop_lag(self, seconds: float) -> None:
        """LoopLagMonitor listener: one lag sample."""
        self.loop_lag.observe(seconds)
        self._recent_lag.add(time.monotonic(), seconds)

    def observe_limit_timeout(self, scope: str) -> None:
        self.limit_timeouts.labels(scope=scope if scope in LIMIT_SCOPES else "other").inc()

    # -- exposition -----------------------------------------------------------------------

    async def refresh(
        self, coordinator: Coordinator | None, timeout_s: float = SCRAPE_REDIS_TIMEOUT_S
    ) -> None:
        """Read the registered semaphores from Redis for the next render. Never raises: with
        Redis down or slow the semaphore series are left out and coordination_up is 0."""
        if coordinator is None:
            self.semaphores.snapshot = _Snapshot()
            return
        try:
            async with asyncio.timeout(timeout_s):
                ids = (await coordinator.registry.list())[:MAX_SEMAPHORES]
                found = await asyncio.gather(
                    # Counts and counters only: holders and waiters are never read here.
                    *(coordinator.registry.view(i) for i in ids),
                    return_exceptions=True,
                )
        except (TimeoutError, CoordinationError) as exc:
            log.debug("metrics: semaphores not read", extra={"error": type(exc).__name__})
            self.semaphores.snapshot = _Snapshot()
            return
        views = [v for v in found if isinstance(v, SemaphoreView)]
        self.semaphores.snapshot = _Snapshot(redis_up=True, views=views)

    def render(self) -> bytes:
        return generate_latest(self.registry)


router = APIRouter()


@router.get("/metrics")
async def metrics_endpoint(request: Request) -> Response:
    metrics = getattr(request.app.state, "metrics", None)
    if not isinstance(metrics, Metrics):
        raise Unavailable("Metrics are not enabled on this replica")
    services = getattr(request.app.state, "services", None)
    coordinator = getattr(services, "coordinator", None)
    await metrics.refresh(coordinator if isinstance(coordinator, Coordinator) else None)
    return Response(metrics.render(), media_type=CONTENT_TYPE)
