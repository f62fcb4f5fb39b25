"""``edgepub demo``: the README's first command, end to end on the embedded stack.

Starts an embedded stack (unless one is running in the data dir), makes a sample model,
uploads it, builds and publishes a pipeline with the seed's deployment config, shows the
publish, then reads the artifact back from the registry and checks every digest.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from edgepub.shared.artifact import parse_reference
from edgepub.shared.oci import RegistryClient
from edgepub.shared.schemas import definition_decoder
from edgepub.shared.settings import RegistrySettings


def _say(text: str) -> None:
    print(f"\n==> {text}", flush=True)


def start_stack(data_dir: Path, stack: ExitStack) -> None:
    """Start ``edgepub up`` on free ports in the background; stop it when ``stack`` closes."""
    log = (data_dir / "stack.log").open("ab")
    proc = subprocess.Popen(
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
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )

    def stop() -> None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()

    stack.callback(stop)
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


def run_demo(data_dir: str | None) -> int:
    from edgepub import Client, DeploymentConfigBuilder
    from edgepub.samples import house_price_model
    from edgepub.services.stack.state import load_stack_info

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
        _say("demo complete; stopping the stack")
    return 0
