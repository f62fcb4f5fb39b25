"""What the publish service takes from a client that is not the SDK, across real processes.

Requests are built by hand as msgpack maps and sent as the SDK's user. Each bad one must be
answered with a named error whose message ends with the field's path, and leave nothing
behind: no publish, no KV write, nothing for registry-push to choke on. A model that keeps
its tensors in another file is refused by the SDK at upload, and a client that skips the
SDK's check gets a publish that ends Error, never Published.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import onnx
import pytest
from nats.js.errors import NotFoundError

from edgepub import Client, DeploymentConfigBuilder, PublishFailedError
from edgepub.samples import dense_model
from edgepub.shared import bus, rpc, subjects
from edgepub.shared.errors import (
    EdgepubError,
    InvalidNameError,
    InvalidRequestError,
    ModelExternalDataError,
)
from edgepub.shared.oci import RegistryClient
from edgepub.shared.onnx_scan import Scan
from support.kv import publish_records
from support.servers import NatsServer, RegistryServer
from support.services import OpsServices

pytestmark = pytest.mark.timeout(180)

KV_BUCKETS = subjects.KV_PUBLISH_SERVICE


class Raw:
    """Hand-built requests as the SDK's user, and the state they may not change (read as
    the publish service's user, which owns it)."""

    def __init__(self, nats: NatsServer) -> None:
        self.nats = nats
        self.user = nats.sdk_user
        self.loop = asyncio.new_event_loop()
        self.nc = self.loop.run_until_complete(bus.connect(nats.settings(), name="raw-client"))
        self.owner = self.loop.run_until_complete(
            bus.connect(nats.settings("publish"), name="raw-client-state")
        )

    def close(self) -> None:
        self.loop.run_until_complete(self.nc.close())
        self.loop.run_until_complete(self.owner.close())
        self.loop.close()

    def call(self, verb: str, body: Any) -> Any:
        """Send ``body`` (a dict, or bytes as they are) for ``verb``: the decoded answer, or
        the service's error raised as its class."""
        data = body if isinstance(body, bytes) else msgspec.msgpack.encode(body)
        subject = subjects.request(self.user, verb)
        raw = msgspec.Raw(data)  # sent verbatim
        reply = self.loop.run_until_complete(rpc.call(self.nc, subject, raw, msgspec.Raw))  # type: ignore[arg-type]
        return msgspec.msgpack.decode(reply)

    def refused(self, verb: str, body: Any) -> EdgepubError:
        with pytest.raises(EdgepubError) as err:
            self.call(verb, body)
        return err.value

    def state(self) -> dict[str, Any]:
        """Every KV key's revision, and how many messages the work stream holds."""
        return self.loop.run_until_complete(self._state())

    async def _state(self) -> dict[str, Any]:
        js = self.owner.jetstream()
        out: dict[str, Any] = {}
        for bucket in KV_BUCKETS:
            try:
                kv = await js.key_value(bucket)
            except Exception:  # not made yet: nothing in it
                out[bucket] = {}
                continue
            try:
                keys = await kv.keys()
            except Exception:  # NoKeysError
                keys = []
            out[bucket] = {k: (await kv.get(k)).revision for k in keys}
        out["work_messages"] = (await js.stream_info(subjects.WORK_STREAM)).state.messages
        return out


@pytest.fixture
def raw(ops: OpsServices, nats_server: NatsServer) -> Iterator[Raw]:
    r = Raw(nats_server)
    try:
        yield r
    finally:
        r.close()


def services_unharmed(ops: OpsServices) -> None:
    for name in ("publish", "registry_push"):
        assert ops[name].running(), f"{name} died:\n{ops[name].log_text()[-3000:]}"
    push = ops["registry_push"]
    assert push.count_events("message_poison") == 0
    assert push.count_events("handler_failed") == 0
    assert ops["publish"].count_events("request_failed") == 0


# --- publish.create: engine configs -----------------------------------------------------------

BAD_ENGINE_CONFIGS = [
    # the four that crashed registry-push (issue 7, item 5), then more of their kind
    ({"engine": {"cpu": math.inf}}, "engine_config.engine.cpu"),
    ({"engine": {"cpu": math.nan}}, "engine_config.engine.cpu"),
    ({"engine": "x"}, "engine_config.engine"),
    ({"engine": {"resources": [1]}}, "engine_config.engine.resources"),
    ({"engine": {"cpu": 1e300}}, "engine_config.engine.cpu"),  # published; the edge refused it
    ({"engine": {"cpu": -1}}, "engine_config.engine.cpu"),
    ({"engine": {"cpu": True}}, "engine_config.engine.cpu"),
    ({"engine": {"replicas": 10**9}}, "engine_config.engine.replicas"),
    ({"engine": {"gpu": 10**6}}, "engine_config.engine.gpu"),
    ({"engine": {"resources": {"limits": {"memory": "1Gi\n"}}}}, "resources.limits.memory"),
    ({"engine": {"resources": {"limits": {"memory": "lots"}}}}, "resources.limits.memory"),
    ({"engine": {"resources": {"requests": {"cpu": "1e300"}}}}, "resources.requests.cpu"),
    ({"engine": {"arch": "x86\n"}}, "engine_config.engine.arch"),
    ({"engineAux": {"images": {"i": {"resources": {"limits": {"cpu": math.inf}}}}}}, "images"),
    ([], "engine_config"),
]


def test_engine_configs_no_edge_can_run_are_refused_naming_the_field(
    raw: Raw, client: Client, model_file: Path, ops: OpsServices, nats_server: NatsServer
) -> None:
    model = client.upload_model("rf", model_file)
    client.build_pipeline("p")
    step = {"name": model.name, "version": model.version}

    def body(engine_config: Any) -> dict[str, Any]:
        return {
            "request_id": str(uuid.uuid4()),
            "pipeline_name": "p",
            "steps": [step],
            "engine_config": engine_config,
        }

    before = raw.state()
    for config, path in BAD_ENGINE_CONFIGS:
        err = raw.refused(subjects.VERB_PUBLISH_CREATE, body(config))
        assert isinstance(err, InvalidRequestError), (config, err)
        assert err.code == "invalid_request"
        assert path in err.message and err.message.endswith("`"), (config, err.message)
        assert "`$." in err.message or path == "engine_config"
    assert raw.state() == before
    assert publish_records(nats_server) == []
    services_unharmed(ops)

    # The SDK refuses the same at the call that was wrong.
    with pytest.raises(InvalidRequestError, match=r"cpus must be from 0\.001 to 1024 cores"):
        DeploymentConfigBuilder().cpus(1e300)

    # And the request itself was fine: a config within the limits publishes.
    good = DeploymentConfigBuilder().cpus(1024).replica_count(100).memory("1.5Gi").build()
    record = raw.call(subjects.VERB_PUBLISH_CREATE, body(dict(good)))
    assert record["engine_config"] == good
    publish = client.get_publish(record["id"])
    assert publish.engine_config == good  # the dict the user sees is the one sent
    services_unharmed(ops)


# --- model.register -------------------------------------------------------------------------


def _spec(**changes: Any) -> dict[str, Any]:
    return {"name": "x", "dtype": "float32", "shape": [None, 18], **changes}


BAD_REGISTRATIONS = [
    ({"file_name": "../../../../tmp/x.onnx"}, "$.file_name"),
    ({"file_name": "a/b.onnx"}, "$.file_name"),
    ({"file_name": "a\\b.onnx"}, "$.file_name"),
    ({"file_name": "a\nb.onnx"}, "$.file_name"),
    ({"file_name": "x.onnx\n"}, "$.file_name"),
    ({"file_name": "x" * 5000 + ".onnx"}, "$.file_name"),
    ({"file_name": "model.txt"}, "$.file_name"),
    ({"file_name": ".onnx"}, "$.file_name"),
    ({"sha256": "A" * 64}, "$.sha256"),
    ({"sha256": "a" * 63}, "$.sha256"),
    ({"size": 0}, "$.size"),
    ({"size": 2**40}, "$.size"),
    ({"inputs": [_spec(dtype="float128")]}, "$.inputs[0].dtype"),
    ({"inputs": [_spec(dtype="seq(map(int64,tensor(float)))")]}, "$.inputs[0].dtype"),
    ({"inputs": [_spec(name="x\ny")]}, "$.inputs[0].name"),
    ({"inputs": [_spec(name="n" * 5000)]}, "$.inputs[0].name"),
    ({"inputs": [_spec(name="")]}, "$.inputs[0].name"),
    ({"inputs": [_spec(shape=[1] * 100)]}, "$.inputs[0].shape"),
    ({"inputs": [_spec(shape=[-1])]}, "$.inputs[0].shape[0]"),
    ({"inputs": [_spec(shape=[2**40])]}, "$.inputs[0].shape[0]"),
    ({"inputs": [_spec(shape=["d" * 500])]}, "$.inputs[0].shape[0]"),
    ({"outputs": [_spec(name=f"o{n}") for n in range(2000)]}, "$.outputs"),
    ({"outputs": "x"}, "$.outputs"),
]


def test_model_registrations_are_checked_field_by_field(
    raw: Raw, client: Client, model_file: Path, ops: OpsServices
) -> None:
    uploaded = client.upload_model("rf", model_file)  # the bytes are in the object store
    valid = {
        "name": "raw-model",
        "sha256": uploaded.sha,
        "size": model_file.stat().st_size,
        "file_name": "raw-model.onnx",
        "inputs": msgspec.to_builtins(uploaded.inputs),
        "outputs": msgspec.to_builtins(uploaded.outputs),
    }
    before = raw.state()
    for change, path in BAD_REGISTRATIONS:
        err = raw.refused(subjects.VERB_MODEL_REGISTER, {**valid, **change})
        assert isinstance(err, InvalidRequestError), (change, err)
        assert err.message.endswith(f"`{path}`"), (change, err.message)
    assert raw.state() == before
    services_unharmed(ops)

    # The same registration with every field right is taken.
    registered = raw.call(subjects.VERB_MODEL_REGISTER, valid)
    assert registered["file_name"] == "raw-model.onnx"
    assert client.get_model("raw-model").inputs == uploaded.inputs


# --- names ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["p\n", "p\r\n", "\np", "p "])
def test_names_with_a_trailing_newline_are_not_names(raw: Raw, ops: OpsServices, name: str) -> None:
    before = raw.state()
    for verb, body in (
        (subjects.VERB_PIPELINE_BUILD, {"name": name}),
        (subjects.VERB_MODEL_GET, {"name": name}),
        (subjects.VERB_PUBLISH_LIST, {"pipeline_name": name}),
        (
            subjects.VERB_PUBLISH_CREATE,
            {
                "request_id": str(uuid.uuid4()),
                "pipeline_name": "p",
                "steps": [{"name": name, "version": str(uuid.uuid4())}],
            },
        ),
    ):
        err = raw.refused(verb, body)
        assert isinstance(err, InvalidNameError), (verb, err)
        assert repr(name) in err.message
    assert raw.state() == before
    services_unharmed(ops)


# --- a model whose tensors live in another file -----------------------------------------------


def split_model(tmp_path: Path) -> Path:
    """An MLP saved with its weights in a sibling file, as onnx does for big models."""
    whole = dense_model(tmp_path / "dense.onnx", size_mb=1)
    path = tmp_path / "split" / "dense.onnx"
    path.parent.mkdir()
    onnx.save(
        onnx.load(str(whole)),
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="dense.onnx.data",
        size_threshold=0,
    )
    return path


def object_store_messages(raw: Raw) -> int:
    """Messages in the object stores model bytes go to (the verified one, and an upload
    area where there is one)."""
    buckets = [subjects.OBJECT_STORE_MODELS, getattr(subjects, "OBJECT_STORE_UPLOADS", None)]

    async def count() -> int:
        js = raw.owner.jetstream()
        total = 0
        for bucket in filter(None, buckets):
            with contextlib.suppress(NotFoundError):
                total += (await js.stream_info(f"OBJ_{bucket}")).state.messages
        return total

    return raw.loop.run_until_complete(count())


def test_external_data_is_refused_at_upload_and_never_published(
    raw: Raw,
    client: Client,
    tmp_path: Path,
    ops: OpsServices,
    registry: RegistryServer,
    nats_server: NatsServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    split = split_model(tmp_path)
    before, stored = raw.state(), object_store_messages(raw)
    with pytest.raises(
        ModelExternalDataError, match=r"dense\.onnx\.data.*save_as_external_data=False"
    ):
        client.upload_model("split", split)
    assert raw.state() == before and object_store_messages(raw) == stored  # nothing uploaded

    # A client without the SDK's check: the upload and the registration go through...
    import edgepub.model_file

    monkeypatch.setattr(edgepub.model_file, "scan_file", lambda path: Scan())
    model = client.upload_model("split", split)
    pipeline = client.build_pipeline("split").add_model_step(model)
    # ... but the publish ends Error, saying why; the registry never holds the file.
    with pytest.raises(PublishFailedError, match=r"external data.*\[model_external_data\]"):
        pipeline.publish(progress=False, timeout=60)
    (record,) = publish_records(nats_server)
    assert record.status == "Error" and record.error and "dense.onnx.data" in record.error
    reader = RegistryClient(registry.settings())
    try:
        assert not reader.has_blob("edgepub/pipelines/split", f"sha256:{model.sha}")
        assert reader.tags("edgepub/pipelines/split") == []
    finally:
        reader.close()
    services_unharmed(ops)
