"""Publishing end to end across real processes: SDK -> publish service -> registry-push ->
registry, with state asserted in KV and artifacts asserted in the registry."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import nats
import pytest

from edgepub import (
    Client,
    DeploymentConfigBuilder,
    EmptyPipelineError,
    InvalidModelError,
    InvalidNameError,
    NotFoundError,
)
from edgepub.samples import house_price_model
from edgepub.shared import bus, rpc, subjects
from edgepub.shared.artifact import parse_reference
from edgepub.shared.errors import ServiceUnavailableError
from edgepub.shared.oci import RegistryClient
from edgepub.shared.schemas import (
    ModelRef,
    PublishCreateRequest,
    PublishList,
    PublishListRequest,
    PublishRecord,
    definition_decoder,
)
from support.kv import publish_records
from support.servers import NatsServer, RegistryServer
from support.services import OpsServices

pytestmark = pytest.mark.timeout(180)


def test_seed_publish_example(
    client: Client, model_file: Path, registry: RegistryServer, nats_server: NatsServer
) -> None:
    """The seed's "Publish a Pipeline Example", with only the import changed."""
    m2 = client.upload_model("house-price-rf", model_file)
    wl = client

    # set the configuration
    deployment_config = DeploymentConfigBuilder().replica_count(1).cpus(0.5).memory("900Mi").build()
    # build the pipeline
    pipeline = wl.build_pipeline("publish-example")
    # add a model as a model step
    pipeline.add_model_step(m2)
    publish = pipeline.publish(deployment_config)

    assert publish.status == "Published"
    assert publish.pipeline_name == "publish-example"
    assert publish.created_by == "admin"
    assert publish.engine_config == deployment_config
    assert publish.pipeline_url == (
        f"{registry.address}/edgepub/pipelines/publish-example:{publish.pipeline_version_name}"
    )
    assert publish.helm["version"] == f"0.0.1-{publish.pipeline_version_name}"
    assert publish.helm["chart"].endswith("/edgepub/charts/publish-example")
    assert "docker run" in repr(publish) and "<table" in publish._repr_html_()

    listed = pipeline.publishes()
    assert [p.id for p in listed] == [publish.id]
    assert "<table" in listed._repr_html_()

    # The artifact is in the registry, its config names the model, its layer is the file.
    ref = parse_reference(publish.pipeline_url)
    reg = RegistryClient(registry.settings())
    manifest, _ = reg.manifest(ref.repository, publish.pipeline_version_name)
    definition = definition_decoder.decode(reg.blob(ref.repository, manifest["config"]["digest"]))
    assert [s.model_name for s in definition.steps] == ["house-price-rf"]
    assert [layer["digest"] for layer in manifest["layers"]] == [f"sha256:{m2.sha}"]
    assert reg.blob(ref.repository, f"sha256:{m2.sha}") == model_file.read_bytes()

    # KV holds exactly this publish, Published.
    records = publish_records(nats_server)
    assert [(r.id, r.status) for r in records] == [(publish.id, "Published")]


def test_unchanged_steps_reuse_the_pipeline_version(client: Client, model_file: Path) -> None:
    model = client.upload_model("rf", model_file)
    again = client.upload_model("rf", model_file)
    assert again.version == model.version  # same bytes, same name: same version
    pipeline = client.build_pipeline("reuse").add_model_step(model)
    first = pipeline.publish(progress=False)
    second = pipeline.publish(progress=False)
    assert second.id != first.id
    assert second.pipeline_version_id == first.pipeline_version_id
    assert second.pipeline_version_name == first.pipeline_version_name
    assert [p.id for p in pipeline.publishes()] == [first.id, second.id]


def test_same_request_sent_twice_creates_one_publish(
    client: Client, model_file: Path, nats_server: NatsServer
) -> None:
    model = client.upload_model("rf", model_file)
    client.build_pipeline("twice")
    request = PublishCreateRequest(
        request_id=str(uuid.uuid4()),
        pipeline_name="twice",
        steps=(ModelRef(name=model.name, version=model.version),),
    )

    async def send_concurrently() -> list[PublishRecord]:
        nc = await bus.connect(nats_server.settings(), name="test")
        try:
            subject = subjects.request("admin", subjects.VERB_PUBLISH_CREATE)
            calls = [rpc.call(nc, subject, request, PublishRecord) for _ in range(5)]
            return list(await asyncio.gather(*calls))
        finally:
            await nc.close()

    replies = asyncio.run(send_concurrently())
    assert len({r.id for r in replies}) == 1
    later = asyncio.run(send_concurrently())
    assert {r.id for r in later} == {replies[0].id}
    assert len(publish_records(nats_server)) == 1


def test_bad_models_are_refused_with_the_file_and_reason(client: Client, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a model")
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(house_price_model(tmp_path / "ok.onnx", n_estimators=2).read_bytes()[:500])
    with pytest.raises(InvalidModelError, match=r"notes\.txt: not a loadable ONNX model"):
        client.upload_model("text", text)
    with pytest.raises(InvalidModelError, match=r"corrupt\.onnx: not a loadable ONNX model"):
        client.upload_model("corrupt", corrupt)
    with pytest.raises(InvalidModelError, match=r"missing\.onnx: no such file"):
        client.upload_model("missing", tmp_path / "missing.onnx")
    with pytest.raises(InvalidNameError, match="DNS-safe"):
        client.upload_model("Not_DNS", text)
    with pytest.raises(NotFoundError):
        client.get_model("text")


def test_empty_and_unknown_pipelines(
    client: Client, model_file: Path, nats_server: NatsServer
) -> None:
    with pytest.raises(EmptyPipelineError, match="has no steps"):
        client.build_pipeline("empty").publish()
    model = client.upload_model("rf", model_file)

    async def raw(request: PublishCreateRequest) -> PublishRecord:
        nc = await bus.connect(nats_server.settings(), name="test")
        try:
            subject = subjects.request("admin", subjects.VERB_PUBLISH_CREATE)
            return await rpc.call(nc, subject, request, PublishRecord)
        finally:
            await nc.close()

    step = (ModelRef(name=model.name, version=model.version),)
    with pytest.raises(NotFoundError, match="unknown pipeline 'nope'"):
        asyncio.run(
            raw(
                PublishCreateRequest(request_id=str(uuid.uuid4()), pipeline_name="nope", steps=step)
            )
        )
    with pytest.raises(EmptyPipelineError):  # the service checks too, not only the SDK
        asyncio.run(
            raw(PublishCreateRequest(request_id=str(uuid.uuid4()), pipeline_name="empty", steps=()))
        )
    missing = (ModelRef(name="ghost", version=str(uuid.uuid4())),)
    with pytest.raises(NotFoundError, match="model 'ghost'"):
        asyncio.run(
            raw(
                PublishCreateRequest(
                    request_id=str(uuid.uuid4()), pipeline_name="empty", steps=missing
                )
            )
        )
    assert publish_records(nats_server) == []


def test_a_user_cannot_speak_for_another(
    client: Client, nats_server: NatsServer, ops: OpsServices
) -> None:
    """created_by comes from the subject, which the broker only lets its owner use: the
    server refuses the forged subject (while the same call under the user's own name is
    answered), and no publish is created."""
    errors: list[str] = []

    async def forge() -> tuple[int, int]:
        s = nats_server.settings()

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc).lower())

        nc = await nats.connect(
            s.url,
            user=s.user,
            password=s.password,
            error_cb=on_error,
            inbox_prefix=subjects.inbox_prefix("admin"),
        )
        try:
            own = await rpc.call(
                nc,
                subjects.request("admin", subjects.VERB_PUBLISH_LIST),
                PublishListRequest(pipeline_name="forged"),
                PublishList,
            )
            with pytest.raises(ServiceUnavailableError):
                await rpc.call(
                    nc,
                    subjects.request("mallory", subjects.VERB_PUBLISH_CREATE),
                    PublishCreateRequest(
                        request_id=str(uuid.uuid4()), pipeline_name="forged", steps=()
                    ),
                    PublishRecord,
                    timeout=2,
                )
            return len(own.publishes), len(errors)
        finally:
            await nc.close()

    client.build_pipeline("forged")
    own_count, _ = asyncio.run(forge())
    assert own_count == 0
    forged = subjects.request("mallory", subjects.VERB_PUBLISH_CREATE).lower()
    assert any("permissions violation" in e and forged in e for e in errors), errors
    assert publish_records(nats_server) == []
