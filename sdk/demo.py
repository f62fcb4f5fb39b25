"""``edgepub demo``: the README's first command, end to end on the embedded stack.

Starts an embedded stack (unless one is running in the data dir), makes a sample model,
uploads it, builds and publishes a pipeline with the seed's deployment config, shows the
publish, reads the artifact back from the registry and checks every digest; adds an edge,
starts an edge agent from its Docker Run variables (it joins with the bundle's one-time
token) and sends inferences in both JSON forms, showing the curl commands that do the same;
replaces the publish with a retrained model and watches the edge swap pipelines without a
restart; removes the edge and shows it cut off while it still serves locally; and ends
reading the inference rows back at Ops with ``pipeline.logs()``, each with its edge as
``metadata.partition`` and the pipeline version that served it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

from edgepub.samples import N_FEATURES
from edgepub.shared.artifact import parse_reference
from edgepub.shared.oci import RegistryClient
from edgepub.shared.schemas import definition_decoder
from edgepub.shared.settings import RegistrySettings
from edgepub.shared.stack_file import StackInfo

if TYPE_CHECKING:
    from edgepub.pipeline import Pipeline


def _say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def spawn(
    argv: list[str], log_path: Path, stack: ExitStack, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start a background process logging to ``log_path``; ``stack`` stops it (SIGTERM)."""
    log = log_path.open("ab")
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT)

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()

    stack.callback(stop)
    return proc


def start_stack(data_dir: Path, stack: ExitStack) -> None:
    """Start ``edgepub up`` on free ports in the background; stop it when ``stack`` closes."""
    proc = spawn(
        [
            sys.executable,
            "-m",
            "edgepub.services.stack",
            "up",
            "--data-dir",
            str(data_dir),
            "--nats-port",
            "0",
            "--registry-port",
            "0",
            "--edge-port",
            "0",
            "--dashboard-port",
            "0",
        ],
        data_dir / "stack.log",
        stack,
    )
    deadline = time.monotonic() + 60
    while not (data_dir / "stack.json").exists():
        if proc.poll() is not None:
            raise SystemExit(f"edgepub up exited with {proc.returncode}; see {data_dir}/stack.log")
        if time.monotonic() > deadline:
            raise SystemExit(f"the stack did not start within 60 s; see {data_dir}/stack.log")
        time.sleep(0.2)


def verify_artifact(pipeline_url: str, registry: RegistrySettings) -> None:
    """Fetch the published pipeline back and check the config and every layer digest."""
    ref = parse_reference(pipeline_url)
    client = RegistryClient(registry)
    manifest, digest = client.manifest(ref.repository, ref.tag or ref.digest or "")
    print(f"manifest {pipeline_url}\n  digest {digest}")
    config = client.blob(ref.repository, manifest["config"]["digest"])
    definition = definition_decoder.decode(config)
    print(
        f"  config {manifest['config']['mediaType']}: pipeline {definition.pipeline_name} "
        f"version {definition.pipeline_version}, {len(definition.steps)} step(s)"
    )
    for layer in manifest["layers"]:
        data = client.blob(ref.repository, layer["digest"])
        ok = "sha256:" + hashlib.sha256(data).hexdigest() == layer["digest"]
        title = layer.get("annotations", {}).get("org.opencontainers.image.title", "?")
        print(
            f"  layer {title}: {layer['size']} bytes, {layer['digest'][:19]}… "
            f"{'verified' if ok else 'DIGEST MISMATCH'}"
        )
        if not ok:
            raise SystemExit("the registry returned a layer whose digest does not match")


def start_agent(
    variables: dict[str, str], info: StackInfo, home: Path, stack: ExitStack, name: str = "edge"
) -> str:
    """Run ``edgepub-edge`` with the Docker Run command's variables (PIPELINE_URL and
    EDGE_BUNDLE from ``docker_run_variables``, the registry's credentials); its
    ``/persist`` is a directory here."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ)
    env.update(variables)
    env.update(
        OCI_REGISTRY=info.registry,
        OCI_USERNAME=info.registry_username or "",
        OCI_PASSWORD=info.registry_password or "",
        CONFIG_CPUS="1",
        EDGEPUB_PERSIST_DIR=str(home / ("persist" if name == "edge" else f"persist-{name}")),
        EDGEPUB_HOST="127.0.0.1",
        EDGEPUB_PORT=str(port),
        EDGEPUB_LOG_FORMAT="json",
        EDGEPUB_HEARTBEAT_S="1",
    )
    log_file = home / ("edge-agent.log" if name == "edge" else f"{name}-agent.log")
    proc = spawn([sys.executable, "-m", "edgepub.edge_agent"], log_file, stack, env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            with urllib.request.urlopen(f"{base}/v2/health/ready", timeout=2) as resp:
                if resp.status == 200:
                    return base
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the edge agent did not become ready; see {home}/edge-agent.log")
        time.sleep(0.2)


def wait_for_log(home: Path, event: str, timeout: float = 60.0) -> None:
    """Wait until the agent's log holds ``event`` (one JSON object per line)."""
    path = home / "edge-agent.log"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in path.read_text(errors="replace").splitlines():
            if line.startswith("{") and json.loads(line).get("event") == event:
                print(f"edge agent: {event}")
                return
        time.sleep(0.2)
    raise SystemExit(f"the edge agent did not log {event!r} within {timeout:.0f}s; see {path}")


def wait_until(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.25)


def curl(url: str, content_type: str, body: object) -> None:
    """Show the curl command, then send the same request and print the answer."""
    data = json.dumps(body)
    print(f"$ curl -s -X POST {url} \\\n    -H 'Content-Type: {content_type}' \\\n    -d '{data}'")
    request = urllib.request.Request(
        url, data=data.encode(), headers={"Content-Type": content_type}
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        answer = json.loads(resp.read())
    for item in answer if isinstance(answer, list) else [answer]:
        print(json.dumps(item))


def infer_examples(base: str, pipeline: str, input_name: str, n_features: int) -> None:
    row = [round(0.1 * i, 1) for i in range(n_features)]
    _say("pandas-records JSON (the Wallaroo edge's format)")
    curl(
        f"{base}/pipelines/{pipeline}",
        "application/json; format=pandas-records",
        [{input_name: row}, {input_name: [-x for x in row]}],
    )
    _say("Open Inference Protocol v2 JSON (KServe / Triton clients)")
    curl(
        f"{base}/v2/models/{pipeline}/infer",
        "application/json",
        {
            "inputs": [
                {"name": input_name, "shape": [1, n_features], "datatype": "FP32", "data": row}
            ],
        },
    )


SHIPPED_ROWS = 6  # two inference rounds of a two-record and a one-record request
LOGS_STEP = "pipeline.logs(): the inference rows at Ops, partition = the edge that sent them"
LOG_COLUMNS = ("time", "out.variable", "metadata.partition", "metadata.pipeline_version")


def show_logs(pipeline: Pipeline, publishes: dict[str, str]) -> None:
    """The rows at Ops, each with its edge and the pipeline version that served it (named
    by ``publishes``); a removed edge's rows stay: the log is Ops', not the edge's."""
    frame = pipeline.logs(dataset=["time", "out", "metadata"])
    print(frame[[c for c in LOG_COLUMNS if c in frame.columns]].to_string(index=False))
    counts = frame.groupby(["metadata.partition", "metadata.pipeline_version"], sort=False).size()
    for (partition, version), n in reversed(list(counts.items())):
        served = f"{version} ({publishes[version]})" if version in publishes else version
        print(f"{n} rows from {partition} served by pipeline version {served}")


def keep_serving(base: str, pipeline: str, input_name: str, info: StackInfo) -> None:
    """Until Ctrl-C: an inference a second, so the dashboard shows traffic arrive."""
    _say(f"the dashboard: {info.dashboard_url}")
    where = Path(info.data_dir) / "stack.json"
    print(f"log in as {info.sdk_user}; the password is sdk_password in {where} (mode 0600)")
    print("the edge sends an inference a second; watch its row, chart and logs. Ctrl-C stops.")
    url = f"{base}/v2/models/{pipeline}/infer"
    rng = 0
    try:
        while True:
            rng += 1
            row = [float((rng * 7 + i) % 13) for i in range(N_FEATURES)]
            body = {
                "inputs": [
                    {"name": input_name, "shape": [1, N_FEATURES], "datatype": "FP32", "data": row}
                ]
            }
            req = urllib.request.Request(
                url, json.dumps(body).encode(), {"Content-Type": "application/json"}
            )
            with contextlib.suppress(OSError):
                urllib.request.urlopen(req, timeout=5).close()
            time.sleep(1.0)
    except KeyboardInterrupt:
        print()


def run_demo(data_dir: str | None, keep: bool = False) -> int:
    from edgepub import Client, DeploymentConfigBuilder
    from edgepub.samples import house_price_model
    from edgepub.shared.stack_file import load_stack_info

    with ExitStack() as stack:
        home = (
            Path(data_dir)
            if data_dir
            else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edgepub-demo-")))
        )
        home.mkdir(parents=True, exist_ok=True)
        _say(f"starting the embedded stack in {home}")
        start_stack(home, stack)
        info = load_stack_info(home)
        print(f"NATS {info.nats_url}, registry {info.registry}")
        if info.dashboard_url:
            print(f"dashboard {info.dashboard_url} (log in as {info.sdk_user}: stack.json)")

        _say("making a sample model (scikit-learn random forest -> ONNX)")
        model_path = house_price_model(home / "house-price-rf.onnx")

        client = stack.enter_context(Client(data_dir=home))
        _say("upload_model, build_pipeline, add_model_step, publish")
        model = client.upload_model("house-price-rf", model_path)
        print(model)
        config = DeploymentConfigBuilder().replica_count(1).cpus(0.5).memory("900Mi").build()
        pipeline = client.build_pipeline("house-price-demo").add_model_step(model)
        publish = pipeline.publish(config)
        print(publish)
        _say("pipeline.publishes()")
        print(pipeline.publishes())

        _say("reading the artifact back from the registry")
        assert publish.pipeline_url is not None
        verify_artifact(
            publish.pipeline_url,
            RegistrySettings(
                registry=info.registry,
                repository=info.registry_repository,
                username=info.registry_username,
                password=info.registry_password,
                insecure=info.registry_insecure,
            ),
        )
        _say("publish.add_edge: an edge location with its own EDGE_BUNDLE (one-time join token)")
        with_edge = publish.add_edge("demo-edge", tags=["demo"])
        print(with_edge)
        _say("starting the edge agent from that Docker Run command's variables (no Docker)")
        base = start_agent(with_edge.docker_run_variables, info, home, stack)
        print(f"edge agent ready at {base} (log: {home}/edge-agent.log)")
        wait_for_log(home, "Node attestation was successful.")
        wait_until(
            lambda: any(e.running_version for e in pipeline.list_edges()), "the first heartbeat"
        )
        _say("pipeline.list_edges(): the edge, online, with its last heartbeat")
        print(pipeline.list_edges())
        infer_examples(base, pipeline.name, model.inputs[0].name, N_FEATURES)

        _say("replace: a retrained model, published with replaces=[publish]")
        retrained = client.upload_model(
            "house-price-rf", house_price_model(home / "house-price-rf-v2.onnx", n_estimators=40)
        )
        second = pipeline.clear().add_model_step(retrained).publish(config, replaces=[publish])
        print(second)
        wait_for_log(home, "pipeline_swapped")
        wait_until(
            lambda: all(
                e.running_version == second.pipeline_version_name for e in pipeline.list_edges()
            ),
            "the edge to report the new pipeline version",
        )
        _say("the edge swapped pipelines without a restart: list_edges()")
        print(pipeline.list_edges())
        infer_examples(base, pipeline.name, model.inputs[0].name, N_FEATURES)

        _say("the edge ships its inference rows to the pipeline log at Ops")
        wait_until(lambda: len(pipeline.logs()) >= SHIPPED_ROWS, "the rows to reach Ops")
        print(f"{len(pipeline.logs())} rows at Ops")

        _say("remove_edge: its credential is revoked and its connection cut")
        client.remove_edge("demo-edge")
        wait_for_log(home, "ops_disconnected", timeout=10)
        print(pipeline.list_edges())
        _say("cut off from Ops, the edge still serves its cached pipeline locally")
        infer_examples(base, pipeline.name, model.inputs[0].name, N_FEATURES)

        _say(LOGS_STEP)
        show_logs(
            pipeline,
            {
                publish.pipeline_version_name: f"publish {publish.id}",
                second.pipeline_version_name: f"publish {second.id}, the replace",
            },
        )
        if keep:
            _say("a second edge for the dashboard: publish.add_edge('demo-edge-2')")
            again = second.add_edge("demo-edge-2", tags=["demo"])
            base2 = start_agent(again.docker_run_variables, info, home, stack, "demo-edge-2")
            keep_serving(base2, pipeline.name, model.inputs[0].name, info)
        _say("demo complete; stopping the edge agent and the stack")
    return 0
