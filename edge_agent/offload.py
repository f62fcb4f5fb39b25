"""What runs on the event loop's thread, what runs in the worker threads, and how much may
wait for them.

The loop must keep answering health checks (and, later, ship the log and answer NATS pings),
so it only does work known to be short:

- a body of at most ``INLINE_BYTES`` (decoding and encoding cost grows with bytes, which
  ``Content-Length`` gives before anything is read): pandas-records JSON decodes at about
  16 ms per MiB on one slow core of the bench machine and its answer encodes at about twice
  that, so 64 KiB costs the loop about 3 ms at worst;
- an onnxruntime run predicted to take at most ``INLINE_RUN_NS``: the prediction is the
  pipeline's own measured time per input element (``RunCost``), since a model's cost is
  not known from its element count alone. It is first measured at load, off the loop, on
  zeros (``LoadedPipeline.warm_up``); a model that refuses zeros has its first run in a worker.

Everything else (a large or chunked body, a slow model) is decoded, run and encoded in a
worker thread (``CONFIG_CPUS`` of them; onnxruntime and pyarrow release the GIL, and the
JSON decoders are fed pieces, ``protocols/pieces.py``, so no call holds it for long). At
most ``max_inflight`` requests are worked on there at once, waiting or running; past that
a request is refused with a 503 and ``Retry-After`` before its body is read.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

from .errors import Overloaded

T = TypeVar("T")
INLINE_BYTES = 64 << 10
INLINE_RUN_NS = 1_000_000
RETRY_AFTER_S = 1
RISE = 1.25  # the most one run can raise the estimate by


class RunCost:
    """A pipeline's onnxruntime time per input element, from its recent runs.

    A run's time is wall time, so a run that lost its core for a while (a shared machine,
    the collector) looks slow once: the estimate follows a faster run at once but a slower
    one by at most ``RISE`` a run, so one such run does not send the next requests off the
    loop (and, under load, into 503s). A model that is really slower is caught up with in
    a few dozen runs. Updated from whichever
    thread ran the pipeline; a lost update between two threads only leaves it a run behind.
    """

    __slots__ = ("ns_per_element",)

    def __init__(self) -> None:
        self.ns_per_element = -1.0  # not measured yet

    def quick(self, elements: int) -> bool:
        """Whether a run over ``elements`` input elements is predicted to be short."""
        cost = self.ns_per_element
        return cost >= 0.0 and cost * elements <= INLINE_RUN_NS

    def observe(self, elements: int, ns: int) -> None:
        sample = ns / max(1, elements)
        cost = self.ns_per_element
        self.ns_per_element = sample if cost < 0.0 else min(sample, cost * RISE)


class Offload:
    """The worker threads and the admission bound in front of them (event loop thread)."""

    def __init__(self, workers: int, max_inflight: int) -> None:
        self.workers = max(1, workers)
        self.max_inflight = max(1, max_inflight)
        self.inflight = 0
        self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="infer")

    @contextmanager
    def slot(self) -> Iterator[None]:
        """One request's place among ``max_inflight``, or ``Overloaded`` (503)."""
        if self.inflight >= self.max_inflight:
            raise Overloaded(
                f"this edge is working on {self.inflight} large or slow inference requests, "
                f"its limit (EDGEPUB_MAX_INFLIGHT); retry after {RETRY_AFTER_S} s",
                retry_after_s=RETRY_AFTER_S,
            )
        self.inflight += 1
        try:
            yield
        finally:
            self.inflight -= 1

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in a worker thread."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
