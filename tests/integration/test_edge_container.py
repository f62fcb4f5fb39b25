"""The engine image, built from the project and run with the publish's own Docker Run
command: host networking in place of ``-p``, a temp dir for ``/persist``. Needs a Docker
engine: the one ``docker info`` reaches, else ``../shared/tools/docker-up``'s (as on CI
here); see ``support/docker.py``."""

from __future__ import annotations

import json
import shlex
import subprocess
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgepub import Client
from edgepub.commands import docker_run_command
from edgepub.samples import N_FEATURES, house_price_model
from support.docker import build_image, engine_answers, engine_or_skip, find_engine
from support.procs import free_port
from support.servers import NatsServer, RegistryServer
from support.services import OpsServices
from support.waiting import wait_for

pytestmark = [pytest.mark.docker, pytest.mark.timeout(900)]
IMAGE = "edgepub-edge:0.1.0"


@pytest.fixture(scope="session")
def docker_env() -> dict[str, str]:
    env = engine_or_skip()
    build_image(env, "deploy/edge/Dockerfile", IMAGE)
    return env


@pytest.fixture
def container_name(docker_env: dict[str, str]) -> Iterator[str]:
    name = f"edgepub-test-{uuid.uuid4().hex[:8]}"
    try:
        yield name
    finally:
        subprocess.run(  # -v: the image's /persist, an anonymous volume unless bound
            ["docker", "rm", "-f", "-v", name],
            env=docker_env,
            capture_output=True,
            check=False,
            timeout=60,
        )


def test_an_engine_docker_info_reaches_is_used_without_docker_up(tmp_path: Path) -> None:
    """DOCKER_HOST unset and no docker-up, yet ``docker info`` answers (here through a docker
    context naming the engine): that engine is used, the tests do not skip."""
    env = engine_or_skip()
    env.pop("DOCKER_HOST", None)
    if not engine_answers(env):  # the engine is DOCKER_HOST's: name it in a context instead
        host = engine_or_skip()["DOCKER_HOST"]
        env["DOCKER_CONFIG"] = str(tmp_path / "docker-config")
        for argv in (
            ("docker", "context", "create", "edgepub-test", "--docker", f"host={host}"),
            ("docker", "context", "use", "edgepub-test"),
        ):
            out = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)
            assert out.returncode == 0, out.stderr
    found = find_engine(env, docker_up=tmp_path / "no-docker-up")
    assert "DOCKER_HOST" not in found
    ps = subprocess.run(["docker", "ps"], env=found, capture_output=True, text=True, timeout=30)
    assert ps.returncode == 0, ps.stderr


def _as_run_here(
    command: str, *, name: str, port: int, persist: Path, registry: RegistryServer
) -> list[str]:
    """The publish's Docker Run command, with only what this machine needs changed."""
    text = command.replace("\\\n", " ")
    text = text.replace("-p $EDGE_PORT:8080", f"--network host -e EDGEPUB_PORT={port}")
    text = text.replace("$PERSISTENT_VOLUME_DIR", str(persist))
    text = text.replace("$OCI_USERNAME", registry.username)
    text = text.replace("$OCI_PASSWORD", registry.password)
    argv = shlex.split(text)
    assert argv[:2] == ["docker", "run"]
    return ["docker", "run", "-d", "--name", name, *argv[2:]]


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read()
    except OSError:
        return 0, b""


def test_engine_image_serves_the_publish_from_its_docker_run_command(
    docker_env: dict[str, str],
    container_name: str,
    ops: OpsServices,
    nats_server: NatsServer,
    registry: RegistryServer,
    tmp_path: Path,
) -> None:
    s = nats_server.settings()
    with Client(s.url, s.user, s.password) as client:
        model = client.upload_model("rf", house_price_model(tmp_path / "rf.onnx", n_estimators=3))
        publish = client.build_pipeline("in-docker").add_model_step(model).publish(progress=False)
    assert publish.pipeline_url and publish.engine_url == IMAGE
    command = docker_run_command(
        pipeline_url=publish.pipeline_url,
        engine_url=publish.engine_url,
        engine_config=publish.engine_config,
    )
    assert command in repr(publish)  # the very command a DevOps engineer is shown

    port = free_port()
    persist = tmp_path / "persist"
    persist.mkdir(mode=0o777)
    persist.chmod(0o777)  # the image runs as a non-root user
    argv = _as_run_here(command, name=container_name, port=port, persist=persist, registry=registry)
    run = subprocess.run(
        argv, env=docker_env, capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 0, run.stderr

    def logs() -> str:
        out = subprocess.run(
            ["docker", "logs", container_name],
            env=docker_env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        return out.stdout + out.stderr

    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: _get(f"{base}/v2/health/ready")[0] == 200, 120, "engine ready")
    except Exception:
        raise AssertionError(f"engine never became ready:\n{logs()[-4000:]}") from None

    body = json.dumps([{"X": [0.5] * N_FEATURES}, {"X": [-1.0] * N_FEATURES}]).encode()
    request = urllib.request.Request(
        f"{base}/pipelines/in-docker",
        data=body,
        headers={"Content-Type": "application/json; format=pandas-records"},
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        records = json.loads(resp.read())
    assert len(records) == 2 and all("out" in r and "time" in r for r in records)
    assert registry.password not in logs()

    stop = subprocess.run(
        ["docker", "stop", "-t", "30", container_name],
        env=docker_env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert stop.returncode == 0
    state = subprocess.run(
        ["docker", "inspect", "-f", "{{.State.ExitCode}}", container_name],
        env=docker_env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert state.stdout.strip() == "0", logs()[-3000:]
