"""Helpers for the registry-push tests across real processes (no tests in here).

The service runs as ``python -m edgepub.services.registry_push`` against a real nats-server
and a real docker-registry; a test plays the publish service's part by hand: it puts model
bytes in the object store, publishes a PublishRequested on the work stream and reads the
outcome events back from the stream. ``SlowLink`` puts a slow network between the service
and the registry; ``start_unprivileged`` runs a service that file modes bind even as root.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from nats.aio.client import Client as NATS
from nats.js.api import ConsumerInfo
from nats.js.errors import NotFoundError
from onnx import TensorProto, helper, numpy_helper

from edgepub.shared import artifact, bus, objects, schemas, subjects
from edgepub.shared.oci import RegistryClient
from edgepub.shared.schemas import (
    ModelVersion,
    PipelineVersion,
    PublishRequested,
    Pushed,
    PushFailed,
    PushOutcome,
    TensorSpec,
)
from support.procs import ChildProcess
from support.servers import NatsServer, RegistryServer
from support.services import OpsServices, ServiceProcess

MB = 1024 * 1024


def onnx_model(weights: int = 4, seed: int = 0) -> bytes:
    """y = x @ W with W of shape (4, weights/4) float32: ``weights`` floats of random bytes."""
    cols = max(1, weights // 4)
    w = np.random.default_rng(seed).standard_normal((4, cols), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        "edgepub-test",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, cols])],
        initializer=[numpy_helper.from_array(w, name="W")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return bytes(model.SerializeToString())


def model_version(name: str, data: bytes, file_name: str = "model.onnx") -> ModelVersion:
    return ModelVersion(
        name=name,
        version=str(uuid.uuid4()),
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        file_name=file_name,
        inputs=(TensorSpec(name="x", dtype="float32", shape=(None, 4)),),
        outputs=(TensorSpec(name="y", dtype="float32", shape=(None, None)),),
    )


def publish_requested(
    steps: Sequence[ModelVersion],
    *,
    pipeline: str = "edge-pipeline",
    publish_id: int = 1,
    version: str | None = None,
    requested_at: datetime | None = None,
) -> PublishRequested:
    return PublishRequested(
        publish_id=publish_id,
        pipeline_version=PipelineVersion(
            id=publish_id,
            name=version or str(uuid.uuid4()),
            pipeline_name=pipeline,
            steps=tuple(steps),
            steps_key="test",
            created_at=datetime.now(UTC),
        ),
        engine_config={
            "engine": {
                "cpu": 0.5,
                "replicas": 1,
                "resources": {
                    "limits": {"cpu": 0.5, "memory": "900Mi"},
                    "requests": {"cpu": 0.5, "memory": "900Mi"},
                },
            }
        },
        requested_at=requested_at or datetime.now(UTC),
        created_on_version="0.1.0",
    )


class Bus:
    """The test's own NATS connection, as the ``publish`` service's user (the one that
    publishes PublishRequested for real), on one event loop for the test."""

    def __init__(self, nats: NatsServer) -> None:
        self.nats = nats
        self.loop = asyncio.new_event_loop()
        self.nc: NATS = self.run(bus.connect(nats.settings("publish"), name="registry-push-test"))
        self.js = self.nc.jetstream()
        self.run(bus.ensure_all(self.js))
        self._push_nc: NATS | None = None

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def close(self) -> None:
        if self._push_nc is not None:
            self.run(self._push_nc.close())
        self.run(self.nc.close())
        self.loop.close()

    def push_consumer(self) -> ConsumerInfo:
        """registry-push's durable as the server sees it (read as the ``registry-push``
        user, the one allowed to): what is pending, what is delivered and not acked."""

        async def info() -> ConsumerInfo:
            if self._push_nc is None:
                settings = self.nats.settings("registry-push")
                self._push_nc = await bus.connect(settings, name="registry-push-test-reader")
            js = self._push_nc.jetstream()
            got: ConsumerInfo = await js.consumer_info(
                subjects.WORK_STREAM, subjects.CONSUMER_REGISTRY_PUSH
            )
            return got

        result: ConsumerInfo = self.run(info())
        return result

    def put_model(self, name: str, data: bytes, file_name: str = "model.onnx") -> ModelVersion:
        mv = model_version(name, data, file_name)
        self.put_object(mv.sha256, data)
        return mv

    def put_object(self, object_name: str, data: bytes) -> None:
        """Write an entry as the publish service does (it may not purge an old one)."""

        async def chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(data), objects.CHUNK):
                yield data[i : i + objects.CHUNK]

        self.run(
            objects.write(
                self.js, subjects.OBJECT_STORE_MODELS, object_name, objects.new_nuid(), chunks()
            )
        )

    def send(self, req: PublishRequested, msg_id: str | None = None) -> None:
        headers = {subjects.HEADER_MSG_ID: msg_id} if msg_id else None
        self.run(self.js.publish(subjects.PUBLISH_REQUESTED, schemas.encode(req), headers=headers))

    def outcomes(self, publish_id: int) -> list[PushOutcome]:
        """Every PushStarted/Pushed/PushFailed on the work stream for ``publish_id``."""
        return [e for e in self.run(self._outcomes()) if e.publish_id == publish_id]

    async def _outcomes(self) -> list[PushOutcome]:
        """Read message by message: the publish user may read its stream, not consume it."""
        out: list[PushOutcome] = []
        info = await self.js.stream_info(subjects.WORK_STREAM)
        for seq in range(info.state.first_seq or 1, info.state.last_seq + 1):
            try:
                msg = await self.js.get_msg(subjects.WORK_STREAM, seq)
            except NotFoundError:
                continue  # a gap (deleted message)
            if msg.subject in subjects.PUBLISH_PUSHED_OR_FAILED:
                out.append(schemas.push_outcome_decoder.decode(msg.data or b""))
        return out

    def wait_outcome(self, publish_id: int, timeout: float = 60.0) -> Pushed | PushFailed:
        """The first Pushed or PushFailed for ``publish_id`` (polling the stream)."""
        deadline = time.monotonic() + timeout
        while True:
            for event in self.outcomes(publish_id):
                if isinstance(event, Pushed | PushFailed):
                    return event
            if time.monotonic() >= deadline:
                raise AssertionError(f"no Pushed/PushFailed for publish {publish_id} in {timeout}s")
            time.sleep(0.1)


class PushService:
    """Starts registry-push (``start(**env)``; again to restart with other settings) and
    kills it at the end of the test."""

    def __init__(self, nats: NatsServer, registry: RegistryServer, tmp_path: Path) -> None:
        self.services = OpsServices(nats, registry, tmp_path / "service-logs")
        self.cache_dir = tmp_path / "cache"
        self.base_env = {"EDGEPUB_CACHE_DIR": str(self.cache_dir), "EDGEPUB_ACK_WAIT_S": "2"}

    def start(self, **env: str) -> ServiceProcess:
        return self.services.start("registry_push", env={**self.base_env, **env})

    def start_unprivileged(self, **env: str) -> ServiceProcess:
        return start_unprivileged(self.services, "registry_push", {**self.base_env, **env})

    def start_replica(self, name: str, **env: str) -> ServiceProcess:
        """One more registry-push process beside ``start``'s (its own log, same durable)."""
        proc = ServiceProcess(
            "registry_push",
            self.services.nats,
            self.services.registry,
            self.services.log_dir / name,
            env={**self.base_env, **env},
        )
        self.services.procs[name] = proc
        proc.start()
        return proc

    def kill(self) -> None:
        for proc in self.services.procs.values():
            proc.kill()


def start_unprivileged(
    services: OpsServices, name: str, env: dict[str, str] | None = None
) -> ServiceProcess:
    """Start (or restart) service ``name`` so that file modes bind it: as root, without the
    capabilities that bypass them (``setpriv``), so a directory made read-only (0500)
    after it started is one it may not write."""
    old = services.procs.get(name)
    if old is not None:
        old.terminate()
    proc = ServiceProcess(name, services.nats, services.registry, services.log_dir, env=env)
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: file modes would not bind the service")
        drop = "--bounding-set=-dac_override,-dac_read_search,-fowner"
        proc.child = ChildProcess(
            [setpriv, drop, "--", *proc.child.argv], proc.child.log_path, env=proc.env
        )
    services.procs[name] = proc
    proc.start()
    return proc


class SlowLink:
    """A TCP proxy on 127.0.0.1 in front of ``target``: bytes towards the target pass at
    ``rate`` bytes/s per connection (``None``: at full speed), answers at full speed. A
    registry behind it is a registry on a slow link; ``address`` is what the service is
    given as EDGEPUB_REGISTRY. ``sent`` counts the bytes passed towards the target."""

    CHUNK = 16 * 1024

    def __init__(self, target: tuple[str, int], rate: float | None) -> None:
        self.target = target
        self.rate = rate
        self.sent = 0
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        # A small receive buffer: the sender feels the slow link at once.
        self._server.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        self._server.bind(("127.0.0.1", 0))
        self._server.listen()
        self._server.settimeout(0.2)
        self.port = int(self._server.getsockname()[1])
        self._spawn(self._accept)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def open_connections(self) -> int:
        with self._lock:
            return sum(1 for s in self._sockets if s.fileno() != -1) // 2

    def _spawn(self, fn: Any, *args: Any) -> None:
        t = threading.Thread(target=fn, args=args, daemon=True)
        with self._lock:
            self._threads.append(t)
        t.start()

    def _accept(self) -> None:
        while not self._closing.is_set():
            try:
                client, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            with self._lock:
                self._sockets += [client, upstream]
            self._spawn(self._pump, client, upstream, True)
            self._spawn(self._pump, upstream, client, False)

    def _pump(self, src: socket.socket, dst: socket.socket, slow: bool) -> None:
        try:
            while data := src.recv(self.CHUNK):
                rate = self.rate
                if slow and rate:
                    time.sleep(len(data) / rate)  # the link's speed, not a synchronisation
                dst.sendall(data)
                if slow:
                    with self._lock:
                        self.sent += len(data)
        except OSError:
            pass  # either side closed: end both
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def close(self) -> None:
        self._closing.set()
        self._server.close()
        with self._lock:
            sockets, threads = list(self._sockets), list(self._threads)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for t in threads:
            t.join(5)


def uploads_in_progress(
    registry: RegistryServer, repository: str = "edgepub/pipelines"
) -> list[int]:
    """The bytes each blob upload under way in ``repository`` holds so far, read from the
    registry's own storage (an upload's data grows as its bytes arrive)."""
    root = registry.root_dir / "docker/registry/v2/repositories" / repository
    sizes = []
    for data in root.glob("**/_uploads/*/data"):
        with contextlib.suppress(FileNotFoundError):  # an upload just ended
            sizes.append(data.stat().st_size)
    return sizes


def read_back_pipeline(
    client: RegistryClient, pushed: Pushed, models: Sequence[ModelVersion], tmp_path: Path
) -> schemas.PipelineDefinition:
    """Fetch manifest, config and every layer; assert the digests and titles."""
    ref = artifact.parse_reference(pushed.pipeline_url)
    manifest, digest = client.manifest(ref.repository, ref.reference)
    assert digest == pushed.pipeline_digest
    assert manifest["config"]["mediaType"] == artifact.PIPELINE_CONFIG_MEDIA_TYPE
    assert manifest["artifactType"] == artifact.PIPELINE_ARTIFACT_TYPE
    config = client.blob(ref.repository, manifest["config"]["digest"])
    definition = schemas.definition_decoder.decode(config)
    layers = {layer["digest"]: layer for layer in manifest["layers"]}
    assert set(layers) == {m.digest for m in models}
    for step in definition.steps:
        layer = layers[f"sha256:{step.sha256}"]
        assert layer["annotations"][artifact.ANNOTATION_TITLE] == step.file_name
        assert layer["mediaType"] == artifact.ONNX_MODEL_MEDIA_TYPE
        out = tmp_path / "pulled" / step.file_name
        client.blob_to_file(ref.repository, layer["digest"], out)  # verifies the digest
        assert out.stat().st_size == step.size
    return definition


# --- fixtures (registered in tests/conftest.py via pytest_plugins) ---


@pytest.fixture
def test_bus(nats_server: NatsServer) -> Iterator[Bus]:
    b = Bus(nats_server)
    try:
        yield b
    finally:
        b.close()


@pytest.fixture
def push_service(
    nats_server: NatsServer, registry: RegistryServer, tmp_path: Path
) -> Iterator[PushService]:
    service = PushService(nats_server, registry, tmp_path)
    try:
        yield service
    finally:
        service.kill()


@pytest.fixture
def slow_link(registry: RegistryServer) -> Iterator[SlowLink]:
    """The registry behind a 1 MiB/s link (set ``rate`` to change it)."""
    link = SlowLink(("127.0.0.1", registry.port), rate=float(MB))
    try:
        yield link
    finally:
        link.close()


@pytest.fixture
def reader(registry: RegistryServer) -> Iterator[RegistryClient]:
    client = RegistryClient(registry.settings())
    try:
        yield client
    finally:
        client.close()
