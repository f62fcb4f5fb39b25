"""A push cancelled mid-upload stops, across real processes: registry-push is stopped
(SIGTERM, a short grace) while a large model crawls over a slow link to the registry.
Its upload thread stops at the next chunk, the process exits cleanly, the registry stores
nothing, and the redelivered message pushes one intact artifact."""

from __future__ import annotations

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
)
from support.waiting import wait_for

pytestmark = pytest.mark.timeout(180)

MODEL_BYTES = 24 * MB  # 24 s over the 1 MiB/s link: far longer than the stop takes


def test_a_push_cancelled_mid_upload_stops_and_its_redelivery_ends_intact(
    push_service: PushService,
    slow_link: SlowLink,
    test_bus: Bus,
    reader: RegistryClient,
    tmp_path: Path,
) -> None:
    env = {"EDGEPUB_REGISTRY": slow_link.address, "EDGEPUB_STOP_GRACE_S": "0.5"}
    service = push_service.start(**env)
    big = test_bus.put_model("big", onnx_model(MODEL_BYTES // 4, seed=50), "big.onnx")
    req = publish_requested([big], publish_id=50)
    test_bus.send(req)
    wait_for(lambda: slow_link.sent > 2 * MB, timeout=60, what="the upload under way")

    # Stopped mid-upload: after the grace the push is cancelled, its thread stops at the
    # next chunk, and the process exits 0 (asyncio.run joins every worker thread first:
    # a thread still uploading would hold the exit until SIGKILL).
    assert service.terminate(timeout=15) == 0, service.log_text()[-3000:]
    assert service.count_events("message_left_for_redelivery") == 1
    assert service.count_events("push_thread_still_running") == 0
    assert slow_link.sent < MODEL_BYTES  # it never finished sending
    wait_for(lambda: slow_link.open_connections() == 0, what="its connections closed")
    repo = "edgepub/pipelines/edge-pipeline"
    assert not reader.has_blob(repo, big.digest)  # a short upload is not a blob
    assert reader.tag_digest(repo, req.pipeline_version.name) is None
    assert not [e for e in test_bus.outcomes(50) if isinstance(e, Pushed | PushFailed)]

    slow_link.rate = None  # full speed from now on
    again = push_service.start(**env)
    pushed = test_bus.wait_outcome(50, timeout=90)
    assert isinstance(pushed, Pushed), pushed
    read_back_pipeline(reader, pushed, [big], tmp_path)  # every digest verified
    assert reader.tags(repo) == [req.pipeline_version.name]
    attempts = [e.attempt for e in test_bus.outcomes(50) if isinstance(e, PushStarted)]
    assert attempts == [1, 2]
    assert again.count_events("push_done") == 1
