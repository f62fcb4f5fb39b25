"""The Ops side as users run it: ``docker-compose.yml`` (a 3-node NATS cluster, the registry,
the services, the fleet dashboard, the `config` one-shot that renders their files), with
``docker-compose.host.yml`` because only host networking exists here (and so on loopback and
free ports). Every service healthy; a publish through it with the SDK, its artifact in the
registry; the dashboard listing the edge that publish added to a login with the SDK's user
(and 401 without one); the example edge (profile ``edge``) joining with its bundle and
inferring; a NATS node killed and a second publish still Published; then ``down -v`` with no
container or volume left."""

from __future__ import annotations

import base64
import hashlib
import json
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from edgepub import Client
from edgepub.samples import N_FEATURES, house_price_model
from edgepub.shared.artifact import parse_reference
from edgepub.shared.stack_file import StackInfo
from support import docker
from support.procs import free_port
from support.servers import registry_get
from support.waiting import wait_for

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]
FILES = ("-f", "docker-compose.yml", "-f", "docker-compose.host.yml")
NODES = ("nats-0", "nats-1", "nats-2")
SERVICES = ("publish", "registry-push", "token-1", "token-2", "log-collector", "dashboard")
LONG_RUNNING = (*NODES, "registry", *SERVICES)  # each healthy once up
HEALTHY_WITHIN_S = 180


class Project:
    """One compose project of the Ops side, on its own loopback ports and volumes."""

    def __init__(self, env: dict[str, str], compose: list[str]) -> None:
        self.name = f"edgepubtest{uuid.uuid4().hex[:8]}"
        ports = {
            f"EDGEPUB_NATS{i}_{kind}": str(free_port())
            for i in range(len(NODES))
            for kind in ("CLIENT", "ROUTE", "EDGE", "MONITOR")
        }
        self.registry_port = free_port()
        self.edge_port = free_port()
        self.dashboard_port = free_port()
        self.env = {k: v for k, v in env.items() if not k.startswith(("EDGEPUB_", "OCI_"))}
        self.env |= ports | {
            "EDGEPUB_BASE_IMAGE": docker.base_image(env),
            "EDGEPUB_REGISTRY_PORT": str(self.registry_port),
            "EDGEPUB_EDGE_PORT": str(self.edge_port),
            "EDGEPUB_DASHBOARD_PORT": str(self.dashboard_port),
        }
        self.client_ports = [int(ports[f"EDGEPUB_NATS{i}_CLIENT"]) for i in range(len(NODES))]
        self.edge_listener = int(ports["EDGEPUB_NATS0_EDGE"])
        self.compose = [*compose, "-p", self.name, *FILES]

    def __call__(self, *args: str, timeout: float = 120, **env: str) -> str:
        out = docker.run(self.env | env, *self.compose, *args, timeout=timeout)
        assert out.returncode == 0, f"compose {args}: {out.stdout[-2000:]}{out.stderr[-3000:]}"
        return out.stdout

    def logs(self, *services: str, tail: int = 40) -> str:
        argv = ("logs", "--no-color", "--tail", str(tail), *services)
        out = docker.run(self.env, *self.compose, *argv, timeout=60)
        return out.stdout + out.stderr

    def container(self, service: str) -> str:
        return self("ps", "-q", service).strip()

    def state(self, service: str) -> dict[str, object]:
        """The container's ``.State``: Status, ExitCode, Health (when it has a healthcheck)."""
        container = self.container(service)
        if not container:
            return {"Status": "not created"}
        out = docker.run(self.env, "docker", "inspect", "-f", "{{json .State}}", container)
        assert out.returncode == 0, out.stderr
        state: dict[str, object] = json.loads(out.stdout)
        return state

    def leftovers(self) -> dict[str, list[str]]:
        found = docker.leftovers(self.env, f"com.docker.compose.project={self.name}")
        return {kind: list(ids) for kind, ids in found.items() if ids}


def health(state: dict[str, object]) -> str:
    """ "healthy", "starting", "unhealthy"; or the status when not running ("exited")."""
    if state["Status"] != "running":
        return str(state["Status"])
    h = state.get("Health")
    return str(h["Status"]) if isinstance(h, dict) else "running"


def wait_healthy(project: Project, services: tuple[str, ...], within: float) -> None:
    """Every service healthy within ``within`` seconds, its progress on stderr as it goes;
    else an AssertionError with each one's state and the project's logs."""
    deadline, shown, states = time.monotonic() + within, "", {}
    started = time.monotonic()
    while True:
        states = {s: health(project.state(s)) for s in services}
        line = " ".join(f"{s}={h}" for s, h in states.items())
        if line != shown:
            print(f"[{time.monotonic() - started:5.1f}s] {line}", file=sys.stderr, flush=True)
            shown = line
        if all(h == "healthy" for h in states.values()):
            return
        crashed = {s: h for s, h in states.items() if h in ("exited", "dead", "restarting")}
        if crashed or time.monotonic() > deadline:
            raise AssertionError(f"not healthy: {states}\n{project.logs()}")
        time.sleep(1)


@pytest.fixture(scope="module")
def engine() -> dict[str, str]:
    return docker.engine_or_skip()


@pytest.fixture(scope="module")
def compose(engine: dict[str, str]) -> list[str]:
    try:
        return docker.compose_command(engine)
    except docker.NoEngine as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope="module")
def images(engine: dict[str, str], compose: list[str]) -> None:
    """Every image as compose builds them, the edge's too (later builds reuse the layers)."""
    Project(engine, compose)("--profile", "edge", "build", "--force-rm", timeout=800)


@pytest.fixture
def project(engine: dict[str, str], compose: list[str]) -> Iterator[Project]:
    p = Project(engine, compose)
    try:
        yield p
    finally:
        argv = ("--profile", "edge", "down", "-v", "--remove-orphans", "-t", "10")
        docker.run(p.env, *p.compose, *argv, timeout=180)


def _infer(port: int, pipeline: str) -> list[dict[str, object]]:
    body = json.dumps([{"X": [0.5] * N_FEATURES}]).encode()
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/pipelines/{pipeline}",
        data=body,
        headers={"Content-Type": "application/json; format=pandas-records"},
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        records: list[dict[str, object]] = json.loads(resp.read())
    return records


def _dashboard_get(port: int, path: str, login: tuple[str, str] | None) -> tuple[int, bytes]:
    """GET the dashboard's ``path`` (HTTP Basic with ``login``): the status and body."""
    headers = {}
    if login is not None:
        token = base64.b64encode(f"{login[0]}:{login[1]}".encode()).decode()
        headers["Authorization"] = f"Basic {token}"
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _fleet_names(port: int, login: tuple[str, str]) -> list[str]:
    status, body = _dashboard_get(port, "/api/fleet", login)
    assert status == 200, body[:300]
    return [str(row["name"]) for row in json.loads(body)["rows"]]


def _ready(port: int) -> bool:
    try:
        url = f"http://127.0.0.1:{port}/v2/health/ready"
        with urllib.request.urlopen(url, timeout=3) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def test_compose_up_publishes_serves_an_edge_survives_a_node_and_down_leaves_nothing(
    images: None, project: Project, tmp_path: Path
) -> None:
    project("up", "-d", timeout=300)
    wait_healthy(project, LONG_RUNNING, HEALTHY_WITHIN_S)
    config = project.state("config")
    assert (config["Status"], config["ExitCode"]) == ("exited", 0), project.logs("config")

    # The SDK's login, as a user gets it out of the config volume.
    raw = project(
        "run", "--rm", "--no-deps", "-T", "--entrypoint", "cat", "config", "/config/stack.json"
    )
    info = msgspec.json.decode(raw, type=StackInfo)
    assert info.nats_url == ",".join(f"nats://127.0.0.1:{p}" for p in project.client_ports)
    assert info.registry == f"127.0.0.1:{project.registry_port}"

    model_file = house_price_model(tmp_path / "rf.onnx", n_estimators=3)
    with Client(info.nats_url, info.sdk_user, info.sdk_password) as client:
        model = client.upload_model("rf", model_file)
        publish = client.build_pipeline("in-compose").add_model_step(model).publish(progress=False)
        assert publish.status == "Published", publish.error
        publish = publish.add_edge("compose-edge")
    assert publish.pipeline_url is not None
    ref = parse_reference(publish.pipeline_url)
    assert ref.registry == info.registry
    status, body = registry_get(
        info.registry,
        f"/v2/{ref.repository}/manifests/{ref.tag}",
        info.registry_username,
        info.registry_password,
    )
    assert status == 200, body[:300]
    layers = [layer["digest"] for layer in json.loads(body)["layers"]]
    assert layers == [f"sha256:{hashlib.sha256(model_file.read_bytes()).hexdigest()}"]

    # The fleet dashboard (healthy above: /healthz 200) lists the edge to the SDK's login,
    # and nothing without one.
    login = (info.sdk_user, info.sdk_password)
    port = project.dashboard_port
    try:
        wait_for(lambda: "compose-edge" in _fleet_names(port, login), 30, "listed", interval=0.5)
    except AssertionError:
        raise AssertionError(
            f"{_dashboard_get(port, '/api/fleet', login)}\n{project.logs('dashboard')}"
        ) from None
    assert _dashboard_get(port, "/healthz", None) == (200, b'{"live": true}')
    status, _ = _dashboard_get(port, "/api/fleet", None)
    assert status == 401
    status, _ = _dashboard_get(port, "/api/fleet", (info.sdk_user, "not-the-password"))
    assert status == 401

    # The example edge joins over the edge listener with its bundle and serves the pipeline.
    edge_env = {
        "EDGE_BUNDLE": publish.docker_run_variables["EDGE_BUNDLE"],
        "OCI_USERNAME": info.registry_username or "",
        "OCI_PASSWORD": info.registry_password or "",
    }
    project("--profile", "edge", "up", "-d", "--no-deps", "edge", timeout=120, **edge_env)
    try:
        wait_for(lambda: _ready(project.edge_port), 120, "the edge ready", interval=0.5)
    except AssertionError:
        raise AssertionError(f"the edge never became ready:\n{project.logs('edge')}") from None
    records = _infer(project.edge_port, "in-compose")
    assert len(records) == 1 and "out" in records[0], records
    assert info.registry_password and info.registry_password not in project.logs("edge", tail=400)

    # One node of three down: JetStream keeps its quorum, a publish still ends Published.
    project("kill", "nats-2")
    assert health(project.state("nats-2")) != "healthy"
    with Client(info.nats_url, info.sdk_user, info.sdk_password) as client:
        model = client.upload_model("rf2", model_file)
        second = client.build_pipeline("node-down").add_model_step(model).publish(progress=False)
    assert second.status == "Published", f"{second.error}\n{project.logs()}"

    # Stopped, the services exit 0 (SIGTERM: drain and close), then nothing is left.
    project("stop", *SERVICES, timeout=120)
    codes = {s: project.state(s)["ExitCode"] for s in SERVICES}
    assert codes == dict.fromkeys(SERVICES, 0), project.logs(*SERVICES)
    project("--profile", "edge", "down", "-v", timeout=180)
    assert project.leftovers() == {}
