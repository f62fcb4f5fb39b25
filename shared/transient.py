"""JetStream calls that fail for a moment ride it out instead of crash-looping.

While a stream's or the meta leader moves (a node died, a cluster restarts), JetStream API
calls time out or answer 503 for seconds. ``retry_transient`` calls again with jittered
backoff until ``deadline_s``, saying every few seconds what it waits for; an answer that
is not transient (not found, bad request, refused) is raised at once.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats.errors
import nats.js.errors
import structlog

log = structlog.get_logger("edgepub.bus")
T = TypeVar("T")

TRANSIENT: tuple[type[BaseException], ...] = (
    TimeoutError,
    nats.errors.TimeoutError,
    nats.errors.NoRespondersError,
    nats.errors.ConnectionReconnectingError,
    nats.js.errors.ServiceUnavailableError,  # 503: no JetStream leader (yet)
    nats.js.errors.ServerError,  # 500: e.g. "JetStream system temporarily unavailable"
    nats.js.errors.NoStreamResponseError,
)
SAY_EVERY_S = 5.0
# A cluster still forming (not every node has joined the meta group yet) cannot place a
# stream's replicas; past the deadline it is a real misconfiguration, said as such.
NO_PEERS_FOR_PLACEMENT = 10005


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, TRANSIENT):
        return True
    return (
        isinstance(exc, nats.js.errors.BadRequestError) and exc.err_code == NO_PEERS_FOR_PLACEMENT
    )


def backoff(attempt: int, cap: float = 2.0) -> float:
    return float(min(cap, 0.1 * 2**attempt) * random.uniform(0.8, 1.2))


async def retry_transient(
    call: Callable[[], Awaitable[T]], *, what: str, deadline_s: float = 60.0
) -> T:
    """``await call()`` until it succeeds, retrying transient JetStream failures for at
    most ``deadline_s`` (the last failure is raised past it)."""
    started = time.monotonic()
    said = started
    attempt = 0
    while True:
        try:
            return await call()
        except Exception as exc:
            if not is_transient(exc):
                raise
            now = time.monotonic()
            if now - started >= deadline_s:
                raise
            if attempt == 0 or now - said >= SAY_EVERY_S:
                log.info(
                    "jetstream_unavailable",
                    what=what,
                    waited_s=round(now - started, 1),
                    error=f"{type(exc).__name__}: {exc}",
                )
                said = now
            await asyncio.sleep(backoff(attempt))
            attempt += 1
