"""The Ops side as users run it: ``docker-compose up --build`` of ``docker-compose.yml``, with
``docker-compose.host.yml`` because only host networking exists here (and so on loopback and
free ports); healthy; a publish through it with the SDK, its artifact in the registry; then
``down -v`` with no container or volume left. And a data dir the image's user may not write
(a volume that is root's) is refused at start with the fix, not a traceback in a loop."""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from edgepub import Client
from edgepub.samples import house_price_model
from edgepub.shared.artifact import parse_reference
from edgepub.shared.stack_file import StackInfo
from support import docker
from support.procs import free_port
from support.servers import registry_get
from support.waiting import wait_for

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]
FILES = ("-f", "docker-compose.yml", "-f", "docker-compose.host.yml")
IMAGE = "edgepub-ops:0.1.0"  # docker-compose.yml's `image:`
UID = "10001"  # the image's user


class Project:
    """One compose project of the Ops side, on its own loopback ports and volume."""

    def __init__(self, env: dict[str, str], compose: list[str]) -> None:
        self.name = f"edgepubtest{uuid.uuid4().hex[:8]}"
        self.nats_port = free_port()
        self.registry_port = free_port()
        self.env = {k: v for k, v in env.items() if not k.startswith("EDGEPUB_")} | {
            "EDGEPUB_BASE_IMAGE": docker.base_image(env),
            "EDGEPUB_HOST": "127.0.0.1",
            "EDGEPUB_NATS_PORT": str(self.nats_port),
            "EDGEPUB_REGISTRY_PORT": str(self.registry_port),
        }
        self.compose = [*compose, "-p", self.name, *FILES]

    def __call__(self, *args: str, timeout: float = 120) -> str:
        out = docker.run(self.env, *self.compose, *args, timeout=timeout)
        assert out.returncode == 0, f"compose {args}: {out.stdout[-2000:]}{out.stderr[-3000:]}"
        return out.stdout

    def logs(self) -> str:
        out = docker.run(self.env, *self.compose, "logs", "--no-color", "--tail", "60")
        return out.stdout + out.stderr

    def container(self) -> str:
        return self("ps", "-q", "ops").strip()

    def inspect(self, container: str, template: str) -> str:
        out = docker.run(self.env, "docker", "inspect", "-f", template, container)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip()

    def leftovers(self) -> dict[str, list[str]]:
        found = docker.leftovers(self.env, f"com.docker.compose.project={self.name}")
        return {kind: list(ids) for kind, ids in found.items() if ids}


@pytest.fixture(scope="module")
def engine() -> dict[str, str]:
    return docker.engine_or_skip()


@pytest.fixture(scope="module")
def compose(engine: dict[str, str]) -> list[str]:
    try:
        return docker.compose_command(engine)
    except docker.NoEngine as exc:
        pytest.skip(str(exc))


@pytest.fixture
def project(engine: dict[str, str], compose: list[str]) -> Iterator[Project]:
    p = Project(engine, compose)
    try:
        yield p
    finally:
        docker.run(p.env, *p.compose, "down", "-v", "--remove-orphans", timeout=120)


@pytest.fixture(scope="module")
def ops_image(engine: dict[str, str], compose: list[str]) -> str:
    """The image as compose builds it (later builds reuse its layers)."""
    Project(engine, compose)("build", "--force-rm", "ops", timeout=900)
    return IMAGE


def test_compose_up_publishes_and_down_leaves_nothing(
    ops_image: str, project: Project, tmp_path: Path
) -> None:
    project("up", "--build", "-d", timeout=900)
    container = project.container()

    def settled() -> str:
        """ "healthy"; or what the container is if not running (a crash loop: "restarting")."""
        state = json.loads(project.inspect(container, "{{json .State}}"))
        if state["Status"] != "running":
            return str(state["Status"])
        return "healthy" if state["Health"]["Status"] == "healthy" else ""

    status = wait_for(settled, 120, "the ops container to be healthy", interval=0.5)
    assert status == "healthy", f"the ops container is {status}:\n{project.logs()}"

    # The fresh named volume took the image's /data: the stack's user's, 0700.
    stat = project("exec", "-T", "ops", "stat", "-c", "%u %a %n", "/data", "/data/stack.json")
    assert stat.splitlines() == [f"{UID} 700 /data", f"{UID} 600 /data/stack.json"]
    raw = project("exec", "-T", "ops", "cat", "/data/stack.json")
    info = msgspec.json.decode(raw, type=StackInfo)
    assert info.nats_url == f"nats://127.0.0.1:{project.nats_port}"
    assert info.registry == f"127.0.0.1:{project.registry_port}"

    model_file = house_price_model(tmp_path / "rf.onnx", n_estimators=3)
    with Client(info.nats_url, info.sdk_user, info.sdk_password) as client:
        model = client.upload_model("rf", model_file)
        publish = client.build_pipeline("in-compose").add_model_step(model).publish(progress=False)
    assert publish.status == "Published", publish.error
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

    project("stop", timeout=60)
    assert project.inspect(container, "{{.State.ExitCode}}") == "0", project.logs()
    project("down", "-v", timeout=120)
    assert project.leftovers() == {}


def test_a_data_dir_it_cannot_write_is_refused_with_the_fix(
    ops_image: str, engine: dict[str, str], tmp_path: Path
) -> None:
    """As a volume an older image made (root's, 0755): exit 1 naming the chown, no traceback."""
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o755)
    if os.stat(data).st_uid == int(UID):
        pytest.skip(f"this test runs as uid {UID}, the image's user")
    out = docker.run(
        engine,
        "docker",
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        f"{data}:/data",
        ops_image,
        "--nats-port",
        "0",
        "--registry-port",
        "0",
        timeout=120,
    )
    assert out.returncode == 1, out.stdout + out.stderr
    assert "Traceback" not in out.stderr, out.stderr
    assert f"data dir /data is not writable by this user, uid {UID}" in out.stderr, out.stderr
    assert f"chown -R {UID} /data" in out.stderr
    assert list(data.iterdir()) == []
