"""Inference rows from a real edge agent reach the pipeline log at Ops, labelled with the
edge's name: agent (local SQLite log, shipper) -> pages stream -> log collector -> pipeline
log, all real processes, counted at both ends."""

from __future__ import annotations

from pathlib import Path

from edgepub import Client
from edgepub.samples import N_FEATURES, house_price_model
from support.edge import EdgeAgent, http
from support.ops_log import ops_log
from support.servers import NatsServer, RegistryServer
from support.waiting import wait_for


def send(agent: EdgeAgent, pipeline: str, input_name: str, requests: int, rows: int) -> int:
    body = [{input_name: [0.01 * i] * N_FEATURES} for i in range(rows)]
    session = http()
    for _ in range(requests):
        resp = session.post(f"{agent.url}/pipelines/{pipeline}", json=body, timeout=10)
        assert resp.status_code == 200, resp.text
    return requests * rows


def test_rows_logged_at_the_edge_reach_ops_exactly_once_with_their_partition(
    client: Client,
    nats_server: NatsServer,
    registry: RegistryServer,
    agents: list[EdgeAgent],
    tmp_path: Path,
) -> None:
    model = client.upload_model("rf", house_price_model(tmp_path / "m.onnx", n_estimators=3))
    publish = client.build_pipeline("homeward").add_model_step(model).publish(progress=False)
    bundle = publish.add_edge("depot-3").docker_run_variables["EDGE_BUNDLE"]
    agent = EdgeAgent(
        tmp_path / "edge",
        {
            "PIPELINE_URL": publish.pipeline_url or "",
            "EDGE_BUNDLE": bundle,
            "OCI_USERNAME": registry.username,
            "OCI_PASSWORD": registry.password,
            "EDGEPUB_HEARTBEAT_S": "0.5",
            "LOCAL_INFERENCE_STORAGE": "64Mi",
            "PLATEAU_PAGE_SIZE": "50",
        },
    ).start()
    agents.append(agent)
    agent.wait_ready()
    agent.wait_event("Node attestation was successful.", timeout=30)
    sent = send(agent, "homeward", model.inputs[0].name, requests=40, rows=7)

    held = wait_for(
        lambda: (log := ops_log(nats_server)).total("depot-3") >= sent and log,
        60,
        "every row at Ops",
    )
    assert held.rows["depot-3"] == sent and held.lost["depot-3"] == 0
    held.check_order()
    status = http().get(f"{agent.url}/status", timeout=5).json()
    assert status["shipping"]["rows"] == sent
    wait_for(lambda: http().get(f"{agent.url}/status", timeout=5).json()["log"]["backlog"] == 0,
             10, "the edge's backlog empty")  # fmt: skip
    (edge,) = wait_for(lambda: [e for e in client.build_pipeline("homeward").list_edges()
                                if e.backlog == 0] or None, 10, "backlog 0 at Ops")  # fmt: skip
    assert edge.name == "depot-3"
