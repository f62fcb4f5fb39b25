"""The edge's link to Ops on a bad day, across real processes: its session's JWT expiring
(nats-py closes for good; the agent builds a new connection), the broker restarted, and a
credential that expired while the edge was away (it keeps serving, says so, and re-joins
with a new bundle for the same name)."""

from __future__ import annotations

import time
from pathlib import Path

from edgepub import Client
from edgepub.samples import N_FEATURES, house_price_model
from support.edge import EdgeAgent, http
from support.servers import NatsServer, RegistryServer
from support.services import OpsServices
from support.waiting import wait_for


def _publish(client: Client, tmp_path: Path, name: str) -> tuple[str, str, str]:
    model = client.upload_model("rf", house_price_model(tmp_path / f"{name}.onnx", n_estimators=3))
    publish = client.build_pipeline(name).add_model_step(model).publish(progress=False)
    bundle = publish.add_edge(f"{name}-edge").docker_run_variables["EDGE_BUNDLE"]
    return publish.pipeline_url or "", bundle, model.inputs[0].name


def _agent(
    tmp_path: Path, registry: RegistryServer, url: str, bundle: str | None, **extra: str
) -> EdgeAgent:
    env = {
        "PIPELINE_URL": url,
        "OCI_USERNAME": registry.username,
        "OCI_PASSWORD": registry.password,
        "EDGEPUB_HEARTBEAT_S": "0.3",
        **extra,
    }
    if bundle is not None:
        env["EDGE_BUNDLE"] = bundle
    return EdgeAgent(tmp_path / "edge", env).start()


def _infer(agent: EdgeAgent, pipeline: str, input_name: str) -> int:
    body = [{input_name: [0.5] * N_FEATURES}]
    return http().post(f"{agent.url}/pipelines/{pipeline}", json=body, timeout=10).status_code


def test_an_expiring_session_is_replaced_not_given_up(
    client: Client,
    ops: OpsServices,
    registry: RegistryServer,
    agents: list[EdgeAgent],
    tmp_path: Path,
) -> None:
    ops.start("token", env={"EDGEPUB_EDGE_SESSION_TTL_S": "1.5"})
    url, bundle, _ = _publish(client, tmp_path, "short")
    agent = _agent(tmp_path, registry, url, bundle)
    agents.append(agent)
    # every 1.5 s the server closes the session; each time the link connects again
    agent.wait_event("ops_connected", count=4, timeout=30)
    beats = ops["token"].log_text().count('"edge_authenticated"')
    assert beats >= 3


def test_broker_restart_the_edge_comes_back_and_serves_throughout(
    client: Client,
    ops: OpsServices,
    nats_server: NatsServer,
    registry: RegistryServer,
    agents: list[EdgeAgent],
    tmp_path: Path,
) -> None:
    url, bundle, input_name = _publish(client, tmp_path, "restart")
    agent = _agent(tmp_path, registry, url, bundle)
    agents.append(agent)
    agent.wait_ready()
    agent.wait_event("ops_connected", timeout=30)
    nats_server.stop()
    for _ in range(5):  # Ops gone: inference does not notice
        assert _infer(agent, "restart", input_name) == 200
        time.sleep(0.2)
    nats_server.start()
    before = ops["token"].log_text().count('"edge_authenticated"')
    wait_for(
        lambda: ops["token"].log_text().count('"edge_authenticated"') > before,
        60,
        "the edge to connect again after the broker came back",
    )
    (edge,) = client.build_pipeline("restart").list_edges()
    wait_for(
        lambda: client.build_pipeline("restart").list_edges()[0].connection == "online",
        20,
        "the edge online again",
    )
    assert edge.credential_state == "joined"


def test_expired_credential_keeps_serving_says_so_and_rejoins_with_a_new_bundle(
    client: Client,
    ops: OpsServices,
    registry: RegistryServer,
    agents: list[EdgeAgent],
    tmp_path: Path,
) -> None:
    ops.start("token", env={"EDGEPUB_CREDENTIAL_IDLE_S": "2"})
    url, bundle, input_name = _publish(client, tmp_path, "away")
    first = _agent(tmp_path, registry, url, bundle)
    agents.append(first)
    first.wait_event("Node attestation was successful.", timeout=30)
    first.stop()
    time.sleep(2.5)  # away for longer than the credential lives (the period under test)

    back = _agent(tmp_path, registry, url, None)
    agents.append(back)
    back.wait_ready()
    refused = back.wait_event("ops_refused", timeout=30)
    assert refused["access"] == "expired"
    assert _infer(back, "away", input_name) == 200  # inference never depends on it
    metrics = http().get(f"{back.url}/metrics", timeout=5).text
    assert 'edgepub_edge_credential{state="expired"} 1' in metrics
    status = http().get(f"{back.url}/status", timeout=5).json()
    assert status["ops"]["credential"] == "expired" and not status["ops"]["connected"]
    assert status["edge"] == "away-edge" and status["ready"]
    assert "expired" in status["ops"]["reason"]
    back.stop()

    client.remove_edge("away-edge")
    publish = client.build_pipeline("away").publishes()[-1]
    fresh = publish.add_edge("away-edge").docker_run_variables["EDGE_BUNDLE"]
    again = _agent(tmp_path, registry, url, fresh)
    agents.append(again)
    again.wait_event("Node attestation was successful.", timeout=30)
    assert _infer(again, "away", input_name) == 200
    wait_for(
        lambda: client.build_pipeline("away").list_edges()[0].connection == "online",
        20,
        "the re-joined edge online",
    )


def test_token_service_gone_the_edge_serves_and_comes_back_with_it(
    client: Client,
    ops: OpsServices,
    registry: RegistryServer,
    agents: list[EdgeAgent],
    tmp_path: Path,
) -> None:
    ops.start("token", env={"EDGEPUB_EDGE_SESSION_TTL_S": "2"})  # reconnects need the callout
    url, bundle, input_name = _publish(client, tmp_path, "no-token")
    agent = _agent(tmp_path, registry, url, bundle)
    agents.append(agent)
    agent.wait_event("Node attestation was successful.", timeout=30)
    ops["token"].kill()
    time.sleep(3)  # past the session's exp: the server closes it, reconnects find no callout
    for _ in range(5):
        assert _infer(agent, "no-token", input_name) == 200
    assert agent.child.running()
    status = http().get(f"{agent.url}/status", timeout=5).json()
    assert status["ready"]
    ops.start("token")
    wait_for(
        lambda: (
            client.build_pipeline("no-token").list_edges()[0].connection == "online"
            and http().get(f"{agent.url}/status", timeout=5).json()["ops"]["connected"]
        ),
        60,
        "the edge back online once the token service is",
    )
    assert "link_failed" not in agent.event_names()
