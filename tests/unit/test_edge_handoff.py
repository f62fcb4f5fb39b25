"""Inference log rows reach the local-log hand-off, and a stuck local log never holds up an
inference: the ASGI app is called in-process with a real onnxruntime pipeline."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from edgepub.edge_agent.inference import InferenceService
from edgepub.edge_agent.inference_log import (
    InferenceEvent,
    LogHandoff,
    ModelUsed,
    drain,
    pump,
    row_decoder,
    row_encoder,
    rows_of,
)
from edgepub.edge_agent.metrics import EdgeMetrics
from edgepub.edge_agent.offload import RunCost
from edgepub.edge_agent.runtime import LoadedPipeline, load_pipeline
from edgepub.edge_agent.web.app import EdgeApp
from edgepub.shared.schemas import ArtifactStep, PipelineDefinition
from support.edge import make_scaler
from support.waiting import async_wait_for


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory: pytest.TempPathFactory) -> LoadedPipeline:
    models = tmp_path_factory.mktemp("models")
    path = make_scaler(models / "scaler.onnx", features=3)
    data = path.read_bytes()
    definition = PipelineDefinition(
        pipeline_name="p1",
        pipeline_version="v-1",
        pipeline_version_id=1,
        steps=(
            ArtifactStep(
                model_name="scaler",
                model_version="m-1",
                sha256=hashlib.sha256(data).hexdigest(),
                size=len(data),
                file_name=path.name,
                runtime="onnx",
                inputs=(),
                outputs=(),
            ),
        ),
        engine_config={},
    )
    return load_pipeline(definition, Path(models), threads=1)


class RecordingLog:
    def __init__(self) -> None:
        self.events: list[InferenceEvent] = []

    async def write(self, events: Sequence[InferenceEvent]) -> None:
        self.events.extend(events)


class StuckLog:
    """A local log whose disk never answers."""

    def __init__(self) -> None:
        self.calls = 0

    async def write(self, events: Sequence[InferenceEvent]) -> None:
        self.calls += 1
        await asyncio.Event().wait()


async def call(app: EdgeApp, path: str, body: Any) -> tuple[int, Any]:
    raw = json.dumps(body).encode()
    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(raw)).encode()),
        ],
    }
    delivered = False

    async def receive() -> dict[str, Any]:
        nonlocal delivered
        if delivered:
            await asyncio.Event().wait()
        delivered = True
        return {"type": "http.request", "body": raw, "more_body": False}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent[0]["status"], json.loads(sent[1]["body"])


def service(pipeline: LoadedPipeline, capacity: int) -> tuple[EdgeApp, InferenceService]:
    metrics = EdgeMetrics()
    svc = InferenceService(LogHandoff(capacity), metrics, partition="edge-7")
    svc.pipeline = pipeline
    return EdgeApp(svc, metrics, max_body=1 << 20), svc


def test_rows_arrive_at_the_hand_off(pipeline: LoadedPipeline) -> None:
    async def scenario() -> list[InferenceEvent]:
        app, svc = service(pipeline, capacity=100)
        log = RecordingLog()
        async with asyncio.TaskGroup() as tg:
            pumping = tg.create_task(pump(svc.handoff, log))
            for i in range(3):
                status, _ = await call(
                    app, "/infer", [{"tensor": [i, 1, 2]}, {"tensor": [3, 4, 5]}]
                )
                assert status == 200
            await async_wait_for(lambda: len(log.events) >= 3, what="3 events at the log")
            pumping.cancel()
        return log.events

    events = asyncio.run(scenario())
    rows = [row for event in events for row in rows_of(event)]
    assert len(rows) == 6
    first = rows[0]
    assert first.pipeline == "p1" and first.pipeline_version == "v-1"
    assert first.inputs == {"tensor": [0, 1, 2]}
    assert first.outputs == {"scaled": [0.0, 0.5, 1.0]}
    assert first.model_versions[0].name == "scaler" and first.model_versions[0].version == "m-1"
    assert len(first.elapsed_ns) == 1 and first.elapsed_ns[0] > 0
    assert first.partition == "edge-7" and first.time > 1_600_000_000_000
    assert row_decoder.decode(row_encoder.encode(first)) == first


def test_a_stuck_local_log_never_blocks_inference(pipeline: LoadedPipeline) -> None:
    async def scenario() -> tuple[LogHandoff, StuckLog, EdgeMetrics]:
        app, svc = service(pipeline, capacity=5)
        log = StuckLog()
        async with asyncio.TaskGroup() as tg:
            pumping = tg.create_task(pump(svc.handoff, log))
            async with asyncio.timeout(30):  # a guard, not a timing assertion
                for i in range(50):
                    status, body = await call(app, "/infer", [{"tensor": [i, i, i]}])
                    assert status == 200 and body[0]["out"]["scaled"] == [i / 2] * 3
                    await asyncio.sleep(0)  # let the pump run, as between real requests
            pumping.cancel()
        return svc.handoff, log, svc.metrics

    handoff, log, metrics = asyncio.run(scenario())
    assert 1 <= log.calls <= 2  # what the pump took (two writes in flight at most) is stuck
    assert handoff.offered + handoff.dropped == 50
    assert len(handoff) == 5 and handoff.dropped >= 40
    assert metrics.records.get() == 50


def event(n: int) -> InferenceEvent:
    return InferenceEvent(
        time=n,
        pipeline="p",
        pipeline_version="v",
        records=1,
        inputs={"x": [n]},
        outputs={"y": [n]},
        elapsed_ns=(1,),
        model_versions=(ModelUsed("m", "1", "ab"),),
        partition="e",
    )


def test_hand_off_drops_and_counts_when_full() -> None:
    handoff = LogHandoff(3)
    assert [handoff.offer(event(i)) for i in range(5)] == [True, True, True, False, False]
    assert (handoff.offered, handoff.dropped, len(handoff)) == (3, 2, 3)
    assert [e.time for e in handoff.take_nowait(2)] == [0, 1]
    assert handoff.offer(event(9))
    log = RecordingLog()
    assert asyncio.run(drain(handoff, log)) == 2
    assert [e.time for e in log.events] == [2, 9]


def test_the_quick_path_answers_as_asgi_does(pipeline: LoadedPipeline) -> None:
    """``answer_now`` (the protocol's quick path) and the ASGI app give the same answers,
    and it declines (None, nothing done) what must run off the loop."""
    metrics = EdgeMetrics()
    svc = InferenceService(LogHandoff(100), metrics, partition="edge-7")
    svc.pipeline = pipeline
    app = EdgeApp(svc, metrics, max_body=1024)
    pipeline.cost = RunCost()  # as just loaded, not measured
    headers = [(b"content-type", b"application/json")]
    body = json.dumps([{"tensor": [1, 2, 3]}]).encode()
    assert app.answer_now("POST", "/infer", headers, body) is None  # cost not measured yet
    assert len(svc.handoff) == 0 and metrics.requests.values == {}
    pipeline.cost.observe(3, 300)
    reply = app.answer_now("POST", "/infer", headers, body)
    assert reply is not None and reply.status == 200
    assert json.loads(reply.body)[0]["out"] == {"scaled": [0.5, 1.0, 1.5]}  # type: ignore[arg-type]
    assert len(svc.handoff) == 1 and metrics.records.get() == 1
    too_big = app.answer_now("POST", "/infer", headers, b" " * 2000 + body)
    assert too_big is not None and too_big.status == 413  # EDGEPUB_MAX_BODY holds here too
    assert (b"connection", b"close") in (too_big.extra or [])
    ready = app.answer_now("GET", "/v2/health/ready", [], b"")
    assert ready is not None and json.loads(ready.body) == {"ready": True}  # type: ignore[arg-type]
    gone = app.answer_now("GET", "/nowhere", [], b"")
    assert gone is not None and gone.status == 404
