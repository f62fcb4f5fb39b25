"""How a push runs: its own registry session, threads that end with it, parts side by side.

The registry client is blocking (``requests``), so a push runs it in worker threads, and
cancelling the task that awaits a thread does not stop the thread. So each push attempt
gets:

- its own ``RegistryClient`` (its own ``requests.Session``), closed only once every thread
  of the push has ended: no thread ever sends on a closed session, or on another push's;
- a stop token, checked by an adapter mounted on that session before every request and on
  every chunk of every request body it sends (16 KiB), so a cancelled upload stops within
  one chunk and the registry, short of its Content-Length, never stores the blob;
- ``call``, which runs a function in a thread and, when cancelled, sets the token and waits
  for the thread to end (at most ``wait_s``: a request already sent waits for its answer
  up to the registry timeout) before the cancellation goes on;
- ``both``, which runs two parts at once; the first failure cancels the other, and the
  error raised is the one to act on.

A bearer token (registries that issue them) is fetched per push, since it lives on the
session; htpasswd registries take Basic credentials on every request anyway.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import requests
import structlog
from requests.adapters import HTTPAdapter

from edgepub.shared.errors import EdgepubError, RegistryUnavailableError
from edgepub.shared.oci import RegistryClient
from edgepub.shared.settings import RegistrySettings

log = structlog.get_logger("edgepub.registry_push")
R = TypeVar("R")
A = TypeVar("A")
B = TypeVar("B")


class PushCancelled(Exception):
    """Raised in a push's thread once the push is cancelled: the thread stops there."""


class StopToken:
    """Set once, from the event loop; checked from the push's threads."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        if self._event.is_set():
            raise PushCancelled("the push was cancelled")


class _CheckedBody:
    """A streamed request body that stops at the next chunk once the push is cancelled."""

    def __init__(self, body: Any, stop: StopToken) -> None:
        self._body = body
        self._stop = stop

    def __len__(self) -> int:
        return len(self._body)

    def read(self, n: int = -1, /) -> bytes:
        self._stop.check()
        data: bytes = self._body.read(n)
        return data


class StoppableAdapter(HTTPAdapter):
    """requests' HTTP adapter, refusing to send (or to go on sending) once stopped."""

    def __init__(self, stop: StopToken) -> None:
        super().__init__()
        self._stop = stop

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> Any:
        self._stop.check()
        if hasattr(request.body, "read"):
            request.body = _CheckedBody(request.body, self._stop)
        return super().send(request, *args, **kwargs)


async def in_thread(stop: StopToken, fn: Callable[..., R], *args: Any, wait_s: float) -> R:
    """``fn(*args)`` in a worker thread. Cancelled: set ``stop``, wait (up to ``wait_s``)
    for the thread to notice and end, then let the cancellation go on."""
    loop = asyncio.get_running_loop()
    ctx = contextvars.copy_context()
    future = loop.run_in_executor(None, functools.partial(ctx.run, fn, *args))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        stop.set()
        # Its error (PushCancelled, most likely) is expected: retrieve it whenever it comes.
        future.add_done_callback(lambda f: f.cancelled() or f.exception())
        done, _ = await asyncio.wait({future}, timeout=wait_s)
        if not done:
            log.warning("push_thread_still_running", waited_s=wait_s, function=fn.__name__)
        raise


class Threads:
    """Worker threads that end with their owner: ``call`` waits for its thread even when
    cancelled (stopping it through ``stop``)."""

    def __init__(self, stop: StopToken | None = None, *, wait_s: float = 35.0) -> None:
        self.stop = stop or StopToken()
        self.wait_s = wait_s

    async def call(self, fn: Callable[..., R], *args: Any) -> R:
        return await in_thread(self.stop, fn, *args, wait_s=self.wait_s)


class PushSession(Threads):
    """One push attempt's registry client, stop token and threads. ``close`` it when the
    attempt is over (every ``call`` has returned by then, so no thread still uses it)."""

    def __init__(self, settings: RegistrySettings, *, timeout_s: float) -> None:
        super().__init__(wait_s=timeout_s + 5.0)
        self.client = RegistryClient(settings, timeout_s=timeout_s)
        adapter = StoppableAdapter(self.stop)
        self.client.session.mount("http://", adapter)
        self.client.session.mount("https://", adapter)

    def close(self) -> None:
        self.client.close()


# --- two parts side by side -----------------------------------------------------------


def decisive(errors: BaseExceptionGroup[BaseException]) -> BaseException:
    """Of errors raised side by side, the one to act on: a permanent one beats an
    outage (fail now rather than retry), anything beats a cancellation (a part stopped
    because another failed)."""
    flat = flatten(errors)
    for exc in flat:
        if isinstance(exc, EdgepubError) and not isinstance(exc, RegistryUnavailableError):
            return exc
    stopped = (asyncio.CancelledError, PushCancelled)
    return next((e for e in flat if not isinstance(e, stopped)), flat[0])


def flatten(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [e for sub in exc.exceptions for e in flatten(sub)]
    return [exc]


async def both(first: Awaitable[A], second: Awaitable[B]) -> tuple[A, B]:
    """Run two awaitables at once; the first failure cancels the other (its threads
    stopped and waited for: see ``in_thread``)."""
    try:
        async with asyncio.TaskGroup() as tg:
            ta = tg.create_task(_wrap(first))
            tb = tg.create_task(_wrap(second))
    except BaseExceptionGroup as group:
        raise decisive(group) from None
    return ta.result(), tb.result()


async def _wrap(aw: Awaitable[A]) -> A:
    return await aw
