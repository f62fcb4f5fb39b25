"""How late the event loop runs, measured from inside it.

A tiny task asks to wake every ``INTERVAL_S`` and records how much later than asked it
woke: anything holding the loop (a long decode, a blocking call) shows as lag. ``/metrics``
exports each lag in a histogram, the largest seen, and a count of stalls: lags of at least
``STALL_S``, the bound ``tests/support/loopwatch.py`` holds in-process loops to (a health
check, a NATS ping or a heartbeat must never wait longer).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from .metrics import Counter, EdgeMetrics, Histogram

INTERVAL_S = 0.05
STALL_S = 0.25
LAG_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class LoopLag:
    def __init__(self, metrics: EdgeMetrics, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.largest = 0.0
        self.lags = Histogram(
            "edgepub_edge_event_loop_lag_seconds",
            f"How late the event loop ran a task that asked to wake every {INTERVAL_S} s.",
            buckets=LAG_BUCKETS,
        )
        self.stalls = Counter(
            "edgepub_edge_event_loop_stalls_total",
            f"Times the event loop was held for {STALL_S} s or more.",
        )
        self.stalls.inc(by=0.0)  # exported from the start, as 0
        metrics.add(self.lags)
        metrics.add(self.stalls)
        metrics.gauge(
            "edgepub_edge_event_loop_lag_max_seconds",
            "The largest event loop lag seen since the agent started.",
            lambda: self.largest,
        )

    def observe(self, lag: float) -> None:
        self.lags.observe(lag)
        self.largest = max(self.largest, lag)
        if lag >= STALL_S:
            self.stalls.inc()

    async def watch(self) -> None:
        """Measure until cancelled."""
        clock = self.clock
        while True:
            started = clock()
            await asyncio.sleep(INTERVAL_S)
            self.observe(max(0.0, clock() - started - INTERVAL_S))
