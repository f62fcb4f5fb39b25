"""Across real processes (nats-server, registry, the Ops services, ``edgepub-edge``): after
some inferences, the agent's heartbeat reaches ``seen.<name>`` in the edges bucket with
non-zero traffic, its latency percentiles and its local log's figures; list_edges shows
them, and the dashboard's view-model, fed the records as they are in KV, shows the edge
online and in sync with that traffic."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import msgspec
from nats.js.errors import NoKeysError

from edgepub import Client
from edgepub.samples import N_FEATURES, house_price_model
from edgepub.services.dashboard.view import (
    EdgeRow,
    Thresholds,
    counters,
    edge_row,
    fleet_rows,
    rollout,
)
from edgepub.services.token.handlers import seen_of
from edgepub.shared import bus, subjects
from edgepub.shared.edge_messages import Assignment, EdgeRecord, EdgeSeen, Heartbeat
from edgepub.shared.schemas import decode
from support.edge import EdgeAgent, http, make_model, model_version
from support.edge import publish as push_pipeline
from support.inprocess import InProcessAgent, Load
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


def push_versions(registry: RegistryServer, work: Path) -> tuple[str, str]:
    """Pipeline versions v1 and v2 of ``fraud`` pushed straight to the registry."""
    urls = []
    for seed in range(2):
        version = f"v{seed + 1}"
        path = make_model(work / f"{version}.onnx", seed=seed, trees=5)
        urls.append(push_pipeline(registry, "fraud", [(model_version("gbr", path), path)], version))
    return urls[0], urls[1]


def swap_assignment(publish_id: int, url: str, version: str) -> Assignment:
    return Assignment(
        publish_id=publish_id,
        pipeline_name="fraud",
        pipeline_version_id=publish_id,
        pipeline_version_name=version,
        pipeline_url=url,
    )


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
    published = pipeline.publish(progress=False)
    bundle = published.add_edge("beat-1", tags=["lab"]).docker_run_variables["EDGE_BUNDLE"]
    agent = EdgeAgent(
        tmp_path / "edge",
        {
            "OCI_USERNAME": registry.username,
            "OCI_PASSWORD": registry.password,
            "CONFIG_CPUS": "1",
            "EDGEPUB_HEARTBEAT_S": "0.5",
            "PIPELINE_URL": published.pipeline_url or "",
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
    assert seen.running_publish_id == published.id and seen.running_since is not None
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
    assert rollout(published.id, rows).running == 1


def test_the_agents_report_says_failed_then_in_sync_for_a_replace(
    registry: RegistryServer, tmp_path: Path
) -> None:
    """The agent in this process against a real registry: an assignment whose pipeline
    does not exist makes its heartbeat say failed (with the registry's reason), which the
    dashboard shows as ``failed``, not ``pending``; the next assignment that loads clears it."""
    v1, v2 = push_versions(registry, tmp_path)
    missing = v1.rsplit(":", 1)[0] + ":no-such-version"
    env = {"PIPELINE_URL": v1, "OCI_USERNAME": registry.username, "OCI_PASSWORD": registry.password}
    agent = InProcessAgent(tmp_path / "persist", env).start()

    async def report() -> Heartbeat:
        return agent.agent.heartbeat()

    def beat() -> Heartbeat:  # as the token service receives it
        sent = msgspec.json.encode(agent.call(report()))
        return msgspec.json.decode(sent, type=Heartbeat)

    def row(hb: Heartbeat, publish_id: int, version: str) -> EdgeRow:
        now = datetime.now(UTC)
        record = EdgeRecord(
            id="x",
            name="inproc",
            assignment=swap_assignment(publish_id, v2 if publish_id == 3 else missing, version),
            assigned_at=now,
            state="joined",
            join_token_expires_at=now,
            credential_expires_at=now + timedelta(days=1),
            created_at=now - timedelta(seconds=1),  # added before it reported
        )
        return edge_row(record, seen_of(hb, now), now, Thresholds())

    try:
        with Load(agent.url) as load:
            wait_for(lambda: load.count() >= 20, 30, "answers")
            first = beat()
            assert first.traffic is not None and first.traffic.requests > 0
            assert first.failed is None and first.running_version == "v1"
            agent.call(agent.agent.assign(swap_assignment(2, missing, "no-such-version")))
            failing = beat()
            assert failing.failed is not None and failing.failed.publish_id == 2
            assert "no-such-version" in failing.failed.reason or "404" in failing.failed.reason
            shown = row(failing, 2, "no-such-version")
            assert shown.sync == "failed" and shown.sync_reason is not None
            assert failing.failed.reason in shown.sync_reason
            agent.call(agent.agent.assign(swap_assignment(3, v2, "v2")))
            done = beat()
            assert done.failed is None and done.running_publish_id == 3
            assert done.running_for_s is not None and done.running_for_s < 60
            assert row(done, 3, "v2").sync == "in_sync"
    finally:
        assert agent.stop() == 0
    assert [a for a in load.answers if a.status != 200] == []
