"""The inference path shared by every protocol: pick the target, run it, hand the log off.

``run`` and ``event`` may be called from any thread (a request served off the event loop
runs in a worker, ``offload.py``); ``record`` hands the event to the log and is called on
the event loop's thread only.
"""

from __future__ import annotations

import operator
import time
from collections.abc import Mapping
from typing import Any

from .config import INFLIGHT_PER_WORKER
from .errors import NotReady, UnknownTarget
from .inference_log import InferenceEvent, LogHandoff
from .metrics import EdgeMetrics
from .offload import Offload
from .protocols.oip import version_of
from .runtime import LoadedPipeline

_SIZE = operator.attrgetter("size")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def elements(feed: Mapping[str, Any]) -> int:
    """Input elements of a feed: what a run's cost is measured against."""
    return sum(map(_SIZE, feed.values()))


class InferenceService:
    def __init__(
        self,
        handoff: LogHandoff,
        metrics: EdgeMetrics,
        partition: str,
        workers: int = 1,
        max_inflight: int | None = None,
    ) -> None:
        self.handoff = handoff
        self.metrics = metrics
        self.partition = partition
        self.pipeline: LoadedPipeline | None = None
        self.waiting_reason = "pulling the pipeline"
        limit = INFLIGHT_PER_WORKER * max(1, workers) if max_inflight is None else max_inflight
        self.offload = Offload(workers, limit)

    @property
    def ready(self) -> bool:
        return self.pipeline is not None

    def current(self) -> LoadedPipeline:
        pipeline = self.pipeline
        if pipeline is None:
            raise NotReady(f"no pipeline loaded yet: {self.waiting_reason}")
        return pipeline

    def pipeline_named(self, name: str) -> LoadedPipeline:
        """``/pipelines/<name>``: only the pipeline this edge serves."""
        pipeline = self.current()
        if name != pipeline.name:
            raise UnknownTarget(
                f"pipeline {name!r} is not served here; this edge serves {pipeline.name!r}",
                field="pipeline",
            )
        return pipeline

    def model_named(self, name: str, version: str | None = None) -> LoadedPipeline:
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

    @staticmethod
    def run(
        target: LoadedPipeline, feed: Mapping[str, Any], records: int, size: int
    ) -> tuple[dict[str, Any], list[int]]:
        """Outputs and ns per step for ``records`` stacked records of ``size`` elements;
        the time is measured into the pipeline's ``RunCost``."""
        outputs, elapsed = target.run(feed, records)
        target.cost.observe(size, sum(elapsed))
        return outputs, elapsed

    def event(
        self,
        target: LoadedPipeline,
        records: int,
        arrived_ms: int,
        inputs: Mapping[str, Any],
        outputs: dict[str, Any],
        elapsed: list[int],
    ) -> InferenceEvent:
        return InferenceEvent(
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

    def record(self, event: InferenceEvent, size: int) -> None:
        """Hand ``event`` (``size`` bytes) to the log and count its records (loop thread)."""
        self.handoff.offer(event, size)
        counter = self.metrics.records.values
        counter[()] = counter.get((), 0.0) + event.records

    def close(self) -> None:
        self.offload.close()
