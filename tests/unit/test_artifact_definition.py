"""What registry-push decides from a PublishRequested alone: names, layers, the pipeline
definition, and the retry policy (services/registry_push/definition.py, handlers.py)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgepub.services.registry_push import definition
from edgepub.services.registry_push.handlers import retry_delay, unreachable_reason
from edgepub.shared import artifact, schemas
from edgepub.shared.engine_config import Engine, EngineConfig
from edgepub.shared.errors import EmptyPipelineError, InvalidNameError, RegistryUnavailableError
from edgepub.shared.oci import RegistryUnreachableError
from edgepub.shared.schemas import ModelVersion, PipelineVersion, PublishRequested, TensorSpec
from edgepub.shared.settings import RegistrySettings

VERSION = "6c3d9899-1335-456b-aaa0-52d03a017cc4"
SETTINGS = RegistrySettings(registry="127.0.0.1:5000", repository="edgepub", engine_image="e:1")


def model(name: str, content: bytes, file_name: str = "model.onnx") -> ModelVersion:
    return ModelVersion(
        name=name,
        version=f"{name}-v1",
        sha256=hashlib.sha256(content).hexdigest(),
        size=len(content),
        file_name=file_name,
        inputs=(TensorSpec(name="x", dtype="float32", shape=(None, 4)),),
        outputs=(TensorSpec(name="y", dtype="int64", shape=(None,)),),
    )


def request(*steps: ModelVersion, pipeline: str = "edge-pipeline") -> PublishRequested:
    return PublishRequested(
        publish_id=7,
        pipeline_version=PipelineVersion(
            id=3,
            name=VERSION,
            pipeline_name=pipeline,
            steps=steps,
            steps_key="k",
            created_at=datetime(2024, 1, 1, tzinfo=UTC),
        ),
        engine_config=EngineConfig(engine=Engine(cpu=2)),
        requested_at=datetime(2024, 1, 1, tzinfo=UTC),
        created_on_version="0.1.0",
    )


def test_plan_names() -> None:
    plan = definition.plan(request(model("m", b"1")), SETTINGS)
    assert plan.pipeline_repository == "edgepub/pipelines/edge-pipeline"
    assert plan.chart_repository == "edgepub/charts/edge-pipeline"
    assert plan.version == VERSION
    assert plan.chart_version == f"0.0.1-{VERSION}"
    assert plan.pipeline_url == f"127.0.0.1:5000/edgepub/pipelines/edge-pipeline:{VERSION}"
    assert plan.chart_url == "oci://127.0.0.1:5000/edgepub/charts/edge-pipeline"
    assert plan.chart.image == "e:1"
    assert plan.chart.pipeline_url == plan.pipeline_url


def test_definition_carries_every_step() -> None:
    a, b = model("a", b"aa", "a.onnx"), model("b", b"bbb", "b.onnx")
    plan = definition.plan(request(a, b), SETTINGS)
    decoded = schemas.definition_decoder.decode(plan.config_json())
    assert decoded == plan.definition
    assert decoded.pipeline_name == "edge-pipeline"
    assert decoded.pipeline_version == VERSION and decoded.pipeline_version_id == 3
    assert decoded.engine_config == {"engine": {"cpu": 2}}
    assert [(s.model_name, s.sha256, s.size, s.file_name) for s in decoded.steps] == [
        ("a", a.sha256, 2, "a.onnx"),
        ("b", b.sha256, 3, "b.onnx"),
    ]
    assert decoded.steps[0].inputs == a.inputs and decoded.steps[0].outputs == a.outputs
    assert [layer.media_type for layer in plan.layers] == [artifact.ONNX_MODEL_MEDIA_TYPE] * 2


def test_config_bytes_are_deterministic() -> None:
    one = definition.plan(request(model("a", b"1")), SETTINGS).config_json()
    two = definition.plan(request(model("a", b"1")), SETTINGS).config_json()
    assert one == two


def test_one_layer_per_file_even_when_steps_share_it() -> None:
    a = model("a", b"same", "m.onnx")
    a_again = model("a2", b"same", "other-name.onnx")
    plan = definition.plan(request(a, a_again, a), SETTINGS)
    assert [layer.title for layer in plan.layers] == ["m.onnx"]
    assert [s.file_name for s in plan.definition.steps] == ["m.onnx"] * 3
    assert plan.chart.models_size == 4


def test_different_files_with_one_name_get_distinct_titles() -> None:
    a, b = model("a", b"first"), model("b", b"second")
    plan = definition.plan(request(a, b), SETTINGS)
    titles = [layer.title for layer in plan.layers]
    assert titles == ["model.onnx", f"model-{b.sha256[:12]}.onnx"]
    assert [s.file_name for s in plan.definition.steps] == titles


@given(st.lists(st.sampled_from(["m.onnx", "m", "a/b.onnx", "..x", ""]), min_size=1, max_size=6))
def test_titles_are_always_distinct_and_safe(names: list[str]) -> None:
    models = [model(f"n{i}", f"c{i}".encode(), name) for i, name in enumerate(names)]
    layers = definition.model_layers(models)
    titles = [layer.title for layer in layers]
    assert len(set(titles)) == len(titles) == len(models)
    assert all("/" not in t and not t.startswith(".") and t for t in titles)


def test_empty_pipeline_is_refused_with_the_fix() -> None:
    with pytest.raises(EmptyPipelineError, match="add_model_step"):
        definition.plan(request(), SETTINGS)


def test_a_pipeline_name_that_cannot_be_a_path_is_refused() -> None:
    with pytest.raises(InvalidNameError, match="Edge_Pipeline"):
        definition.plan(request(model("a", b"1"), pipeline="Edge_Pipeline"), SETTINGS)


def test_retry_delay_backs_off_and_never_passes_the_deadline() -> None:
    delays = [retry_delay(n, now=0.0, deadline=1000.0, cap=10.0) for n in range(1, 8)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0, 10.0, 10.0]
    assert retry_delay(5, now=998.0, deadline=1000.0, cap=10.0) == 2.0
    assert retry_delay(5, now=1000.0, deadline=1000.0, cap=10.0) == 0.05


def test_unreachable_reason_names_the_registry_the_time_and_the_cause() -> None:
    exc = RegistryUnreachableError("127.0.0.1:5000", "connection refused (GET /v2/)")
    reason = unreachable_reason(exc, "127.0.0.1:5000", 600.2)
    assert reason.startswith(
        "registry 127.0.0.1:5000 unreachable for 600 s: connection refused (GET /v2/); "
        "check that it is running and that EDGEPUB_REGISTRY=127.0.0.1:5000"
    )
    plain = unreachable_reason(RegistryUnavailableError("HTTP 503"), "r:1", 3)
    assert "unreachable for 3 s: HTTP 503" in plain
