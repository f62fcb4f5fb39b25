"""The issue's story across real processes: add an edge, start the agent with its Docker Run
variables, see it in list_edges, replace the publish while requests flow and watch it swap
without a restart, remove it and see it cut off while it still serves locally.

nats-server (auth callout, WebSocket listener), docker-registry, publish, registry-push, two
token-service replicas and ``edgepub-edge`` all run as processes on 127.0.0.1.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest

from edgepub import Client
from edgepub.samples import N_FEATURES, house_price_model
from edgepub.shared.bundle import decode_bundle
from support.edge import EdgeAgent, http
from support.servers import NatsServer, RegistryServer
from support.services import OpsServices
from support.waiting import wait_for

PIPELINE = "fleet-demo"


class Load:
    """Requests at a steady rate from a thread; every answer and failure counted."""

    def __init__(self, url: str, body: list[dict[str, list[float]]], rate: float) -> None:
        self.url, self.body, self.interval = url, body, 1.0 / rate
        self.ok = 0
        self.failed: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        session = http()
        next_at = time.monotonic()
        while not self._stop.is_set():
            try:
                resp = session.post(self.url, json=self.body, timeout=10)
                if resp.status_code == 200:
                    self.ok += 1
                else:
                    self.failed.append(f"{resp.status_code} {resp.text[:200]}")
            except Exception as exc:  # every failure is counted, none ends the load
                self.failed.append(repr(exc))
            next_at += self.interval
            time.sleep(max(0.0, next_at - time.monotonic()))

    def __enter__(self) -> Load:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=15)


@pytest.fixture
def agent_env(registry: RegistryServer) -> dict[str, str]:
    return {
        "OCI_USERNAME": registry.username,
        "OCI_PASSWORD": registry.password,
        "CONFIG_CPUS": "1",
        "EDGEPUB_HEARTBEAT_S": "0.5",
    }


def test_add_run_list_replace_remove(
    client: Client,
    ops: OpsServices,
    nats_server: NatsServer,
    agent_env: dict[str, str],
    agents: list[EdgeAgent],
    tmp_path: Path,
) -> None:
    ops.start("token", replica=2)
    v1 = client.upload_model("rf", house_price_model(tmp_path / "v1.onnx", n_estimators=3))
    pipeline = client.build_pipeline(PIPELINE).add_model_step(v1)
    first = pipeline.publish(progress=False)
    with_edge = first.add_edge("shop-7", tags=["eu"])
    bundle = with_edge.docker_run_variables["EDGE_BUNDLE"]
    assert decode_bundle(bundle).edge_name == "shop-7"

    agent = EdgeAgent(
        tmp_path / "edge",
        {**agent_env, "PIPELINE_URL": first.pipeline_url or "", "EDGE_BUNDLE": bundle},
    ).start()
    agents.append(agent)
    agent.wait_ready()
    agent.wait_event("Node attestation was successful.", timeout=30)

    def edge() -> object:
        (found,) = pipeline.list_edges()
        return found

    seen = wait_for(
        lambda: (e := edge()).running_version and e,  # type: ignore[attr-defined]
        20,
        "a heartbeat from the serving edge at Ops",
    )
    assert seen.connection == "online" and seen.credential_state == "joined"
    assert seen.running_version == first.pipeline_version_name
    assert (time.time() - seen.last_seen.timestamp()) < 10

    body = [{v1.inputs[0].name: [0.1] * N_FEATURES}]
    with Load(f"{agent.url}/pipelines/{PIPELINE}", body, rate=50) as load:
        wait_for(lambda: load.ok >= 25, 20, "requests flowing")
        v2 = client.upload_model("rf", house_price_model(tmp_path / "v2.onnx", n_estimators=5))
        second = pipeline.clear().add_model_step(v2).publish(replaces=[first], progress=False)
        agent.wait_event("pipeline_swapped", timeout=60)
        before = load.ok
        wait_for(lambda: load.ok >= before + 25, 20, "requests after the swap")
    assert load.failed == [], load.failed[:5]
    moved = wait_for(
        lambda: (e := edge()).running_version == second.pipeline_version_name and e,  # type: ignore[attr-defined]
        20,
        "the edge to report the new version",
    )
    assert moved.should_run_publish == second.id
    assert agent.child.running() and agent.event_names().count("edge_agent_starting") == 1

    started = time.monotonic()
    client.remove_edge("shop-7")
    agent.wait_event("ops_disconnected", timeout=5)
    assert time.monotonic() - started < 5  # the kick itself is asserted < 2 s in test_edge_join
    assert list(pipeline.list_edges()) == []
    resp = http().post(f"{agent.url}/pipelines/{PIPELINE}", json=body, timeout=10)
    assert resp.status_code == 200  # its cached pipeline still serves locally
    wait_for(lambda: "ops_refused" in agent.event_names(), 30, "the next connect refused")
    token = decode_bundle(bundle).join_token
    ops.assert_no_secret(token, bundle, agent_env["OCI_PASSWORD"])
    for secret in (token, bundle, agent_env["OCI_PASSWORD"]):
        assert secret and secret not in agent.child.log_text(), "a secret in the agent's log"


def test_restart_reuses_persist_without_the_bundle(
    client: Client,
    agent_env: dict[str, str],
    agents: list[EdgeAgent],
    tmp_path: Path,
) -> None:
    model = client.upload_model("rf", house_price_model(tmp_path / "m.onnx", n_estimators=3))
    pipeline = client.build_pipeline("restarts").add_model_step(model)
    publish = pipeline.publish(progress=False)
    bundle = publish.add_edge("field-1").docker_run_variables["EDGE_BUNDLE"]
    env = {**agent_env, "PIPELINE_URL": publish.pipeline_url or ""}
    first = EdgeAgent(tmp_path / "edge", {**env, "EDGE_BUNDLE": bundle}).start()
    agents.append(first)
    first.wait_event("Node attestation was successful.", timeout=30)
    first.stop()
    persisted = (tmp_path / "edge" / "persist" / "identity.json").stat()
    assert persisted.st_mode & 0o777 == 0o600

    again = EdgeAgent(tmp_path / "edge", env).start()  # no EDGE_BUNDLE: /persist is enough
    agents.append(again)
    again.wait_event("ops_connected", timeout=30)
    assert "Node attestation was successful." not in again.event_names()[-50:] or (
        again.event_names().count("Node attestation was successful.") == 1
    )
    (edge,) = wait_for(
        lambda: [e for e in pipeline.list_edges() if e.connection == "online"] or None,
        20,
        "the restarted edge online",
    )
    assert edge.name == "field-1"


def test_an_edge_offline_during_the_replace_swaps_when_it_is_back(
    client: Client,
    agent_env: dict[str, str],
    agents: list[EdgeAgent],
    tmp_path: Path,
) -> None:
    model = client.upload_model("rf", house_price_model(tmp_path / "a.onnx", n_estimators=3))
    pipeline = client.build_pipeline("away-replace").add_model_step(model)
    first = pipeline.publish(progress=False)
    bundle = first.add_edge("roamer").docker_run_variables["EDGE_BUNDLE"]
    env = {**agent_env, "PIPELINE_URL": first.pipeline_url or ""}
    agent = EdgeAgent(tmp_path / "edge", {**env, "EDGE_BUNDLE": bundle}).start()
    agents.append(agent)
    agent.wait_event("Node attestation was successful.", timeout=30)
    agent.stop()  # offline: nobody hears the control message

    newer = client.upload_model("rf", house_price_model(tmp_path / "b.onnx", n_estimators=6))
    second = pipeline.clear().add_model_step(newer).publish(replaces=[first], progress=False)
    (moved,) = pipeline.list_edges()
    assert moved.should_run_publish == second.id  # moved while away

    back = EdgeAgent(tmp_path / "edge", {**env, "EDGE_BUNDLE": bundle}).start()  # same command
    agents.append(back)
    back.wait_event("pipeline_swapped", timeout=60)  # the first heartbeat's reply said so
    wait_for(
        lambda: pipeline.list_edges()[0].running_version == second.pipeline_version_name,
        20,
        "the returning edge to report the new version",
    )
    identity = (tmp_path / "edge" / "persist" / "identity.json").read_text()
    seed = identity.split('"seed":')[1].split('"')[1]
    for secret in (decode_bundle(bundle).join_token, bundle, seed, agent_env["OCI_PASSWORD"]):
        assert secret and secret not in back.child.log_text(), "a secret in the agent's log"
        assert secret not in agent.child.log_text(), "a secret in the agent's log"
