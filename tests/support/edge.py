"""Edge agent test kit: models made at test time, pipelines pushed exactly as registry-push
pushes them, and the agent as a real ``edgepub-edge`` process on a free port."""

from __future__ import annotations

import contextlib
import hashlib
import json
import shlex
import socket
import string
import sys
import uuid
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import requests

from edgepub.services.registry_push import definition as plan_mod
from edgepub.services.registry_push.push import push_pipeline
from edgepub.shared.engine_config import EngineConfig
from edgepub.shared.oci import RegistryClient
from edgepub.shared.schemas import ModelVersion, PipelineVersion, PublishRequested, TensorSpec

from .procs import ChildProcess, free_port
from .servers import HOST, RegistryServer
from .services import clean_environ
from .waiting import wait_for

FEATURES = 18


def make_model(path: Path, *, features: int = FEATURES, seed: int = 0, trees: int = 20) -> Path:
    """A scikit-learn gradient-boosting regressor as ONNX: input ``tensor`` [?, features]
    float32, output ``variable`` [?, 1]."""
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.ensemble import GradientBoostingRegressor

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(400, features)).astype(np.float32)
    y = x[:, 0] * 2.0 - x[:, 1] + rng.normal(scale=0.1, size=400)
    model = GradientBoostingRegressor(n_estimators=trees, max_depth=3, random_state=seed)
    model.fit(x, y)
    onx = to_onnx(
        model, initial_types=[("tensor", FloatTensorType([None, features]))], target_opset=17
    )
    path.write_bytes(onx.SerializeToString())
    return path


def make_scaler(path: Path, *, features: int = FEATURES) -> Path:
    """A one-node ONNX model ``tensor`` -> ``scaled`` = tensor * 0.5: a first pipeline step."""
    import onnx
    from onnx import TensorProto, helper

    inp = helper.make_tensor_value_info("tensor", TensorProto.FLOAT, [None, features])
    out = helper.make_tensor_value_info("scaled", TensorProto.FLOAT, [None, features])
    half = helper.make_tensor("half", TensorProto.FLOAT, [1], [0.5])
    node = helper.make_node("Mul", ["tensor", "half"], ["scaled"])
    graph = helper.make_graph([node], "scale", [inp], [out], initializer=[half])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def model_version(
    name: str, path: Path, inputs: tuple[TensorSpec, ...] = (), outputs: tuple[TensorSpec, ...] = ()
) -> ModelVersion:
    data = path.read_bytes()
    return ModelVersion(
        name=name,
        version=str(uuid.uuid4()),
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        file_name=path.name,
        inputs=inputs,
        outputs=outputs,
    )


def publish(
    registry: RegistryServer,
    pipeline: str,
    steps: list[tuple[ModelVersion, Path]],
    version: str | None = None,
) -> str:
    """Push the pipeline artifact as registry-push would; returns its PIPELINE_URL."""
    pv = PipelineVersion(
        id=1,
        name=version or str(uuid.uuid4()),
        pipeline_name=pipeline,
        steps=tuple(m for m, _ in steps),
        steps_key="test",
        created_at=datetime.now(UTC),
    )
    req = PublishRequested(
        publish_id=1,
        pipeline_version=pv,
        engine_config=EngineConfig(),
        requested_at=datetime.now(UTC),
        created_on_version="test",
    )
    settings = registry.settings()
    plan = plan_mod.plan(req, settings)
    client = RegistryClient(settings)
    try:
        push_pipeline(client, plan, {m.sha256: p for m, p in steps})
    finally:
        client.close()
    return plan.pipeline_url


def blob_data_path(registry: RegistryServer, sha256: str) -> Path:
    """Where docker-registry keeps a blob's bytes (to tamper with them)."""
    return (
        registry.root_dir
        / "docker"
        / "registry"
        / "v2"
        / "blobs"
        / "sha256"
        / sha256[:2]
        / sha256
        / "data"
    )


def http() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # never a proxy: everything is on loopback
    return session


class EdgeAgent:
    """``edgepub-edge`` as a child process; its JSON log lines in ``log_path``."""

    def __init__(self, work: Path, env: dict[str, str], *, port: int = 0) -> None:
        self.port = port or free_port()
        self.persist = work / "persist"
        self.env = clean_environ()
        for key in (
            "PIPELINE_URL",
            "OCI_REGISTRY",
            "OCI_USERNAME",
            "OCI_PASSWORD",
            "EDGE_BUNDLE",
            "CONFIG_CPUS",
            "DEBUG",
            "LOCAL_INFERENCE_STORAGE",
            "PLATEAU_PAGE_SIZE",
        ):
            self.env.pop(key, None)
        self.env.update(
            EDGEPUB_PERSIST_DIR=str(self.persist),
            EDGEPUB_HOST=HOST,
            EDGEPUB_PORT=str(self.port),
            EDGEPUB_LOG_FORMAT="json",
        )
        self.env.update(env)
        self.child = ChildProcess(
            [sys.executable, "-m", "edgepub.edge_agent"],
            work / f"edge-{self.port}.log",
            env=self.env,
        )

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> EdgeAgent:
        self.child.spawn()
        return self

    def events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.child.log_text().splitlines():
            if line.startswith("{"):
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return out

    def event_names(self) -> list[str]:
        return [e.get("event", "") for e in self.events()]

    def ready(self) -> bool:
        try:
            return http().get(f"{self.url}/v2/health/ready", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def wait_ready(self, timeout: float = 30.0) -> None:
        def check() -> bool:
            if not self.child.running():
                raise AssertionError(
                    f"edge agent exited ({self.child.returncode()}):\n{self.child.log_tail()}"
                )
            return self.ready()

        wait_for(check, timeout, "the edge agent to be ready")

    def wait_event(self, name: str, count: int = 1, timeout: float = 30.0) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            matching = [e for e in self.events() if e.get("event") == name]
            return matching[count - 1] if len(matching) >= count else None

        result = wait_for(found, timeout, f"edge log event {name!r}")
        return result

    def stop(self, timeout: float = 30.0) -> int | None:
        return self.child.terminate(timeout)

    def kill(self) -> int | None:
        return self.child.kill()


def rss_mb(pid: int) -> float:
    """A process's resident set size (VmRSS) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def exchange(port: int, data: bytes, timeout: float = 10.0) -> bytes:
    """Send raw bytes on a fresh connection; everything read until the agent closes it."""
    with socket.create_connection((HOST, port), timeout=timeout) as sock:
        sock.sendall(data)
        return read_until_closed(sock)


def read_until_closed(sock: socket.socket) -> bytes:
    reply = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return reply
        if not chunk:
            return reply
        reply += chunk


@contextlib.contextmanager
def serving(
    work: Path, pipeline: str, steps: list[tuple[ModelVersion, Path]], env: dict[str, str]
) -> Iterator[EdgeAgent]:
    """A registry holding ``pipeline`` and an agent serving it, both stopped on exit."""
    registry = RegistryServer(work / "registry").start()
    agent: EdgeAgent | None = None
    try:
        url = publish(registry, pipeline, steps)
        creds = {
            "PIPELINE_URL": url,
            "OCI_USERNAME": registry.username,
            "OCI_PASSWORD": registry.password,
        }
        agent = EdgeAgent(work, {**creds, **env}).start()
        agent.wait_ready()
        yield agent
    finally:
        if agent is not None:
            agent.kill()
        registry.kill()


def persisted_seed(persist: Path) -> str:
    """The nkey seed an agent keeps in its persistent dir (a secret: for assertions only)."""
    seed = json.loads((persist / "identity.json").read_text())["seed"]
    assert isinstance(seed, str) and seed.startswith("SU"), "identity.json holds no user seed"
    return seed


class DockerRun(NamedTuple):
    """What a displayed ``docker run`` command gives its container, read as Docker would."""

    env: dict[str, str]  # every -e K=V, in order
    volumes: dict[str, str]  # container path -> host path (-v HOST:CONTAINER)
    ports: dict[int, int]  # container port -> host port (-p HOST:CONTAINER)
    image: str


def parse_docker_run(command: str, values: Mapping[str, str]) -> DockerRun:
    """Split ``command`` as a shell would (line continuations included), with its ``$VAR``s
    given by ``values``: a variable the command needs that ``values`` lacks is an error."""
    text = string.Template(command.replace("\\\n", " ")).substitute(values)
    argv = shlex.split(text)
    assert argv[:2] == ["docker", "run"], f"not a docker run command: {command[:40]!r}"
    env: dict[str, str] = {}
    volumes: dict[str, str] = {}
    ports: dict[int, int] = {}
    rest = iter(argv[2:])
    image = ""
    for arg in rest:
        if arg == "-e":
            key, _, value = next(rest).partition("=")
            env[key] = value
        elif arg == "-v":
            host, _, inside = next(rest).partition(":")
            volumes[inside] = host
        elif arg == "-p":
            host, _, inside = next(rest).partition(":")
            ports[int(inside)] = int(host)
        elif arg.startswith("-"):
            assert "=" in arg or arg == "--gpus", f"a flag this reader does not know: {arg}"
            if arg == "--gpus":
                next(rest)
        else:
            image = arg
    return DockerRun(env=env, volumes=volumes, ports=ports, image=image)
