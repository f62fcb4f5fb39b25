"""Refusals logged without letting a hostile client flood the log.

Per code, the first ``burst`` refusals of each ``window_s`` are logged one line each; the
rest are counted and reported in one ``refusals_suppressed`` line by the first refusal of
that code after the window (``/metrics`` has the exact counts at any time). The clock and
the logger are passed in, so the decisions are tested without waiting.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

BURST = 5
WINDOW_S = 10.0


class _Window:
    __slots__ = ("logged", "started", "suppressed")

    def __init__(self, started: float) -> None:
        self.started = started
        self.logged = 0
        self.suppressed = 0


class LogThrottle:
    def __init__(
        self,
        log: Any,
        burst: int = BURST,
        window_s: float = WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = log
        self.burst = burst
        self.window_s = window_s
        self.clock = clock
        self._windows: dict[str, _Window] = {}

    def emit(self, code: str, event: str, level: str = "info", **fields: Any) -> bool:
        """Log ``event`` unless ``code`` already had its burst this window; True if logged."""
        now = self.clock()
        window = self._windows.get(code)
        if window is None or now - window.started >= self.window_s:
            if window is not None and window.suppressed:
                self.log.warning(
                    "refusals_suppressed",
                    code=code,
                    count=window.suppressed,
                    window_s=round(now - window.started, 1),
                )
            window = self._windows[code] = _Window(now)
        if window.logged >= self.burst:
            window.suppressed += 1
            return False
        window.logged += 1
        getattr(self.log, level)(event, code=code, **fields)
        return True
