"""Retry delays: exponential from ~0.25 s to a 30 s cap, jittered so a fleet of edges that
lost the registry together does not come back in lock-step."""

from __future__ import annotations

import random
from collections.abc import Iterator

FIRST_S = 0.25
CAP_S = 30.0


def delay(attempt: int, rand: float, *, first: float = FIRST_S, cap: float = CAP_S) -> float:
    """The wait before retry number ``attempt`` (0-based); ``rand`` in [0, 1) is the jitter.

    The delay is the exponential step times a factor in [0.5, 1.5): never zero, centred on
    the step, and never above ``cap``.
    """
    step = min(cap, first * (2.0 ** min(attempt, 32)))
    return min(cap, step * (0.5 + rand))


def delays(
    rng: random.Random | None = None, *, first: float = FIRST_S, cap: float = CAP_S
) -> Iterator[float]:
    """An endless series of delays for one retry loop."""
    rng = rng or random.Random()
    attempt = 0
    while True:
        yield delay(attempt, rng.random(), first=first, cap=cap)
        attempt += 1
