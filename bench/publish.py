"""Publish speed: SDK ``publish()`` to ``Published`` vs a raw oras push of the same files.

    .venv/bin/python bench/publish.py [--quick] [--size-mb 50]

Starts the embedded stack (``edgepub up``) on free ports in a temporary directory, uploads
a ~50 MB dense ONNX model once (not timed), then times, each round with a fresh pipeline
name so no blob is already in its repository:

- ``publish_s``: ``pipeline.publish()`` from the call to ``Published`` (publish service,
  object store fetch, registry-push of the pipeline artifact and the Helm chart, events);
- ``raw_push_s``: oras-py's ``push()`` of the same model file and a config blob to a fresh
  repository of the same registry, with Basic credentials set up front (oras as shipped
  re-sends every request after a 401; ``raw_push_as_shipped_s`` measures that too).

Prints one JSON object on its last line: medians and ``ratio`` = publish_s / raw_push_s.
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack
from pathlib import Path

import oras.provider

from edgepub import Client
from edgepub.demo import start_stack
from edgepub.samples import dense_model
from edgepub.shared.stack_file import load_stack_info


def raw_push(info: object, model: Path, config: Path, *, header_up_front: bool) -> float:
    registry = oras.provider.Registry(
        hostname=info.registry,
        insecure=info.registry_insecure,
        auth_backend="basic",  # type: ignore[attr-defined]
    )
    user, password = info.registry_username, info.registry_password  # type: ignore[attr-defined]
    registry.auth.set_basic_auth(user, password)
    if header_up_front:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        registry.session.headers["Authorization"] = f"Basic {token}"
    target = f"{info.registry}/bench/raw-{uuid.uuid4().hex[:12]}:v1"  # type: ignore[attr-defined]
    start = time.perf_counter()
    registry.push(
        target,
        files=[f"{model}:application/vnd.onnx.model"],
        manifest_config=f"{config}:application/vnd.edgepub.pipeline.config.v1+json",
        disable_path_validation=True,
        quiet=True,
    )
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds instead of 7")
    parser.add_argument("--size-mb", type=float, default=50.0)
    args = parser.parse_args()
    rounds = 3 if args.quick else 7

    with ExitStack() as stack:
        home = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="edgepub-bench-")))
        print(f"starting the embedded stack in {home}", file=sys.stderr)
        start_stack(home, stack)
        info = load_stack_info(home)
        model_path = dense_model(home / "dense.onnx", size_mb=args.size_mb)
        config_path = home / "config.json"
        config_path.write_text(json.dumps({"bench": True}))
        size_mb = model_path.stat().st_size / 2**20
        print(f"model {size_mb:.1f} MiB", file=sys.stderr)

        client = stack.enter_context(Client(data_dir=home))
        model = client.upload_model("dense", model_path)

        publish_s, raw_s, shipped_s = [], [], []
        for i in range(rounds):
            pipeline = client.build_pipeline(f"bench-{i}-{uuid.uuid4().hex[:6]}")
            pipeline.add_model_step(model)
            start = time.perf_counter()
            publish = pipeline.publish(progress=False)
            publish_s.append(time.perf_counter() - start)
            assert publish.status == "Published"
            raw_s.append(raw_push(info, model_path, config_path, header_up_front=True))
            shipped_s.append(raw_push(info, model_path, config_path, header_up_front=False))
            print(
                f"round {i + 1}/{rounds}: publish {publish_s[-1]:.3f}s, raw push "
                f"{raw_s[-1]:.3f}s, raw push as shipped {shipped_s[-1]:.3f}s",
                file=sys.stderr,
            )

    publish_med = statistics.median(publish_s)
    raw_med = statistics.median(raw_s)
    result = {
        "model_mb": round(size_mb, 1),
        "rounds": rounds,
        "publish_s": round(publish_med, 3),
        "raw_push_s": round(raw_med, 3),
        "raw_push_as_shipped_s": round(statistics.median(shipped_s), 3),
        "ratio": round(publish_med / raw_med, 2),
        "target_ratio": 1.5,
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
