"""registry-push on a bad day, across real processes: the registry down (back in time, or
not), refused credentials, the service killed or stopped (SIGTERM) mid-push, a cache
directory it may not write, pushes queued behind a slow registry. Every test that ends
Pushed reads the registry back, so "Pushed" always means an intact artifact; every other
one ends PushFailed with the reason."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from edgepub.shared.oci import RegistryClient
from edgepub.shared.schemas import Pushed, PushFailed, PushStarted
from support.registry_push import (
    MB,
    Bus,
    PushService,
    SlowLink,
    onnx_model,
    publish_requested,
    read_back_pipeline,
    uploads_in_progress,
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


BIG_WEIGHTS = MB  # a ~4 MB model: about 4 s on the 1 MiB/s link, a push long enough to watch
PIPELINES = "edgepub/pipelines"


def big_layer_under_way(registry: RegistryServer) -> bool:
    """More than 1 MB of an upload in the registry: only the big model's layer is that big
    (the small model, the config and the chart are a few KB)."""
    return max(uploads_in_progress(registry, PIPELINES), default=0) > MB


def test_killed_mid_push_and_restarted_ends_pushed_and_intact(
    push_service: PushService,
    slow_link: SlowLink,
    registry: RegistryServer,
    test_bus: Bus,
    reader: RegistryClient,
    tmp_path: Path,
) -> None:
    """The big layer's upload is under way on a slow link (seconds long, so the test sees
    it whatever the machine's load) when registry-push is killed; restarted, the
    redelivered push ends Pushed with every blob intact."""
    service = push_service.start(EDGEPUB_REGISTRY=slow_link.address)
    big = test_bus.put_model("big", onnx_model(BIG_WEIGHTS, seed=7), "big.onnx")
    small = test_bus.put_model("small", onnx_model(4, seed=8), "small.onnx")
    req = publish_requested([small, big], publish_id=24)
    test_bus.send(req)

    wait_for(lambda: big_layer_under_way(registry), 60, "the big layer's upload under way")
    service.kill()
    # Killed mid-push: the big layer never arrived, nothing tagged, no Pushed.
    assert not reader.has_blob(f"{PIPELINES}/edge-pipeline", big.digest)
    assert reader.tag_digest(f"{PIPELINES}/edge-pipeline", req.pipeline_version.name) is None
    assert not [e for e in test_bus.outcomes(24) if isinstance(e, Pushed | PushFailed)]
    assert started_attempts(test_bus, 24) == [1]

    push_service.start()  # straight to the registry: the second push need not be slow
    pushed = test_bus.wait_outcome(24, timeout=90)
    assert isinstance(pushed, Pushed), pushed
    read_back_pipeline(reader, pushed, [small, big], tmp_path)  # every blob digest verified
    assert started_attempts(test_bus, 24) == [1, 2]  # redelivered once after the crash


def test_sigterm_mid_push_finishes_the_push_and_exits_0(
    push_service: PushService,
    slow_link: SlowLink,
    registry: RegistryServer,
    test_bus: Bus,
    reader: RegistryClient,
    tmp_path: Path,
) -> None:
    """SIGTERM while a push is in hand (its big layer part-way up a slow link): the push
    finishes within EDGEPUB_STOP_GRACE_S (Pushed, acked, the artifact intact), the publish
    queued behind it is not fetched, and the process exits 0 saying service_stopped."""
    service = push_service.start(
        EDGEPUB_REGISTRY=slow_link.address,
        EDGEPUB_PUSH_CONCURRENCY="1",
        EDGEPUB_STOP_GRACE_S="60",
    )
    big = test_bus.put_model("big", onnx_model(BIG_WEIGHTS, seed=50), "big.onnx")
    test_bus.send(publish_requested([big], publish_id=50))
    queued = test_bus.put_model("queued", onnx_model(4, seed=51))
    test_bus.send(publish_requested([queued], publish_id=51, pipeline="queued"))

    wait_for(lambda: big_layer_under_way(registry), 60, "the big layer's upload under way")
    assert not reader.has_blob(f"{PIPELINES}/edge-pipeline", big.digest)
    signalled_at = datetime.now(UTC)
    code = service.terminate(timeout=90)
    assert code == 0, service.log_text()[-3000:]

    # The push in hand finished, after the signal, as Pushed with an intact artifact.
    outcomes = test_bus.outcomes(50)
    assert [type(e) for e in outcomes] == [PushStarted, Pushed], outcomes
    pushed = outcomes[-1]
    assert isinstance(pushed, Pushed)
    read_back_pipeline(reader, pushed, [big], tmp_path)
    # Nothing new fetched: the queued publish was never started.
    assert test_bus.outcomes(51) == []
    done = [e for e in service.events() if e.get("event") == "push_done"]
    assert [e["publish_id"] for e in done] == [50], done
    assert datetime.fromisoformat(done[0]["timestamp"]) > signalled_at
    assert service.count_events("message_left_for_redelivery") == 0
    assert service.count_events("service_stopped") == 1
    # Acked (none delivered and unacked, none redelivered); the queued one still waits.
    state = test_bus.push_consumer()
    assert (state.num_ack_pending, state.num_redelivered, state.num_pending) == (0, 0, 1), state


# --- every publish ends: a failure that is not the registry's ----------------------------


@pytest.mark.parametrize(
    ("limits", "why"),
    [
        ({"EDGEPUB_PUSH_MAX_DELIVER": "3"}, "EDGEPUB_PUSH_MAX_DELIVER=3"),
        (
            {"EDGEPUB_PUSH_MAX_DELIVER": "1000", "EDGEPUB_REGISTRY_DEADLINE_S": "2"},
            "EDGEPUB_REGISTRY_DEADLINE_S=2",
        ),
    ],
    ids=["max-deliver", "deadline"],
)
def test_a_cache_directory_it_may_not_write_ends_the_publish_with_the_reason(
    push_service: PushService,
    registry: RegistryServer,
    test_bus: Bus,
    reader: RegistryClient,
    limits: dict[str, str],
    why: str,
) -> None:
    """A PermissionError is no edgepub error: retried with backoff, then, at the bound on
    deliveries or at the deadline (whichever the settings make first), PushFailed with
    the last reason. Before, it was naked forever and the publish never ended."""
    service = push_service.start_unprivileged(EDGEPUB_REGISTRY_RETRY_MAX_S="1", **limits)
    models_dir = push_service.cache_dir / "models"
    wait_for(lambda: service.count_events("cache_ready") == 1, what="the cache")
    models_dir.chmod(0o500)
    try:
        model = test_bus.put_model("m", onnx_model(256, seed=31))
        test_bus.send(publish_requested([model], publish_id=31))
        failed = test_bus.wait_outcome(31, timeout=60)
    finally:
        models_dir.chmod(0o700)
    assert isinstance(failed, PushFailed), failed
    assert failed.code == "internal"
    assert failed.reason.startswith("registry-push gave up after "), failed.reason
    assert why in failed.reason
    assert "PermissionError: [Errno 13] Permission denied" in failed.reason
    assert str(models_dir) in failed.reason
    assert f"EDGEPUB_CACHE_DIR={push_service.cache_dir}" in failed.reason
    attempts = started_attempts(test_bus, 31)
    assert attempts == list(range(1, len(attempts) + 1))
    if why.startswith("EDGEPUB_PUSH_MAX_DELIVER"):
        assert attempts == [1, 2, 3]
    else:
        assert 2 <= len(attempts) < 1000
    assert service.count_events("message_dead") == 1
    assert service.count_events("push_failed") == 1
    assert not reader.has_blob("edgepub/pipelines/edge-pipeline", model.digest)


# --- the runner holds only what it works on ---------------------------------------------

MODEL_BYTES = 3 * MB  # each push takes 3 s on the 1 MiB/s link: longer than the ack wait
ACK_WAIT_S = 2.0  # PushService's EDGEPUB_ACK_WAIT_S


@pytest.mark.parametrize(
    ("replicas", "concurrency"),
    [(2, 1), (1, 1), (1, 2)],
    ids=["two-replicas", "one", "two-at-once"],
)
def test_queued_behind_a_slow_registry_no_push_starts_twice(
    push_service: PushService,
    slow_link: SlowLink,
    test_bus: Bus,
    reader: RegistryClient,
    tmp_path: Path,
    replicas: int,
    concurrency: int,
) -> None:
    """Three publishes queued before registry-push starts, each push outlasting the ack
    wait. A message is fetched only when a push can start on it (and every one in hand is
    kept alive), so none passes its ack wait in hand and comes back for a second push: in
    one process, or to a second replica that starts while the first is busy. (Before, the
    first process took all three and pushed one; the second was handed the other two again
    once their ack wait passed, and both pushed them; in one process, the two waiting in
    hand passed theirs and were delivered, and pushed, again.)"""
    assert MODEL_BYTES / (slow_link.rate or 1) > ACK_WAIT_S
    models = [
        test_bus.put_model(f"queued{i}", onnx_model(MODEL_BYTES // 4, seed=40 + i))
        for i in range(3)
    ]
    for i, model in enumerate(models):
        test_bus.send(publish_requested([model], publish_id=40 + i, pipeline=f"queued{i}"))

    env = {"EDGEPUB_REGISTRY": slow_link.address, "EDGEPUB_PUSH_CONCURRENCY": str(concurrency)}
    services = [push_service.start(**env)]
    wait_for(lambda: services[0].count_events("push_started") >= 1, what="the first push")
    services += [push_service.start_replica(f"replica-{i}", **env) for i in range(1, replicas)]
    for i, model in enumerate(models):
        pushed = test_bus.wait_outcome(40 + i, timeout=120)
        assert isinstance(pushed, Pushed), pushed
        read_back_pipeline(reader, pushed, [model], tmp_path / str(i))
    for i in range(3):
        assert started_attempts(test_bus, 40 + i) == [1], test_bus.outcomes(40 + i)
    assert sum(s.count_events("push_started") for s in services) == 3
    assert sum(s.count_events("push_done") for s in services) == 3
    if replicas == 2:  # both took work
        assert all(s.count_events("push_done") >= 1 for s in services)
