"""Waiting on a condition with a deadline: the only way tests synchronise."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class WaitTimeout(AssertionError):
    pass


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    what: str = "condition",
    interval: float = 0.02,
) -> T:
    """Poll ``predicate`` until it returns something truthy; return that value.

    Exceptions from the predicate count as "not yet"; the last one is attached on timeout.
    """
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:
            last_exc = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {type(last_exc).__name__}: {last_exc})" if last_exc else ""
            raise WaitTimeout(
                f"timed out after {timeout}s waiting for {what}{detail}"
            ) from last_exc
        time.sleep(interval)
        interval = min(interval * 1.5, 0.25)


async def async_wait_for(
    predicate: Callable[[], T | Awaitable[T]],
    timeout: float = 10.0,  # noqa: ASYNC109 (a polling deadline, not an I/O timeout)
    what: str = "condition",
    interval: float = 0.02,
) -> T:
    """``wait_for`` for the event loop; ``predicate`` may be sync or async."""
    deadline = time.monotonic() + timeout
    last_exc: BaseException | None = None
    while True:
        try:
            result = predicate()
            value = await result if inspect.isawaitable(result) else result
            if value:
                return value
        except Exception as exc:
            last_exc = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {type(last_exc).__name__}: {last_exc})" if last_exc else ""
            raise WaitTimeout(
                f"timed out after {timeout}s waiting for {what}{detail}"
            ) from last_exc
        await asyncio.sleep(interval)
        interval = min(interval * 1.5, 0.25)
