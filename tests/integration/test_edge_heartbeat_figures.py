"""Across real processes (nats-server, registry, the Ops services, ``edgepub-edge``): after
some inferences, the agent's heartbeat reaches ``seen.<name>`` in the edges bucket with
non-zero traffic, its latency percentiles and its local log's figures; list_edges shows
them, and the dashboard's view-model, fed the records as they are in KV, shows the edge
online and in sync with that traffic."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path

from nats.js.errors import NoKeysError

from edgepub import Client
from edgepub.samples import N_FEATURES, house_price_model
from edgepub.services.dashboard.view import Thresholds, counters, fleet_rows, rollout
from edgepub.shared import bus, subjects
from edgepub.shared.edge_messages import EdgeRecord, EdgeSeen
from edgepub.shared.schemas import decode
from support.edge import EdgeAgent, http
from support.servers import NatsServer, RegistryServer
from support.waiting import wait_for


async def _edges_bucket(nats: NatsServer) -> tuple[list[EdgeRecord], dict[str, EdgeSeen]]:
    nc = await bus.connect(nats.settings("token"), name="test-edges-kv")
    try:
        kv = await nc.jetstream().key_value(subjects.KV_EDGES)
        try:
            keys = await kv.keys()
        except NoKeysError:
            return [], {}
        records, seen = [], {}
        for key in keys:
            value = (await kv.get(key)).value or b""
            if key.startswith("edge."):
                records.append(decode(EdgeRecord, value))
            elif key.startswith("seen."):
                seen[key.removeprefix("seen.")] = decode(EdgeSeen, value)
        return records, seen
    finally:
        await nc.close()


def edges_bucket(nats: NatsServer) -> tuple[list[EdgeRecord], dict[str, EdgeSeen]]:
    return asyncio.run(_edges_bucket(nats))


def test_heartbeats_carry_traffic_and_log_figures_to_kv(
    client: Client,
    nats_server: NatsServer,
    registry: RegistryServer,
    agents: list[EdgeAgent],
    tmp_path: Path,
) -> None:
    model = client.upload_model("rf", house_price_model(tmp_path / "m.onnx", n_estimators=3))
    pipeline = client.build_pipeline("beats").add_model_step(model)
    publish = pipeline.publish(progress=False)
    bundle = publish.add_edge("beat-1", tags=["lab"]).docker_run_variables["EDGE_BUNDLE"]
    agent = EdgeAgent(
        tmp_path / "edge",
        {
            "OCI_USERNAME": registry.username,
            "OCI_PASSWORD": registry.password,
            "CONFIG_CPUS": "1",
            "EDGEPUB_HEARTBEAT_S": "0.5",
            "PIPELINE_URL": publish.pipeline_url or "",
            "EDGE_BUNDLE": bundle,
        },
    ).start()
    agents.append(agent)
    agent.wait_ready()
    agent.wait_event("Node attestation was successful.", timeout=30)

    session = http()
    body = [{model.inputs[0].name: [0.1] * N_FEATURES}]

    def busy_beat() -> EdgeSeen | None:
        for _ in range(20):  # keep traffic flowing while waiting for a beat that saw it
            resp = session.post(f"{agent.url}/pipelines/beats", json=body, timeout=10)
            assert resp.status_code == 200, resp.text[:200]
        seen = edges_bucket(nats_server)[1].get("beat-1")
        ok = seen is not None and seen.traffic is not None and seen.traffic.requests > 0
        return seen if ok else None

    seen = wait_for(busy_beat, 30, "a heartbeat in seen.beat-1 with traffic")
    assert seen is not None and seen.traffic is not None
    traffic = seen.traffic
    assert traffic.interval_s > 0 and traffic.rate_per_s > 0 and traffic.errors == 0
    assert traffic.p50_ms is not None and traffic.p95_ms is not None
    assert 0 < traffic.p50_ms <= traffic.p95_ms
    assert seen.log is not None and seen.log.backlog_rows >= 0
    assert seen.running_publish_id == publish.id and seen.running_since is not None
    assert seen.failed is None
    now = datetime.now(UTC)
    assert seen.running_since <= now

    (edge,) = pipeline.list_edges()
    assert edge.info.traffic is not None and edge.info.log is not None

    records, seen_all = edges_bucket(nats_server)
    (record,) = [r for r in records if r.name == "beat-1"]
    assert record.assigned_at is not None  # set by add_edge
    t = Thresholds()
    rows = fleet_rows(records, seen_all, datetime.now(UTC), t)
    (row,) = rows
    assert (row.name, row.tags, row.connection, row.credential_state) == (
        "beat-1",
        ("lab",),
        "online",
        "joined",
    )
    assert row.sync == "in_sync" and row.sync_since is not None
    assert row.requests is not None and row.backlog_rows is not None
    assert counters(rows, t).online == 1
    assert rollout(publish.id, rows).running == 1
