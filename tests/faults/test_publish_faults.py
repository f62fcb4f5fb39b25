"""Publishing on a bad day, end to end through the SDK: the registry gone and back, gone
for good, refusing our password, the publish service or the broker restarted mid-publish,
registry-push unable to write its cache. Each test asserts on what ends up in KV and in
the registry."""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Callable, Iterator, MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from edgepub import Client, PublishFailedError
from edgepub.samples import house_price_model
from edgepub.services.publish.state import State
from edgepub.services.publish.transitions import steps_key
from edgepub.shared import bus, rpc, subjects
from edgepub.shared.artifact import parse_reference
from edgepub.shared.oci import RegistryClient
from edgepub.shared.schemas import ModelRef, PipelineVersion, PublishCreateRequest, PublishRecord
from support.kv import publish_records
from support.registry_push import start_unprivileged
from support.servers import NatsServer, RegistryServer
from support.services import OpsServices
from support.waiting import wait_for

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return house_price_model(tmp_path_factory.mktemp("models") / "rf.onnx", n_estimators=5)


@pytest.fixture
def client(ops: OpsServices, nats_server: NatsServer) -> Iterator[Client]:
    s = nats_server.settings()
    with Client(s.url, s.user, s.password) as c:
        yield c


class Background:
    """Run ``fn`` on a thread; ``result()`` re-raises what it raised."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._out: dict[str, Any] = {}

        def target() -> None:
            try:
                self._out["value"] = fn()
            except BaseException as exc:
                self._out["error"] = exc

        self._thread = threading.Thread(target=target, daemon=True)
        self._thread.start()

    def done(self) -> bool:
        return not self._thread.is_alive()

    def result(self, timeout: float) -> Any:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), f"still running after {timeout}s"
        if "error" in self._out:
            raise self._out["error"]
        return self._out["value"]


def assert_in_registry(registry: RegistryServer, pipeline_url: str, model_sha: str) -> None:
    ref = parse_reference(pipeline_url)
    reg = RegistryClient(registry.settings())
    manifest, _ = reg.manifest(ref.repository, ref.tag or "")
    assert [layer["digest"] for layer in manifest["layers"]] == [f"sha256:{model_sha}"]
    reg.blob(ref.repository, f"sha256:{model_sha}")  # verifies the digest


def publish_through_outage(
    client: Client,
    model_file: Path,
    registry: RegistryServer,
    nats_server: NatsServer,
    ops: OpsServices,
    name: str,
    meanwhile: Callable[[], None] | None = None,
) -> None:
    """Publish with the registry stopped; once registry-push is retrying, run
    ``meanwhile``, bring the registry back, and check the publish ends whole: Published in
    KV (once) and an intact artifact in the registry."""
    model = client.upload_model("rf", model_file)
    pipeline = client.build_pipeline(name).add_model_step(model)
    registry.stop()
    pending = Background(lambda: pipeline.publish(progress=False))
    wait_for(
        lambda: ops["registry_push"].count_events("message_retry") >= 1,
        60,
        "registry-push retrying the unreachable registry",
    )
    if meanwhile is not None:
        meanwhile()
    registry.start()
    publish = pending.result(180)
    assert publish.status == "Published"
    assert [(r.id, r.status) for r in publish_records(nats_server)] == [(publish.id, "Published")]
    assert publish.pipeline_url is not None
    assert_in_registry(registry, publish.pipeline_url, model.sha)


def test_registry_down_at_start_and_back_before_the_deadline(
    client: Client,
    model_file: Path,
    registry: RegistryServer,
    nats_server: NatsServer,
    ops: OpsServices,
) -> None:
    publish_through_outage(client, model_file, registry, nats_server, ops, "outage")


def test_registry_down_past_the_deadline_ends_in_error(
    model_file: Path,
    registry: RegistryServer,
    nats_server: NatsServer,
    ops: OpsServices,
) -> None:
    ops.start("registry_push", env={"EDGEPUB_REGISTRY_DEADLINE_S": "3"})
    s = nats_server.settings()
    with Client(s.url, s.user, s.password) as client:
        model = client.upload_model("rf", model_file)
        pipeline = client.build_pipeline("gone").add_model_step(model)
        registry.stop()
        with pytest.raises(PublishFailedError, match=r"unreachable.*\[registry_unavailable\]"):
            pipeline.publish(progress=False)
    [record] = publish_records(nats_server)
    assert record.status == "Error" and record.error and "unreachable" in record.error


def test_wrong_registry_password_ends_in_error_and_is_never_logged(
    model_file: Path,
    registry: RegistryServer,
    nats_server: NatsServer,
    ops: OpsServices,
) -> None:
    wrong = "wrong-password-0123456789abcdef"
    ops.start("registry_push", env={"EDGEPUB_REGISTRY_PASSWORD": wrong})
    s = nats_server.settings()
    with Client(s.url, s.user, s.password) as client:
        model = client.upload_model("rf", model_file)
        pipeline = client.build_pipeline("badpass").add_model_step(model)
        with pytest.raises(PublishFailedError, match=r"(?i)credentials.*\[registry_auth\]"):
            pipeline.publish(progress=False)
    [record] = publish_records(nats_server)
    assert record.status == "Error"
    assert wrong not in (record.error or "")
    ops.assert_no_secret(wrong, registry.password)


def test_publish_service_down_when_the_request_is_sent(
    model_file: Path,
    registry: RegistryServer,
    nats_server: NatsServer,
    ops: OpsServices,
) -> None:
    """No publish service runs when the SDK sends its request: the broker says nobody
    answers (no responders, not a timeout), and only then is the service started. The
    SDK re-sends the same request until it answers: one publish, Published."""
    s = nats_server.settings()
    with Client(s.url, s.user, s.password) as client:
        model = client.upload_model("rf", model_file)
        pipeline = client.build_pipeline("restarted").add_model_step(model)
        ops["publish"].kill()
        with capture_logs() as sdk_logs:

            def unanswered() -> list[MutableMapping[str, Any]]:
                return [
                    e
                    for e in list(sdk_logs)
                    if e["event"] == "request_unanswered"
                    and e.get("verb") == subjects.VERB_PUBLISH_CREATE
                ]

            pending = Background(lambda: pipeline.publish(progress=False))
            wait_for(
                lambda: unanswered() or pending.done(),
                30,
                "the SDK's first publish request to go unanswered",
            )
            assert not pending.done(), f"publish() ended with no service: {pending.result(0)}"
            first = unanswered()[0]
            assert not ops["publish"].running()  # and it has not run since the kill
            assert first["error"].startswith("no publish service answers "), first
            ops.start("publish")
            publish = pending.result(120)
    assert publish.status == "Published"
    assert [(r.id, r.status) for r in publish_records(nats_server)] == [(publish.id, "Published")]


def test_broker_restart_mid_publish(
    client: Client,
    model_file: Path,
    registry: RegistryServer,
    nats_server: NatsServer,
    ops: OpsServices,
) -> None:
    """nats-server restarted (same store) while the push waits on a stopped registry."""

    def restart_broker() -> None:
        nats_server.stop()
        nats_server.start()

    publish_through_outage(
        client, model_file, registry, nats_server, ops, "broker", meanwhile=restart_broker
    )


def test_idle_services_stop_cleanly_on_sigterm(ops: OpsServices) -> None:
    """With nothing in hand: exit 0 and say so. (With a push in hand: test_registry_push_faults'
    test_sigterm_mid_push_finishes_the_push_and_exits_0.)"""
    for name in ("publish", "registry_push"):
        assert ops[name].terminate() == 0, ops[name].log_text()[-2000:]
        assert ops[name].count_events("service_stopped") == 1


def test_resent_request_finishes_a_publish_a_crash_left_pending(
    client: Client,
    model_file: Path,
    registry: RegistryServer,
    nats_server: NatsServer,
    ops: OpsServices,
) -> None:
    """A publish service killed after writing the publish but before asking for the push
    leaves it PendingPublish; the SDK's re-sent request (same id) must finish it."""
    model = client.upload_model("rf", model_file)
    client.build_pipeline("crashed")
    request_id = str(uuid.uuid4())
    steps = (model.record,)
    now = datetime.now(UTC)

    async def leave_crash_state() -> None:
        nc = await bus.connect(nats_server.settings("publish"), name="test")
        try:
            state = await State.open(nc.jetstream())
            version = PipelineVersion(
                id=900,
                name=str(uuid.uuid4()),
                pipeline_name="crashed",
                steps=steps,
                steps_key=steps_key(steps),
                created_at=now,
            )
            await state.versions.create("900", version)
            assert await state.requests.claim(request_id, 77) == 77
            await state.publishes.create(
                "77",
                PublishRecord(
                    id=77,
                    pipeline_name="crashed",
                    pipeline_version_id=900,
                    pipeline_version_name=version.name,
                    status="PendingPublish",
                    request_id=request_id,
                    created_at=now,
                    updated_at=now,
                ),
            )
        finally:
            await nc.close()

    async def resend() -> PublishRecord:
        nc = await bus.connect(nats_server.settings(), name="test")
        try:
            return await rpc.call(
                nc,
                subjects.request("admin", subjects.VERB_PUBLISH_CREATE),
                PublishCreateRequest(
                    request_id=request_id,
                    pipeline_name="crashed",
                    steps=(ModelRef(name=model.name, version=model.version),),
                ),
                PublishRecord,
            )
        finally:
            await nc.close()

    asyncio.run(leave_crash_state())
    assert asyncio.run(resend()).id == 77
    wait_for(
        lambda: [(r.id, r.status) for r in publish_records(nats_server)] == [(77, "Published")],
        60,
        "the pending publish to finish",
    )
    [record] = publish_records(nats_server)
    assert record.pipeline_url is not None
    assert_in_registry(registry, record.pipeline_url, model.sha)


def test_a_cache_directory_registry_push_may_not_write_ends_in_error(
    model_file: Path,
    registry: RegistryServer,
    nats_server: NatsServer,
    ops: OpsServices,
    tmp_path: Path,
) -> None:
    """Not an edgepub error (a PermissionError), so retried; after EDGEPUB_PUSH_MAX_DELIVER
    deliveries the publish ends Error with the last reason, and publish() says it (before,
    the request was naked forever and publish() never returned)."""
    cache = tmp_path / "push-cache"
    env = {
        "EDGEPUB_CACHE_DIR": str(cache),
        "EDGEPUB_PUSH_MAX_DELIVER": "2",
        "EDGEPUB_REGISTRY_RETRY_MAX_S": "1",
    }
    before = ops["registry_push"].count_events("cache_ready")  # the same log file
    push = start_unprivileged(ops, "registry_push", env)
    wait_for(lambda: push.count_events("cache_ready") > before, 30, "registry-push's cache")
    (cache / "models").chmod(0o500)
    s = nats_server.settings()
    try:
        with Client(s.url, s.user, s.password) as client:
            model = client.upload_model("rf", model_file)
            pipeline = client.build_pipeline("nocache").add_model_step(model)
            pending = Background(lambda: pipeline.publish(progress=False))
            with pytest.raises(PublishFailedError, match=r"Permission denied.*\[internal\]"):
                pending.result(90)
    finally:
        (cache / "models").chmod(0o700)
    [record] = publish_records(nats_server)
    assert record.status == "Error" and record.error
    assert "registry-push gave up after 2 attempts" in record.error
    assert f"EDGEPUB_CACHE_DIR={cache}" in record.error
