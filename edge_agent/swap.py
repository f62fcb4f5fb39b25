"""Hot swap: serve a newly assigned pipeline without dropping a request.

A request reads ``InferenceService.pipeline`` once and runs on that ``LoadedPipeline`` to
the end, so replacing the attribute is the whole swap: requests already running finish on
the old pipeline, the next one gets the new. Everything slow (pull, digest checks,
sessions, warm-up) happens before, off the event loop; the old pipeline's sessions are
freed when the last request holding it lets go (``pipeline_released`` in the log).

``Swapper.assign`` hands an assignment to the one loop (``Swapper.run``, a task of the
agent's group) and returns when it was served, found already running, skipped or failed
once; swaps run one at a time, the newest assignment wins, and a failed one is retried
with backoff until it works or a newer one arrives.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from pathlib import Path
from typing import Any, Literal, Protocol

import msgspec

from edgepub.shared.edge_messages import Assignment
from edgepub.shared.errors import (
    DigestMismatchError,
    InvalidModelError,
    InvalidNameError,
    RegistryError,
)

from . import backoff
from .assignment import (
    AssignmentRecord,
    Running,
    StartTarget,
    forget_record,
    judge,
    read_record,
    start_target,
    write_record,
)
from .cache import CachedPipeline
from .inference import InferenceService
from .metrics import Counter, EdgeMetrics
from .runtime import LoadedPipeline

Outcome = Literal["swapped", "same", "stale", "superseded", "failed"]
SWAP_ERRORS = (
    RegistryError,
    DigestMismatchError,
    InvalidModelError,  # PipelineLoadError
    OSError,
    msgspec.ValidationError,
    msgspec.DecodeError,
)
_INFO_LABELS = ("pipeline", "pipeline_version", "pipeline_url", "publish_id")


class Host(Protocol):
    """What the swapper needs of the agent."""

    service: InferenceService
    log: Any

    async def fetch(self, pipeline_url: str) -> CachedPipeline: ...

    async def load(self, cached: CachedPipeline) -> tuple[LoadedPipeline, bool]: ...

    def reason(self, exc: Exception) -> str: ...


class Failure:
    """The newest assignment's failed attempts (cleared once one works): the heartbeat
    tells Ops, so a replace that cannot load shows as failed, not pending."""

    __slots__ = ("attempts", "first_at", "publish_id", "reason")

    def __init__(self, publish_id: int, reason: str, first_at: float) -> None:
        self.publish_id, self.reason, self.first_at = publish_id, reason, first_at
        self.attempts = 1


class _Item:
    __slots__ = ("assignment", "done")

    def __init__(self, assignment: Assignment, done: asyncio.Future[Outcome]) -> None:
        self.assignment = assignment
        self.done = done

    def settle(self, outcome: Outcome) -> None:
        if not self.done.done():
            self.done.set_result(outcome)


class Swapper:
    def __init__(
        self,
        host: Host,
        metrics: EdgeMetrics,
        persist_dir: Path,
        start_pipeline_url: str,
        *,
        retry_first_s: float = backoff.FIRST_S,
        retry_cap_s: float = backoff.CAP_S,
    ) -> None:
        self.host = host
        self.persist_dir = persist_dir
        self.start_pipeline_url = start_pipeline_url
        self.retry = (retry_first_s, retry_cap_s)
        self.running: Running | None = None
        self.running_since: float | None = None  # time.monotonic() of the last install
        self.failure: Failure | None = None  # of the newest assignment, until it works
        self.assignment: Assignment | None = None  # the newest accepted (served or not)
        self.assigned = False  # one arrived since start: the start pull gives way to it
        self.lock = asyncio.Lock()  # one pull and one install at a time
        self.released: list[str] = []  # versions whose sessions were freed (tests, logs)
        self._pending: _Item | None = None
        self._wake = asyncio.Event()
        self._active = False
        self.swaps = Counter(
            "edgepub_edge_pipeline_swaps_total",
            "Assignments handled, by outcome (swapped, same, stale, superseded, failed).",
            ("outcome",),
        )
        metrics.add(self.swaps)
        metrics.gauge(
            "edgepub_edge_pipeline_info",
            "The pipeline this edge serves (always 1; the labels say which).",
            self._info,
            _INFO_LABELS,
        )

    def _info(self) -> dict[tuple[str, ...], float]:
        r = self.running
        if r is None:
            return {}
        publish = "" if r.publish_id is None else str(r.publish_id)
        return {(r.pipeline_name, r.pipeline_version, r.pipeline_url, publish): 1.0}

    # --- start -------------------------------------------------------------------------

    def start(self) -> StartTarget:
        """Decide what to run from PIPELINE_URL and ``assignment.json``."""
        log = self.host.log
        try:
            record = read_record(self.persist_dir)
        except (OSError, msgspec.ValidationError, msgspec.DecodeError) as exc:
            log.error("assignment_record_unusable", error=str(exc))
            record = None
        target = start_target(self.start_pipeline_url, record)
        if target.forget:
            assert record is not None
            log.info(
                "assignment_record_outdated",
                recorded_pipeline_url=record.start_pipeline_url,
                pipeline_url=self.start_pipeline_url,
                publish_id=record.assignment.publish_id,
            )
            forget_record(self.persist_dir)
        if target.assignment is not None:
            log.info(
                "serving_assignment",
                publish_id=target.assignment.publish_id,
                pipeline_url=target.pipeline_url,
            )
        self.assignment = target.assignment
        return target

    # --- the swap itself ---------------------------------------------------------------

    def install(self, pipeline: LoadedPipeline, pipeline_url: str) -> LoadedPipeline | None:
        """Serve ``pipeline`` from the next request on; returns the one it replaces."""
        service = self.host.service
        old = service.pipeline
        a = self.assignment
        service.pipeline = pipeline  # the swap: a request reads this once
        self.running_since = time.monotonic()
        self.running = Running(
            publish_id=a.publish_id if a is not None and a.pipeline_url == pipeline_url else None,
            pipeline_name=pipeline.pipeline_name,
            pipeline_version=pipeline.version,
            pipeline_url=pipeline_url,
        )
        self.host.log = self.host.log.bind(
            pipeline=pipeline.pipeline_name, pipeline_version=pipeline.version
        )
        if old is not None and old is not pipeline:
            weakref.finalize(old, self._released, self.host.log, old.version)
        return old

    def _released(self, log: Any, version: str) -> None:
        # called by whichever thread drops the last reference (a worker's, or the loop's)
        self.released.append(version)
        log.info("pipeline_released", released_version=version)

    async def assign(self, assignment: Assignment) -> Outcome:
        """Hand ``assignment`` to the swap loop; returns once it was handled (a failure is
        retried in the background). Never raises for a failed swap."""
        if not self._active:
            raise RuntimeError("Swapper.assign needs Swapper.run running (Agent.run)")
        log = self.host.log
        if judge(assignment, None, self.assignment) == "stale":
            newest = self.assignment.publish_id if self.assignment else None
            log.info("assignment_stale", publish_id=assignment.publish_id, newest_publish_id=newest)
            self.swaps.inc(("stale",))
            return "stale"
        self.assignment = assignment
        self.assigned = True
        item = _Item(assignment, asyncio.get_running_loop().create_future())
        if self._pending is not None:
            self._skip(self._pending)
        self._pending = item
        self._wake.set()
        return await item.done

    def _skip(self, item: _Item) -> None:
        self.host.log.info("assignment_superseded", publish_id=item.assignment.publish_id)
        self.swaps.inc(("superseded",))
        item.settle("superseded")

    async def run(self) -> None:
        """The swap loop: one assignment at a time, the newest first, until cancelled."""
        self._active = True
        try:
            while True:
                await self._wake.wait()
                self._wake.clear()
                item, self._pending = self._pending, None
                if item is not None:
                    await self._pursue(item)
        finally:
            self._active = False
            if self._pending is not None:
                self._pending.done.cancel()
                self._pending = None

    async def _pursue(self, item: _Item) -> None:
        """Swap to ``item`` until it works or a newer assignment arrives."""
        delays = backoff.delays(first=self.retry[0], cap=self.retry[1])
        attempt = 0
        try:
            while True:
                attempt += 1
                outcome, retry = await self._attempt(item.assignment, attempt, delays)
                self.swaps.inc((outcome,))
                item.settle(outcome)
                if retry is None or await self._newer_within(retry):
                    return
        finally:
            item.done.cancel()  # no-op once settled; a caller never waits on a dead loop

    async def _newer_within(self, seconds: float) -> bool:
        try:
            async with asyncio.timeout(seconds):
                await self._wake.wait()
        except TimeoutError:
            return False
        return True

    async def _attempt(
        self, a: Assignment, attempt: int, delays: Any
    ) -> tuple[Outcome, float | None]:
        """One try: (its outcome, seconds until the next try or None for no retry)."""
        try:
            async with self.lock:
                return await self._swap(a), None
        except InvalidNameError as exc:  # not a pipeline URL of this registry: never will be
            self._failed(a, str(exc), attempt, None)
            return "failed", None
        except SWAP_ERRORS as exc:
            wait: float = next(delays)
            self._failed(a, self.host.reason(exc), attempt, wait)
            return "failed", wait
        except Exception as exc:  # an agent bug must not stop inference: log it, retry
            wait = next(delays)
            self._failed(a, f"internal error: {exc!r}", attempt, wait, exc_info=True)
            return "failed", wait

    def _failed(
        self, a: Assignment, reason: str, attempt: int, wait: float | None, **kw: Any
    ) -> None:
        serving = self.running.pipeline_version if self.running else None
        failure = self.failure
        if failure is not None and failure.publish_id == a.publish_id:
            failure.reason = reason
            failure.attempts += 1
        else:
            self.failure = Failure(a.publish_id, reason, time.monotonic())
        self.host.log.warning(
            "pipeline_swap_failed",
            reason=reason,
            publish_id=a.publish_id,
            pipeline_url=a.pipeline_url,
            serving_version=serving,
            attempt=attempt,
            retry_in_s=None if wait is None else round(wait, 2),
            **kw,
        )

    async def _swap(self, a: Assignment) -> Outcome:
        log = self.host.log
        running = self.running
        if running is not None and judge(a, running, None) == "same":
            self.running = msgspec.structs.replace(running, publish_id=a.publish_id)
            self.failure = None
            log.debug("assignment_already_running", publish_id=a.publish_id)
            await self._record(a)
            return "same"
        log.info("pipeline_swap_started", publish_id=a.publish_id, pipeline_url=a.pipeline_url)
        cached = await self.host.fetch(a.pipeline_url)
        pipeline, _ = await self.host.load(cached)
        if self._pending is not None:  # a newer one arrived while this one loaded
            return "superseded"
        self.install(pipeline, a.pipeline_url)
        self.failure = None  # it serves: nothing failed any more
        log.info(
            "pipeline_swapped",
            from_version=running.pipeline_version if running else None,
            to_version=pipeline.version,
            from_publish_id=running.publish_id if running else None,
            to_publish_id=a.publish_id,
            pipeline_url=a.pipeline_url,
            digest=cached.source.manifest_digest,
        )
        await self._record(a)
        return "swapped"

    async def _record(self, a: Assignment) -> None:
        record = AssignmentRecord(assignment=a, start_pipeline_url=self.start_pipeline_url)
        try:
            await asyncio.to_thread(write_record, self.persist_dir, record)
        except OSError as exc:  # serving goes on; a restart falls back to PIPELINE_URL
            self.host.log.warning("assignment_not_recorded", error=str(exc))
