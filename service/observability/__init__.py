"""What operators see of a running replica: Prometheus metrics, JSON logs with request ids.

    metrics.py      Metrics: one CollectorRegistry per app; listeners for the coordination,
                    generation and upstream hooks; semaphore gauges read from Redis per scrape;
                    the GET /metrics router
    logs.py         configure_logging: JSON lines, request id ContextVar, redaction (stdlib only,
                    so `python -m service` can configure logging before anything heavy loads)
    middleware.py   ObservabilityMiddleware (pure ASGI): X-Request-ID, request metrics, access log
    loop_lag.py     LoopLagMonitor: event-loop lag samples for the metrics, a WARNING per stall

Import from the submodules; this package imports nothing on purpose.
"""
