"""registry-push on a bad day, across real processes: the registry down (back in time, or
not), refused credentials, the service killed mid-push. Every test ends by reading the
registry back, so "Pushed" always means an intact artifact."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from edgepub.shared.oci import RegistryClient
from edgepub.shared.schemas import Pushed, PushFailed, PushStarted
from support.registry_push import (
    MB,
    Bus,
    PushService,
    onnx_model,
    publish_requested,
    read_back_pipeline,
)
from support.servers import NatsServer, RegistryServer
from support.waiting import wait_for

pytestmark = pytest.mark.timeout(180)


def started_attempts(test_bus: Bus, publish_id: int) -> list[int]:
    return [e.attempt for e in test_bus.outcomes(publish_id) if isinstance(e, PushStarted)]


def test_registry_down_at_start_and_back_before_the_deadline(
    push_service: PushService,
    registry: RegistryServer,
    test_bus: Bus,
    reader: RegistryClient,
    tmp_path: Path,
) -> None:
    registry.stop()
    service = push_service.start(EDGEPUB_REGISTRY_DEADLINE_S="120")
    wait_for(lambda: service.count_events("registry_check_failed") == 1, what="the start check")
    model = test_bus.put_model("m", onnx_model(256, seed=4))
    test_bus.send(publish_requested([model], publish_id=21))
    wait_for(lambda: service.count_events("push_retry") >= 1, timeout=30, what="a retry")

    registry.start()
    pushed = test_bus.wait_outcome(21, timeout=60)
    assert isinstance(pushed, Pushed), pushed
    assert len(started_attempts(test_bus, 21)) >= 2
    read_back_pipeline(reader, pushed, [model], tmp_path)


def test_registry_down_past_the_deadline(
    push_service: PushService, registry: RegistryServer, test_bus: Bus
) -> None:
    registry.stop()
    service = push_service.start(EDGEPUB_REGISTRY_DEADLINE_S="3")
    model = test_bus.put_model("m", onnx_model(4, seed=5))
    test_bus.send(publish_requested([model], publish_id=22))

    failed = test_bus.wait_outcome(22, timeout=60)
    assert isinstance(failed, PushFailed), failed
    assert failed.code == "registry_unavailable"
    assert re.match(
        rf"registry {re.escape(registry.address)} unreachable for \d+ s: connection refused",
        failed.reason,
    ), failed.reason
    assert f"EDGEPUB_REGISTRY={registry.address}" in failed.reason
    assert len(started_attempts(test_bus, 22)) >= 2  # it did retry before giving up
    assert service.count_events("push_failed") == 1


def test_wrong_registry_password_fails_at_once_and_never_shows_it(
    push_service: PushService, registry: RegistryServer, nats_server: NatsServer, test_bus: Bus
) -> None:
    wrong = "wrong-Pa55word-" + "x" * 12
    service = push_service.start(EDGEPUB_REGISTRY_PASSWORD=wrong)
    model = test_bus.put_model("m", onnx_model(4, seed=6))
    test_bus.send(publish_requested([model], publish_id=23))

    failed = test_bus.wait_outcome(23, timeout=30)
    assert isinstance(failed, PushFailed), failed
    assert failed.code == "registry_auth"
    assert failed.reason == (
        f"registry {registry.address} refused the credentials for user 'edgepub' (HTTP 401); "
        "check EDGEPUB_REGISTRY_USERNAME/PASSWORD"
    )
    assert started_attempts(test_bus, 23) == [1]
    logs = service.log_text() + nats_server.child.log_text()
    assert service.count_events("registry_check_failed") == 1
    for secret in (wrong, registry.password):
        assert secret not in logs
        assert secret not in failed.reason


def _upload_in_progress(registry: RegistryServer) -> bool:
    uploads = registry.root_dir / "docker/registry/v2/repositories/edgepub/pipelines"
    return any(p.stat().st_size > 0 for p in uploads.glob("*/_uploads/*/data"))


def test_killed_mid_push_and_restarted_ends_pushed_and_intact(
    push_service: PushService,
    registry: RegistryServer,
    test_bus: Bus,
    reader: RegistryClient,
    tmp_path: Path,
) -> None:
    service = push_service.start()
    big = test_bus.put_model("big", onnx_model(10 * MB, seed=7), "big.onnx")  # ~40 MB
    small = test_bus.put_model("small", onnx_model(4, seed=8), "small.onnx")
    req = publish_requested([small, big], publish_id=24)
    test_bus.send(req)

    # Tight polling: the 40 MB upload lasts well under a second.
    deadline = time.monotonic() + 60
    while not _upload_in_progress(registry):
        assert time.monotonic() < deadline, "the big layer's upload never started"
        time.sleep(0.005)
    service.kill()
    # Killed mid-push: nothing tagged yet, no Pushed.
    assert reader.tag_digest("edgepub/pipelines/edge-pipeline", req.pipeline_version.name) is None
    assert not [e for e in test_bus.outcomes(24) if isinstance(e, Pushed | PushFailed)]

    push_service.start()
    pushed = test_bus.wait_outcome(24, timeout=90)
    assert isinstance(pushed, Pushed), pushed
    read_back_pipeline(reader, pushed, [small, big], tmp_path)  # every blob digest verified
    assert max(started_attempts(test_bus, 24)) >= 2  # redelivered after the crash
