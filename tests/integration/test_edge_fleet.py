"""The issue's story across real processes: add an edge, start the agent with its Docker Run
variables, see it in list_edges, replace the publish while requests flow and watch it swap
without a restart, remove it and see it cut off while it still serves locally.

nats-server (auth callout, WebSocket listener), docker-registry, publish, registry-push, two
token-service replicas and ``edgepub-edge`` all run as processes on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import threading
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from nats import errors as nats_errors

from edgepub import Client
from edgepub.samples import N_FEATURES, house_price_model
from edgepub.shared.bundle import decode_bundle
from support.edge import EdgeAgent, http, parse_docker_run, persisted_seed
from support.edge_bus import connect_edge
from support.natsutil import connections_named
from support.procs import free_port
from support.servers import NatsServer, RegistryServer
from support.services import OpsServices
from support.waiting import wait_for

PIPELINE = "fleet-demo"
EDGEPUB_VERSION = importlib.metadata.version("edgepub")  # the installed package's own


def _connections(nats: NatsServer, edge: str) -> int:
    """The edge's connections as the server's own CONNZ shows them."""
    return sum(asyncio.run(connections_named(nats, edge)).values())


def _at(event: dict[str, Any]) -> float:
    """When a process logged ``event`` (its own ISO timestamp), as unix time."""
    return datetime.fromisoformat(event["timestamp"]).timestamp()


def _assert_refused(nats: NatsServer, edge: str, seed: str) -> None:
    """A connect as ``edge`` with its own key is refused by the server."""

    async def connect() -> None:
        with pytest.raises(nats_errors.Error, match="Authorization Violation"):
            await connect_edge(nats, edge, seed)

    asyncio.run(connect())


def _token_events(ops: OpsServices, event: str, edge: str) -> int:
    return sum(
        1
        for name, proc in ops.procs.items()
        if name.startswith("token")
        for e in proc.events()
        if e.get("event") == event and e.get("edge") == edge
    )


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
    assert seen.agent_version == EDGEPUB_VERSION  # what the agent process itself reported

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

    assert _connections(nats_server, "shop-7") == 1
    disconnects = agent.event_names().count("ops_disconnected")
    client.remove_edge("shop-7")
    returned = time.time()
    gone = wait_for(
        lambda: _connections(nats_server, "shop-7") == 0 and time.time(), 2.0, "the kick"
    )
    closed = agent.wait_event("ops_disconnected", count=disconnects + 1, timeout=2.0)
    assert gone - returned < 2.0  # the server holds no connection of it
    assert _at(closed) - returned < 2.0, closed  # and the agent saw its own closed
    assert list(pipeline.list_edges()) == []
    resp = http().post(f"{agent.url}/pipelines/{PIPELINE}", json=body, timeout=10)
    assert resp.status_code == 200  # its cached pipeline still serves locally
    refused = agent.wait_event("ops_refused", timeout=30)  # its next connect
    assert refused["access"] == "revoked" and _at(refused) > returned
    _assert_refused(nats_server, "shop-7", persisted_seed(agent.persist))
    assert _connections(nats_server, "shop-7") == 0
    resp = http().post(f"{agent.url}/pipelines/{PIPELINE}", json=body, timeout=10)
    assert resp.status_code == 200 and agent.child.running()
    token = decode_bundle(bundle).join_token
    ops.assert_no_secret(token, bundle, agent_env["OCI_PASSWORD"])
    for secret in (token, bundle, agent_env["OCI_PASSWORD"]):
        assert secret and secret not in agent.child.log_text(), "a secret in the agent's log"


def test_restart_reuses_persist_without_the_bundle(
    client: Client,
    ops: OpsServices,
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

    assert _token_events(ops, "edge_joined", "field-1") == 1
    authenticated = _token_events(ops, "edge_authenticated", "field-1")

    again = EdgeAgent(tmp_path / "edge", env).start()  # no EDGE_BUNDLE: /persist is enough
    agents.append(again)
    assert again.child.log_path != first.child.log_path  # its own log: only its own events
    connected = again.wait_event("ops_connected", timeout=30)
    assert connected["access"] == "joined"  # connected as a joined edge: its key alone
    assert "Node attestation was successful." not in again.event_names()
    assert "edge_joined" not in again.event_names()
    # Ops saw a returning key, not a join: no token was presented
    assert _token_events(ops, "edge_joined", "field-1") == 1
    assert _token_events(ops, "edge_authenticated", "field-1") == authenticated + 1
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


IDLE_S = 2.0  # the credential's life without contact, for the test of renewal


def test_a_connected_agent_renews_itself_and_one_away_too_long_is_refused(
    client: Client,
    ops: OpsServices,
    nats_server: NatsServer,
    agent_env: dict[str, str],
    agents: list[EdgeAgent],
    tmp_path: Path,
) -> None:
    # The agent renews at half its credential's remaining life (edge_agent/link.py: no
    # setting); with a 2 s credential the session's JWT (exp = the credential's end) runs
    # out every period too, and the agent connects again with its key.
    ops.start(
        "token",
        env={"EDGEPUB_CREDENTIAL_IDLE_S": str(IDLE_S), "EDGEPUB_EDGE_OFFLINE_AFTER_S": "3"},
    )
    model = client.upload_model("rf", house_price_model(tmp_path / "m.onnx", n_estimators=3))
    pipeline = client.build_pipeline("renews").add_model_step(model)
    publish = pipeline.publish(progress=False)
    bundle = publish.add_edge("renewer").docker_run_variables["EDGE_BUNDLE"]
    env = {**agent_env, "PIPELINE_URL": publish.pipeline_url or ""}
    agent = EdgeAgent(tmp_path / "edge", {**env, "EDGE_BUNDLE": bundle}).start()
    agents.append(agent)
    agent.wait_event("Node attestation was successful.", timeout=30)
    wait_for(lambda: pipeline.list_edges()[0].connection == "online", 20, "the edge online")

    renewals = _token_events(ops, "credential_renewed", "renewer")
    seen: list[tuple[str, str]] = []
    expiries: list[datetime] = []
    until = time.monotonic() + 4 * IDLE_S  # four lives of the credential
    while time.monotonic() < until:
        (edge,) = pipeline.list_edges()
        seen.append((edge.credential_state, edge.connection))
        if edge.credential_expires_at is not None:
            expiries.append(edge.credential_expires_at)
        time.sleep(0.2)
    assert set(seen) == {("joined", "online")}, seen
    assert _token_events(ops, "credential_renewed", "renewer") - renewals >= 4
    assert len(set(expiries)) >= 4 and expiries == sorted(expiries)  # moved on, never back
    assert agent.event_names().count("edge_joined") == 1  # renewed, never joined again

    agent.stop()  # away for longer than its credential lives
    wait_for(
        lambda: pipeline.list_edges()[0].credential_state == "expired",
        IDLE_S + 3,
        "the credential to expire at Ops",
    )
    back = EdgeAgent(tmp_path / "edge", env).start()  # same /persist, its key alone
    agents.append(back)
    refused = back.wait_event("ops_refused", timeout=30)
    assert refused["access"] == "expired"
    (edge,) = pipeline.list_edges()
    assert edge.credential_state == "expired"
    _assert_refused(nats_server, "renewer", persisted_seed(back.persist))
    logged = [
        e.get("reason", "")
        for e in ops["token"].events()
        if e.get("event") == "edge_refused" and e.get("edge") == "renewer"
    ]
    assert logged and all("credential expired" in r for r in logged), logged


def test_an_agent_started_from_the_displayed_docker_run_command_joins_and_serves(
    client: Client,
    registry: RegistryServer,
    agents: list[EdgeAgent],
    tmp_path: Path,
) -> None:
    model = client.upload_model("rf", house_price_model(tmp_path / "m.onnx", n_estimators=3))
    pipeline = client.build_pipeline("from-docker-run").add_model_step(model)
    added = pipeline.publish(progress=False).add_edge("shop-9")
    (edge,) = [e for e in added.edges or () if e.name == "shop-9"]
    command = edge.docker_run
    assert command in repr(added)  # the very command the publish display shows
    work = tmp_path / "edge"
    port = free_port()
    run = parse_docker_run(
        command,
        {
            "PERSISTENT_VOLUME_DIR": str(work / "persist"),
            "EDGE_PORT": str(port),
            "OCI_USERNAME": registry.username,
            "OCI_PASSWORD": registry.password,
        },
    )
    assert run.volumes == {"/persist": str(work / "persist")} and run.ports == {8080: port}
    assert run.env["EDGE_BUNDLE"] == added.docker_run_variables["EDGE_BUNDLE"]
    # exactly the command's variables; /persist and the port as a local process takes them
    agent = EdgeAgent(work, {**run.env, "EDGEPUB_PERSIST_DIR": run.volumes["/persist"]}, port=port)
    agents.append(agent.start())
    agent.wait_ready()
    joined = agent.wait_event("Node attestation was successful.", timeout=30)

    listed = wait_for(
        lambda: next((e for e in pipeline.list_edges() if e.connection == "online"), None),
        20,
        "the edge online in list_edges",
    )
    assert listed is not None and listed.name == "shop-9" and listed.credential_state == "joined"
    assert listed.last_seen is not None and listed.last_seen.timestamp() >= _at(joined) - 1.0
    assert time.time() - listed.last_seen.timestamp() < 10.0  # recent: this run's heartbeat
    assert listed.agent_version == EDGEPUB_VERSION
    body = [{model.inputs[0].name: [0.3] * N_FEATURES}]
    resp = http().post(f"{agent.url}/pipelines/from-docker-run", json=body, timeout=10)
    assert resp.status_code == 200, resp.text
    (answer,) = resp.json()
    assert answer["out"] and answer["metadata"]["pipeline_version"] == added.pipeline_version_name
