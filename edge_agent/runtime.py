"""onnxruntime sessions for a pipeline's steps, chained output -> input.

``plan_chain`` (pure) decides how one step's outputs feed the next step's inputs: by name
when every input has an output of that name, else by position when the counts agree.
``load_pipeline`` builds one session per step with ``CONFIG_CPUS`` intra-op threads.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from edgepub.shared.dtypes import spec_from_ort
from edgepub.shared.errors import InvalidModelError
from edgepub.shared.schemas import PipelineDefinition, TensorSpec

from .errors import BadRequest, UnknownTarget
from .inference_log import ModelUsed
from .offload import RunCost
from .tensors import numpy_dtype


class PipelineLoadError(InvalidModelError):
    """A cached or pulled pipeline that cannot be served (bad model, steps that don't chain)."""


def plan_chain(outputs: Sequence[str], inputs: Sequence[str]) -> dict[str, str]:
    """``{next input name: previous output name}``, or PipelineLoadError."""
    if all(name in outputs for name in inputs):
        return {name: name for name in inputs}
    if len(outputs) == len(inputs):
        return dict(zip(inputs, outputs, strict=True))
    raise PipelineLoadError(
        f"a step with inputs {list(inputs)} cannot follow a step with outputs {list(outputs)}: "
        "name the inputs after the previous outputs or give them the same count"
    )


class Step(msgspec.Struct, frozen=True, kw_only=True):
    model: ModelUsed
    runtime: str
    file_name: str
    session: Any  # onnxruntime.InferenceSession
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    feed_from: dict[str, str] | None  # None for the first step
    casts: dict[str, np.dtype[Any]]  # input name -> dtype to cast a chained value to
    output_names: list[str]
    call: Any  # session.run(output_names, feed, run_options); see _fast_run


class LoadedPipeline:
    """A loaded pipeline (or one step of it, as an OIP model): run a feed through its steps."""

    def __init__(self, definition: PipelineDefinition, steps: Sequence[Step], name: str) -> None:
        if not steps:
            raise PipelineLoadError(f"pipeline {definition.pipeline_name!r} has no steps")
        self.definition = definition
        self.name = name
        self.pipeline_name = definition.pipeline_name
        self.version = definition.pipeline_version
        self.steps = tuple(steps)
        self.inputs = self.steps[0].inputs
        self.outputs = self.steps[-1].outputs
        self.input_names = frozenset(s.name for s in self.inputs)
        self.models = tuple(s.model for s in self.steps)
        last = self.steps[-1].model
        self.last_model = json.dumps(
            {"model_name": last.name, "model_sha": last.sha256}, separators=(",", ":")
        )
        batch = self.inputs[0].shape[0] if self.inputs and self.inputs[0].shape else None
        self.fixed_batch = batch if isinstance(batch, int) and batch > 0 else None
        self.memo: dict[str, Any] = {}  # per-pipeline helpers the protocols build once
        self.single = self.steps[0] if len(self.steps) == 1 else None  # the one-step fast path
        self.cost = RunCost()  # measured by every run, to decide where the next one runs

    def warm_up(self) -> bool:
        """Run once on zeros of the declared shapes (free dimensions 1), off the event loop
        at load: onnxruntime's first-run allocations are made, and the run's cost is
        measured before the first request, so a burst of first requests is not all sent to
        the workers (and, past EDGEPUB_MAX_INFLIGHT, refused). False if the model refuses
        zeros: its first request is measured instead."""
        records = self.fixed_batch or 1
        feed = {
            spec.name: np.zeros(
                [records] + [d if isinstance(d, int) and d > 0 else 1 for d in spec.shape[1:]],
                dtype=numpy_dtype(spec.dtype),
            )
            for spec in self.inputs
        }
        for name, spec in zip(feed, self.inputs, strict=True):
            if spec.dtype == "string":
                feed[name][...] = ""
        try:
            _, elapsed = self.run(feed, records)
        except Exception:  # onnxruntime's own untyped errors: the cost stays unmeasured
            return False
        self.cost.observe(sum(a.size for a in feed.values()), sum(elapsed))
        return True

    def step_named(self, model_name: str) -> LoadedPipeline:
        """A one-step view (OIP ``/v2/models/<model>``) sharing this pipeline's session."""
        view = self.memo.get(f"step:{model_name}")
        if view is not None:
            return view  # type: ignore[no-any-return]
        for step in self.steps:
            if step.model.name == model_name:
                first = msgspec.structs.replace(step, feed_from=None, casts={})
                view = self.memo[f"step:{model_name}"] = LoadedPipeline(
                    self.definition, [first], model_name
                )
                return view
        raise UnknownTarget(f"model {model_name!r} is not served here", field="model")

    def _run_once(self, feed: Mapping[str, Any]) -> tuple[dict[str, Any], list[int]]:
        elapsed: list[int] = []
        values: Mapping[str, Any] = feed
        clock = time.perf_counter_ns
        for step in self.steps:
            started = clock()
            if step.feed_from is not None:
                values = _chain(step, values)
            try:
                results = step.call(step.output_names, values, None)
            except _invalid_argument() as exc:
                raise BadRequest(
                    f"model {step.model.name!r} refused the input: {exc}", field=step.model.name
                ) from None
            values = dict(zip(step.output_names, results, strict=True))
            elapsed.append(clock() - started)
        return values, elapsed  # type: ignore[return-value]

    def run(self, feed: Mapping[str, Any], records: int) -> tuple[dict[str, Any], list[int]]:
        """Outputs of the last step for ``records`` stacked records, and ns spent per step."""
        batch = self.fixed_batch
        if batch is None or records == batch:
            step = self.single
            if step is None:
                return self._run_once(feed)
            started = time.perf_counter_ns()
            try:
                results = step.call(step.output_names, feed, None)
            except _invalid_argument() as exc:
                raise BadRequest(
                    f"model {step.model.name!r} refused the input: {exc}", field=step.model.name
                ) from None
            elapsed = [time.perf_counter_ns() - started]
            names = step.output_names
            if len(names) == 1:
                return {names[0]: results[0]}, elapsed
            return dict(zip(names, results, strict=True)), elapsed
        if records % batch:
            raise BadRequest(
                f"input {self.inputs[0].name!r}: the model takes records in batches of {batch}; "
                f"got {records}",
                field=self.inputs[0].name,
            )
        parts = [
            self._run_once({k: v[i : i + batch] for k, v in feed.items()})
            for i in range(0, records, batch)
        ]
        outputs = {name: np.concatenate([p[0][name] for p in parts]) for name in parts[0][0]}
        elapsed = [sum(p[1][j] for p in parts) for j in range(len(self.steps))]
        return outputs, elapsed


def _chain(step: Step, values: Mapping[str, Any]) -> dict[str, Any]:
    """The next step's feed from the previous step's outputs (``plan_chain``'s mapping)."""
    assert step.feed_from is not None
    casts = step.casts
    return {
        name: np.asarray(values[src]).astype(casts[name]) if name in casts else values[src]
        for name, src in step.feed_from.items()
    }


def _fast_run(session: Any) -> Any:
    """The session's C++ ``run``, past the Python wrapper's input-name checks (requests are
    validated before they get here); the public ``run`` if this onnxruntime has no such
    attribute. Same arguments either way: (output_names, feed, run_options)."""
    inner = getattr(session, "_sess", None)
    return inner.run if inner is not None and hasattr(inner, "run") else session.run


def _invalid_argument() -> type[Exception]:
    from onnxruntime.capi.onnxruntime_pybind11_state import InvalidArgument

    return InvalidArgument  # type: ignore[no-any-return]


def session_options(threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if threads > 1:
        # Spinning worker threads would take the CPU the HTTP loop needs between requests.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


def _casts(
    prev: Sequence[TensorSpec], step_inputs: Sequence[TensorSpec], plan: dict[str, str]
) -> dict[str, np.dtype[Any]]:
    produced = {s.name: s.dtype for s in prev}
    return {
        spec.name: numpy_dtype(spec.dtype)
        for spec in step_inputs
        if produced.get(plan[spec.name]) not in (None, spec.dtype) and spec.dtype != "string"
    }


def load_pipeline(definition: PipelineDefinition, models_dir: Path, threads: int) -> LoadedPipeline:
    """One onnxruntime session per step, each checked to chain onto the one before."""
    import onnxruntime as ort

    opts = session_options(threads)
    steps: list[Step] = []
    for index, art in enumerate(definition.steps):
        if art.runtime != "onnx":
            raise PipelineLoadError(
                f"step {index} ({art.model_name!r}) has runtime {art.runtime!r}; "
                "this agent runs onnx"
            )
        path = models_dir / art.file_name
        try:
            session = ort.InferenceSession(
                str(path), sess_options=opts, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own untyped errors
            raise PipelineLoadError(
                f"model {art.model_name!r} ({art.file_name}) does not load: {exc}"
            ) from exc
        inputs = tuple(spec_from_ort(n) for n in session.get_inputs())
        outputs = tuple(spec_from_ort(n) for n in session.get_outputs())
        plan = (
            plan_chain([o.name for o in steps[-1].outputs], [i.name for i in inputs])
            if steps
            else None
        )
        steps.append(
            Step(
                model=ModelUsed(art.model_name, art.model_version, art.sha256),
                runtime=art.runtime,
                file_name=art.file_name,
                session=session,
                inputs=inputs,
                outputs=outputs,
                feed_from=plan,
                casts=_casts(steps[-1].outputs, inputs, plan) if plan is not None else {},
                output_names=[o.name for o in outputs],
                call=_fast_run(session),
            )
        )
    return LoadedPipeline(definition, steps, definition.pipeline_name)
