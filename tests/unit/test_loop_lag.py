"""The event-loop lag monitor (issue 11, item 2): samples, the metric, the stall warning.

Time is injected: a fake sleep advances a fake clock by as much as the test says the loop was
late, so nothing here depends on how fast the machine is.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from service.observability.loop_lag import LoopLagMonitor, RecentMax
from service.observability.metrics import Metrics


class FakeTime:
    """`sleep(s)` returns at once, having moved the clock by s plus the next planned lag."""

    def __init__(self, lags_s: list[float]) -> None:
        self.now = 1000.0
        self.lags_s = list(lags_s)

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        if not self.lags_s:
            raise asyncio.CancelledError  # the end of the plan: stop the monitor's loop
        self.now += seconds + self.lags_s.pop(0)


async def run_plan(lags_s: list[float], **kwargs: float) -> list[float]:
    samples: list[float] = []
    fake = FakeTime(lags_s)
    monitor = LoopLagMonitor(samples.append, clock=fake.clock, sleep=fake.sleep, **kwargs)
    with pytest.raises(asyncio.CancelledError):
        await monitor._run()
    return samples


async def test_each_sleep_gives_one_lag_sample() -> None:
    samples = await run_plan([0.0, 0.25, 0.003])
    assert samples == pytest.approx([0.0, 0.25, 0.003])


async def test_a_stall_over_the_threshold_is_logged_with_its_length(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="service.observability.loop_lag"):
        await run_plan([0.2, 2.5, 0.9], warn_after_s=1.0)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert warnings[0].getMessage().startswith("event loop stalled for 2.50 s")
    assert warnings[0].__dict__["stall_s"] == 2.5


async def test_a_failing_listener_does_not_stop_the_monitor(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen: list[float] = []

    def listener(lag_s: float) -> None:
        seen.append(lag_s)
        raise RuntimeError("broken listener")

    fake = FakeTime([0.1, 0.2])
    monitor = LoopLagMonitor(listener, clock=fake.clock, sleep=fake.sleep)
    with pytest.raises(asyncio.CancelledError):
        await monitor._run()
    assert seen == pytest.approx([0.1, 0.2])
    assert [r.getMessage() for r in caplog.records] == ["loop lag listener failed"] * 2


def test_recent_max_forgets_old_values() -> None:
    recent = RecentMax(window_s=60)
    assert recent.value(0) == 0.0
    recent.add(0, 3.0)
    recent.add(10, 1.0)
    recent.add(20, 2.0)
    assert recent.value(30) == 3.0
    assert recent.value(65) == 2.0  # 3.0 (t=0) left the window; 2.0 (t=20) is the largest
    assert recent.value(85) == 0.0


def test_metrics_export_the_lag_histogram_and_recent_max() -> None:
    metrics = Metrics(process_metrics=False)
    metrics.observe_loop_lag(0.002)
    metrics.observe_loop_lag(1.5)
    text = metrics.render().decode()
    assert "# TYPE event_loop_lag_seconds histogram" in text
    assert 'event_loop_lag_seconds_bucket{le="0.0025"} 1.0' in text
    assert 'event_loop_lag_seconds_bucket{le="2.5"} 2.0' in text
    assert "event_loop_lag_seconds_count 2.0" in text
    assert "event_loop_lag_max_seconds 1.5" in text


async def test_monitor_samples_the_running_loop_until_stopped() -> None:
    sampled = asyncio.Event()
    monitor = LoopLagMonitor(lambda lag_s: sampled.set(), interval_s=0.001)
    monitor.start()
    await sampled.wait()
    await monitor.stop()
    await monitor.stop()  # idempotent
