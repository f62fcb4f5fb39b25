"""Fail a test when an event loop it runs is blocked for longer than a threshold.

asyncio's debug mode times every callback and logs "Executing <Handle ...> took 0.3
seconds" past ``slow_callback_duration``. ``watch_loops`` turns that on for every loop
created while it is active (``asyncio.run`` and the SDK's background loop alike) and
collects those lines; the ``no_blocking`` fixture fails the test if any appeared. Mark a
test ``@pytest.mark.no_blocking`` (or request the fixture) to hold its code to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
from collections.abc import Iterator

THRESHOLD_S = 0.25  # a NATS ping, a health check or a heartbeat must never wait longer


class _Collector(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.stalls: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("Executing ") and " took " in message:
            self.stalls.append(message)


class _WatchedPolicy(asyncio.DefaultEventLoopPolicy):
    def __init__(self, threshold: float) -> None:
        super().__init__()
        self.threshold = threshold

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        loop = super().new_event_loop()
        loop.set_debug(True)
        loop.slow_callback_duration = self.threshold
        return loop


@contextlib.contextmanager
def watch_loops(threshold: float = THRESHOLD_S) -> Iterator[list[str]]:
    """Within the block every new event loop reports callbacks slower than ``threshold``;
    yields the list their reports are appended to."""
    # garbage an earlier test left (its finalizers log, e.g. aiohttp's unclosed sessions)
    # is collected now, not inside a loop this block watches
    gc.collect()
    collector = _Collector()
    logger = logging.getLogger("asyncio")
    previous_policy = asyncio.get_event_loop_policy()
    previous_level = logger.level
    logger.addHandler(collector)
    logger.setLevel(logging.WARNING)
    asyncio.set_event_loop_policy(_WatchedPolicy(threshold))
    try:
        yield collector.stalls
    finally:
        asyncio.set_event_loop_policy(previous_policy)
        logger.removeHandler(collector)
        logger.setLevel(previous_level)
