"""``edgepub up --cluster 3`` for real: three nats-server nodes routed to each other under
the supervisor, the services on all three with three copies of everything, bundles that
list every node, and a node killed is restarted while publishing goes on."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgepub import Client
from edgepub.shared import bus, subjects
from edgepub.shared.bundle import decode_bundle
from edgepub.shared.settings import NatsSettings
from support.stack import EmbeddedStack
from support.waiting import wait_for

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def cluster_stack(tmp_path: Path) -> Iterator[EmbeddedStack]:
    up = EmbeddedStack(tmp_path / "home", "--cluster", "3", "--edge-port", "0")
    try:
        up.start(timeout=180)  # the services' first provisioning waits out the election
        yield up
    finally:
        up.kill()


def test_a_three_node_stack_publishes_through_a_node_killed(
    cluster_stack: EmbeddedStack, model_file: Path
) -> None:
    info = cluster_stack.info()
    servers = info.nats_url.split(",")
    assert len(servers) == 3 and len(cluster_stack.children("nats-server")) == 3

    async def replicas() -> int:
        s = NatsSettings(url=info.nats_url, user=info.sdk_user, password=info.sdk_password)
        nc = await bus.connect(s, name="cluster-stack-check")
        try:
            return (await nc.jetstream().stream_info(subjects.LOGS_STREAM)).config.num_replicas
        finally:
            await nc.close()

    assert asyncio.run(replicas()) == 3
    with Client(data_dir=cluster_stack.data_dir) as client:
        model = client.upload_model("house", model_file)
        first = client.build_pipeline("cl-a").add_model_step(model).publish(progress=False)
        assert first.status == "Published"
        bundle = decode_bundle(first.add_edge("cl-edge").docker_run_variables["EDGE_BUNDLE"])
        assert len(bundle.opscenter_host.split(",")) == 3  # an edge may use any node
        (victim,) = cluster_stack.children("nats-2.conf")
        os.kill(victim, signal.SIGKILL)
        second = client.build_pipeline("cl-b").add_model_step(model).publish(progress=False)
        assert second.status == "Published"
    wait_for(
        lambda: (
            len(cluster_stack.children("nats-2.conf")) == 1
            and cluster_stack.children("nats-2.conf") != [victim]
        ),
        60,
        "the supervisor to restart node 2",
    )
