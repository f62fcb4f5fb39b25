"""The inference path shared by every protocol: pick the target, run it, hand the log off.

Small requests run on the event loop's thread (a ~20 µs onnxruntime call costs less than a
thread hop); large ones run in a worker thread so the loop keeps answering health checks.
"""

from __future__ import annotations

import asyncio
import operator
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .errors import NotReady, UnknownTarget
from .inference_log import InferenceEvent, LogHandoff
from .metrics import EdgeMetrics
from .protocols.oip import version_of
from .runtime import Pipeline

OFFLOAD_ELEMENTS = 65_536
_SIZE = operator.attrgetter("size")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class InferenceService:
    def __init__(
        self,
        handoff: LogHandoff,
        metrics: EdgeMetrics,
        partition: str,
        workers: int = 1,
    ) -> None:
        self.handoff = handoff
        self.metrics = metrics
        self.partition = partition
        self.pipeline: Pipeline | None = None
        self.waiting_reason = "pulling the pipeline"
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="infer")

    @property
    def ready(self) -> bool:
        return self.pipeline is not None

    def current(self) -> Pipeline:
        pipeline = self.pipeline
        if pipeline is None:
            raise NotReady(f"no pipeline loaded yet: {self.waiting_reason}")
        return pipeline

    def pipeline_named(self, name: str) -> Pipeline:
        """``/pipelines/<name>``: only the pipeline this edge serves."""
        pipeline = self.current()
        if name != pipeline.name:
            raise UnknownTarget(
                f"pipeline {name!r} is not served here; this edge serves {pipeline.name!r}",
                field="pipeline",
            )
        return pipeline

    def model_named(self, name: str, version: str | None = None) -> Pipeline:
        """OIP ``/v2/models/<name>``: the pipeline by its name, or one of its steps."""
        pipeline = self.current()
        target = pipeline if name == pipeline.name else pipeline.step_named(name)
        served = version_of(target)
        if version and version != served:
            raise UnknownTarget(
                f"model {name!r} has no version {version!r}; it serves {served!r}",
                field="version",
            )
        return target

    async def infer(
        self,
        target: Pipeline,
        feed: Mapping[str, Any],
        records: int,
        arrived_ms: int,
        logged_inputs: Mapping[str, Any] | None = None,
    ) -> tuple[dict[str, Any], list[int]]:
        """Run ``feed`` (``records`` stacked records) and hand the log event off."""
        if self.small(feed):
            return self.infer_now(target, feed, records, arrived_ms, logged_inputs)
        loop = asyncio.get_running_loop()
        outputs, elapsed = await loop.run_in_executor(self._pool, target.run, feed, records)
        self._log(target, records, arrived_ms, logged_inputs or feed, outputs, elapsed)
        return outputs, elapsed

    def small(self, feed: Mapping[str, Any]) -> bool:
        """Whether ``feed`` is small enough to run on the event loop's thread."""
        return sum(map(_SIZE, feed.values())) <= OFFLOAD_ELEMENTS  # type: ignore[no-any-return]

    def infer_now(
        self,
        target: Pipeline,
        feed: Mapping[str, Any],
        records: int,
        arrived_ms: int,
        logged_inputs: Mapping[str, Any] | None = None,
    ) -> tuple[dict[str, Any], list[int]]:
        """``infer`` on this thread, for small requests (no coroutine, no thread hop)."""
        outputs, elapsed = target.run(feed, records)
        self._log(target, records, arrived_ms, logged_inputs or feed, outputs, elapsed)
        return outputs, elapsed

    def _log(
        self,
        target: Pipeline,
        records: int,
        arrived_ms: int,
        inputs: Mapping[str, Any],
        outputs: dict[str, Any],
        elapsed: list[int],
    ) -> None:
        event = InferenceEvent(
            time=arrived_ms,
            pipeline=target.pipeline_name,
            pipeline_version=target.version,
            records=records,
            inputs=inputs,
            outputs=outputs,
            elapsed_ns=elapsed,
            model_versions=target.models,
            partition=self.partition,
        )
        self.handoff.offer(event)
        counter = self.metrics.records.values
        counter[()] = counter.get((), 0.0) + records

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
