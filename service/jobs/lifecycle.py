"""The jobs' part of the app's lifespan: build, start and stop `Jobs`, and their metrics.

jobs{status}                 gauge  jobs by status, read from Redis every 5 s (the newest
                                    5,000 jobs, all replicas: aggregate with max)
job_tasks_running            gauge  this replica's job tasks inside a limit or a prediction
job_tasks_unfinished         gauge  this replica's job tasks not finished (queued locally)
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from service.api import Services
from service.jobs.replicate_webhooks import PATH
from service.jobs.service import Jobs
from service.observability.metrics import Metrics


class JobsCollector(Collector):
    def __init__(self, jobs: Jobs) -> None:
        self._jobs = jobs

    def collect(self) -> Iterator[Metric]:
        by_status = GaugeMetricFamily(
            "jobs", "Durable jobs by status (newest 5000, all replicas)", labels=["status"]
        )
        for status, count in self._jobs.counts.items():
            by_status.add_metric([status], count)
        yield by_status
        running = GaugeMetricFamily(
            "job_tasks_running", "This replica's job tasks inside a limit wait or a prediction"
        )
        running.add_metric([], self._jobs.runner.running_tasks)
        yield running
        unfinished = GaugeMetricFamily(
            "job_tasks_unfinished", "This replica's job tasks not finished yet"
        )
        unfinished.add_metric([], self._jobs.runner.unfinished_tasks)
        yield unfinished


async def start_jobs(found: Services, metrics: Metrics) -> Jobs:
    settings = found.settings
    server_token = settings.replicate_api_token
    if settings.public_base_url and server_token is not None:
        found.upstream.enable_webhooks(
            settings.public_base_url.rstrip("/") + PATH, server_token.get_secret_value()
        )
    jobs = Jobs(settings, found.coordinator, found.generator, found.upstream)
    await jobs.start()
    collector = JobsCollector(jobs)
    metrics.registry.register(collector)
    jobs.on_close.append(lambda: metrics.registry.unregister(collector))
    return jobs


async def stop_jobs(jobs: Jobs | None) -> None:
    if jobs is not None:
        await jobs.close()
