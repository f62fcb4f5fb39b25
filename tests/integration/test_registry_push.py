"""registry-push across real processes: PublishRequested in, artifacts in the registry and
Pushed out; read everything back from the registry and check every digest."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from edgepub.services.registry_push import chart as chart_mod
from edgepub.shared import artifact
from edgepub.shared.oci import RegistryClient
from edgepub.shared.schemas import Pushed, PushFailed, PushStarted
from support.registry_push import (
    Bus,
    PushService,
    model_version,
    onnx_model,
    publish_requested,
    read_back_pipeline,
)
from support.servers import RegistryServer
from support.waiting import wait_for

pytestmark = pytest.mark.timeout(120)


def test_publish_requested_ends_pushed_with_both_artifacts(
    push_service: PushService,
    registry: RegistryServer,
    test_bus: Bus,
    reader: RegistryClient,
    tmp_path: Path,
) -> None:
    service = push_service.start()
    first = test_bus.put_model("scaler", onnx_model(4, seed=1), "scaler.onnx")
    second = test_bus.put_model("classifier", onnx_model(4096, seed=2), "model.onnx")
    req = publish_requested([first, second, first], publish_id=11)
    test_bus.send(req)

    pushed = test_bus.wait_outcome(11)
    assert isinstance(pushed, Pushed), pushed
    version = req.pipeline_version.name
    reg = registry.address
    assert pushed.pipeline_url == f"{reg}/edgepub/pipelines/edge-pipeline:{version}"
    assert pushed.engine_url == "edgepub-edge:0.1.0"
    assert pushed.helm.chart == f"oci://{reg}/edgepub/charts/edge-pipeline"
    assert pushed.helm.version == f"0.0.1-{version}"
    assert pushed.helm.reference == f"{reg}/edgepub/charts@{pushed.chart_digest}"
    assert pushed.helm.values == {}
    events = test_bus.outcomes(11)
    assert isinstance(events[0], PushStarted) and events[0].attempt == 1

    definition = read_back_pipeline(reader, pushed, [first, second], tmp_path)
    assert [s.model_name for s in definition.steps] == ["scaler", "classifier", "scaler"]
    assert [s.file_name for s in definition.steps] == ["scaler.onnx", "model.onnx", "scaler.onnx"]
    assert definition.pipeline_version == version
    assert definition.engine_config == req.engine_config
    assert definition.steps[1].inputs == second.inputs

    # The chart: Helm's media types, a tgz whose Chart.yaml has the version.
    manifest, digest = reader.manifest("edgepub/charts/edge-pipeline", f"0.0.1-{version}")
    assert digest == pushed.chart_digest
    assert "artifactType" not in manifest
    assert manifest["config"]["mediaType"] == artifact.HELM_CONFIG_MEDIA_TYPE
    (layer,) = manifest["layers"]
    assert layer["mediaType"] == artifact.HELM_CHART_MEDIA_TYPE
    config = json.loads(reader.blob("edgepub/charts/edge-pipeline", manifest["config"]["digest"]))
    assert config["name"] == "edge-pipeline" and config["version"] == f"0.0.1-{version}"
    files = chart_mod.unpack(reader.blob("edgepub/charts/edge-pipeline", layer["digest"]))
    assert f'version: "0.0.1-{version}"' in files["edge-pipeline/Chart.yaml"]
    assert pushed.pipeline_url in files["edge-pipeline/values.yaml"]
    assert "name: engine-svc" in files["edge-pipeline/templates/service.yaml"]

    logged = {e["event"] for e in service.events() if e.get("publish_id") == 11}
    assert {"push_started", "layer_pushed", "pipeline_pushed", "chart_pushed"} <= logged
    assert all(
        e.get("pipeline") == "edge-pipeline" for e in service.events() if e.get("publish_id")
    )


def test_the_same_request_twice_changes_nothing(
    push_service: PushService,
    registry: RegistryServer,
    test_bus: Bus,
    reader: RegistryClient,
    tmp_path: Path,
) -> None:
    service = push_service.start()
    model = test_bus.put_model("m", onnx_model(1024, seed=3))
    req = publish_requested([model], publish_id=5)
    test_bus.send(req, msg_id="first")
    first = test_bus.wait_outcome(5)
    assert isinstance(first, Pushed)
    test_bus.send(req, msg_id="second")  # a different message with the same content
    wait_for(lambda: service.count_events("push_done") == 2, timeout=60, what="second push")

    version = req.pipeline_version.name
    assert reader.tags("edgepub/pipelines/edge-pipeline") == [version]
    assert reader.tags("edgepub/charts/edge-pipeline") == [f"0.0.1-{version}"]
    assert reader.tag_digest("edgepub/pipelines/edge-pipeline", version) == first.pipeline_digest
    assert reader.tag_digest("edgepub/charts/edge-pipeline", f"0.0.1-{version}") == (
        first.chart_digest
    )
    pushed = [e for e in service.events() if e["event"] == "push_done"]
    assert pushed[0]["chart_digest"] == pushed[1]["chart_digest"]
    second_layers = [e for e in service.events() if e["event"] == "layer_pushed"][
        -2:
    ]  # the model and the chart of the second push
    assert not any(e["uploaded"] for e in second_layers)
    pushed_events = [e for e in test_bus.outcomes(5) if isinstance(e, Pushed)]
    assert pushed_events == [first]  # the second Pushed carried the same message id


def test_model_missing_from_the_object_store(
    push_service: PushService, test_bus: Bus, reader: RegistryClient
) -> None:
    push_service.start()
    present = test_bus.put_model("present", onnx_model(4, seed=11))
    ghost = model_version("ghost", b"never uploaded")
    test_bus.send(publish_requested([present, ghost], publish_id=3))
    failed = test_bus.wait_outcome(3)
    assert isinstance(failed, PushFailed)
    assert failed.code == "not_found"
    assert "model 'ghost'" in failed.reason and "upload_model" in failed.reason
    # Decided before anything was pushed: no chart, no pipeline, no model layer.
    assert reader.tags("edgepub/charts/edge-pipeline") == []
    assert reader.tags("edgepub/pipelines/edge-pipeline") == []
    assert not reader.has_blob("edgepub/pipelines/edge-pipeline", present.digest)


def test_empty_pipeline_fails_with_the_fix(push_service: PushService, test_bus: Bus) -> None:
    push_service.start()
    test_bus.send(publish_requested([], publish_id=4))
    failed = test_bus.wait_outcome(4)
    assert isinstance(failed, PushFailed)
    assert failed.code == "empty_pipeline" and "add_model_step" in failed.reason


def test_damaged_model_bytes_fail_naming_the_model(
    push_service: PushService, test_bus: Bus, reader: RegistryClient, tmp_path: Path
) -> None:
    push_service.start()
    good = onnx_model(4096, seed=9)
    model = model_version("damaged", good)
    test_bus.put_object(model.sha256, bytes(reversed(good)))  # same size, other bytes
    test_bus.send(publish_requested([model], publish_id=6))

    failed = test_bus.wait_outcome(6)
    assert isinstance(failed, PushFailed)
    assert failed.code == "digest_mismatch"
    assert failed.reason.startswith("model 'damaged' version") and "upload the model again" in (
        failed.reason
    )
    assert not reader.has_blob("edgepub/pipelines/edge-pipeline", model.digest)
    assert list((tmp_path / "cache").glob(f"*{model.sha256}*")) == []


def test_a_model_the_registry_has_is_not_fetched_again(
    push_service: PushService, test_bus: Bus, reader: RegistryClient
) -> None:
    service = push_service.start()
    model = test_bus.put_model("shared", onnx_model(2048, seed=10))
    test_bus.send(publish_requested([model], publish_id=8, pipeline="first"))
    first = test_bus.wait_outcome(8)
    test_bus.send(publish_requested([model], publish_id=9, pipeline="first"))
    second = test_bus.wait_outcome(9)
    assert isinstance(first, Pushed) and isinstance(second, Pushed)
    sources = [
        e["source"] for e in service.events() if e["event"] == "layer_pushed" and "source" in e
    ]
    assert sources == ["object_store", "registry"]
    tags = [p.pipeline_url.rsplit(":", 1)[1] for p in (first, second)]
    assert reader.tags("edgepub/pipelines/first") == sorted(tags)
