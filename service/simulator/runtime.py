"""The simulator's live state: settings, predictions, limits, faults and the image cache."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from service.simulator.config import SimulatorConfig
from service.simulator.faults import FaultState
from service.simulator.images import ImageCache
from service.simulator.prediction import SimPrediction
from service.simulator.ratelimit import RateDecision, SlidingWindowLimiter
from service.simulator.store import PredictionStore
from service.simulator.webhooks import WebhookSender


class SimulatorRuntime:
    """Owned by one event loop; every request handler reads and changes it without locks."""

    def __init__(self, config: SimulatorConfig, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.clock = clock
        self.rng = random.Random(config.seed)
        self.store = PredictionStore(self.rng)
        self.limiter = SlidingWindowLimiter(config.rate_window_s)
        self.faults = FaultState()
        self.images = ImageCache(config.image_cache_size)
        self.webhooks = WebhookSender()

    def reconfigure(self, config: SimulatorConfig) -> None:
        """Swap settings at run time (PATCH /_sim/config); existing predictions keep their plan."""
        self.config = config
        self.limiter.window_s = config.rate_window_s
        self.images.capacity = config.image_cache_size

    def reset(self) -> None:
        """Forget predictions, counters, rate windows, faults and rendered files."""
        self.store.clear()
        self.limiter.clear()
        self.faults = FaultState()
        self.images.clear()
        self.webhooks.clear()

    def take_rate(self, token_fp: str, bucket: str) -> RateDecision:
        limit = self.config.create_limit if bucket == "create" else self.config.other_limit
        return self.limiter.hit(token_fp, bucket, limit, self.clock())

    async def wait_until_done(self, prediction: SimPrediction, deadline: float) -> None:
        """Hold until the prediction is terminal or the clock reaches `deadline`."""
        # A loop, because timers may fire a little early (uvloop's have 1 ms resolution); bounded,
        # in case an injected clock does not move.
        for _ in range(1000):
            now = self.clock()
            if prediction.is_terminal(now) or now >= deadline:
                return
            await prediction.wait_terminal(deadline - now, now)
