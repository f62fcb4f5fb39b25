"""Edge inference bench: the agent against a bare server on the same HTTP stack.

    python bench/inference.py [--quick] [--trees N] [--duration S]

Same box, same model (a scikit-learn gradient-boosting regressor over 18 float features,
converted with skl2onnx), keep-alive load from ``wrk`` (a Python client would steal the
server's CPU on 2 cores):

- the agent (``python -m edgepub.edge_agent``) serving a cached pipeline, through
  ``POST /pipelines/<name>`` with pandas-records JSON (validation, metrics, log hand-off);
- a baseline: uvicorn + httptools + uvloop, a raw ASGI app that decodes the same JSON,
  calls onnxruntime and answers in the same pandas-records shape, with no validation,
  no metrics and no inference log (``--serve-baseline``);
- raw in-process onnxruntime for reference.

Logging on vs off (``logging_on_off_ratio``, target >= 0.9), c16, alternating with the
other runs: "on" is a second agent with an ``EDGE_BUNDLE`` against the embedded stack
(``edgepub up`` on free ports, the same model published with the SDK and pulled from its
registry, ``publish.add_edge``), so its local SQLite log writes and its shipper ships every
row to the stack's log collector while wrk runs; "off" is the agent above, without a bundle
and with ``EDGEPUB_LOCAL_LOG=false`` (no SQLite log; the log hand-off still runs). The stack
(nats-server, collector) runs on the same cores as the agents and wrk: on an edge Ops is
elsewhere, so "on" here pays for both ends.

The last line is one JSON object: agent_rps and baseline_rps (c16), ratio (target >= 0.8),
p50_ms and p99_ms (agent, c1), raw_ort_us, rss_mb (agent idle RSS, target <= 150),
cold_start_s (cached pipeline to ready, target <= 2), logging_on_rps, logging_off_rps and
logging_on_off_ratio.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

FEATURES = 18
PIPELINE = "bench"
VERSION = "00000000-0000-4000-8000-000000000001"
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_model(path: Path, trees: int) -> None:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType
    from sklearn.ensemble import GradientBoostingRegressor

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2000, FEATURES)).astype(np.float32)
    y = x[:, 0] * 3 - x[:, 1] * x[:, 2] + rng.normal(scale=0.1, size=2000)
    model = GradientBoostingRegressor(n_estimators=trees, max_depth=4, random_state=0).fit(x, y)
    onx = to_onnx(
        model, initial_types=[("tensor", FloatTensorType([None, FEATURES]))], target_opset=17
    )
    path.write_bytes(onx.SerializeToString())


def seed_cache(persist: Path, model: Path, registry_port: int) -> str:
    """Lay the pipeline in the agent's cache as a pull would (the bench needs no registry)."""
    from edgepub.edge_agent.cache import CacheSource, PipelineCache
    from edgepub.shared import artifact
    from edgepub.shared.schemas import ArtifactStep, PipelineDefinition, encode_json

    data = model.read_bytes()
    sha = hashlib.sha256(data).hexdigest()
    definition = PipelineDefinition(
        pipeline_name=PIPELINE,
        pipeline_version=VERSION,
        pipeline_version_id=1,
        steps=(
            ArtifactStep(
                model_name="gbr", model_version=VERSION, sha256=sha, size=len(data),
                file_name="gbr.onnx", runtime="onnx", inputs=(), outputs=(),
            ),
        ),
        engine_config={},
    )  # fmt: skip
    config = encode_json(definition)
    manifest = artifact.build_manifest(
        artifact.Descriptor(
            media_type=artifact.PIPELINE_CONFIG_MEDIA_TYPE,
            digest=f"sha256:{hashlib.sha256(config).hexdigest()}",
            size=len(config),
        ),
        [
            artifact.Descriptor(
                media_type=artifact.ONNX_MODEL_MEDIA_TYPE,
                digest=f"sha256:{sha}",
                size=len(data),
                annotations={artifact.ANNOTATION_TITLE: "gbr.onnx"},
            )
        ],
    )
    url = f"127.0.0.1:{registry_port}/bench/pipelines/{PIPELINE}:{VERSION}"
    cache = PipelineCache(persist / "pipelines")
    cache.prepare()
    staging = cache.staging()
    (staging / "models").mkdir()
    shutil.copy(model, staging / "models" / "gbr.onnx")
    digest = f"sha256:{hashlib.sha256(manifest).hexdigest()}"
    source = CacheSource(pipeline_url=url, manifest_digest=digest, pulled_at="bench")
    (staging / "source.json").write_bytes(encode_json(source))
    (staging / "manifest.json").write_bytes(manifest)
    (staging / "definition.json").write_bytes(config)
    cache.commit(staging, digest)
    return url


def raw_ort_us(model: Path, rows: np.ndarray[Any, Any], seconds: float) -> float:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    feed = {"tensor": rows}
    for _ in range(200):
        session.run(None, feed)
    samples = []
    deadline = time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        t = time.perf_counter_ns()
        session.run(None, feed)
        samples.append(time.perf_counter_ns() - t)
    return float(np.median(samples)) / 1000.0


# --- the baseline server -------------------------------------------------------------------


def serve_baseline(port: int, model: str) -> None:
    """uvicorn + httptools + uvloop, raw ASGI: decode JSON, run onnxruntime, answer."""
    import msgspec
    import onnxruntime as ort
    import uvicorn

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    decode, encode = msgspec.json.Decoder().decode, msgspec.json.Encoder().encode
    last_model = json.dumps({"model_name": "gbr", "model_sha": "0" * 64}, separators=(",", ":"))

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if scope["method"] == "GET":
            out = b"{}"
        else:  # the same answer the agent gives (pandas-records), minus validation and log
            records = decode(body)
            x = np.asarray([r["tensor"] for r in records], dtype=np.float32)
            started = time.perf_counter_ns()
            y = session.run(None, {"tensor": x})[0]
            elapsed = time.perf_counter_ns() - started
            now = time.time_ns() // 1_000_000
            meta = {"last_model": last_model, "pipeline_version": VERSION, "elapsed": [elapsed],
                    "dropped": [], "partition": "baseline"}  # fmt: skip
            out = encode(
                [
                    {"time": now, "in": r, "out": {"variable": row}, "anomaly": {"count": 0},
                     "check_failures": [], "metadata": meta}
                    for r, row in zip(records, y.tolist(), strict=True)
                ]
            )  # fmt: skip
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(out))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": out})

    uvicorn.run(app, host="127.0.0.1", port=port, http="httptools", loop="uvloop",
                log_level="warning", access_log=False, lifespan="off",
                proxy_headers=False)  # as the agent runs it  # fmt: skip


# --- driving the servers ---------------------------------------------------------------------


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {proc.returncode}")
        try:
            with _OPENER.open(url, timeout=1) as resp:
                if resp.status == 200:
                    return time.monotonic() - started
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.005)
    raise TimeoutError(f"{url} not ready after {timeout}s")


def wrk(url: str, body: str, connections: int, seconds: float, work: Path) -> dict[str, float]:
    script = work / "post.lua"
    script.write_text(
        'wrk.method = "POST"\n'
        f"wrk.body = {json.dumps(body)}\n"
        'wrk.headers["Content-Type"] = "application/json; format=pandas-records"\n'
    )
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency", "-s", str(script),
           url]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, timeout=seconds + 30)
    text = out.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    if errors:
        raise RuntimeError(f"{url}: {errors.group(1)} failed requests\n{text}")
    lat = {p: _ms(v, u) for p, v, u in re.findall(r"\s(50|99)%\s+([\d.]+)(us|ms|s)\b", text)}
    return {"rps": rps, "p50_ms": lat.get("50", 0.0), "p99_ms": lat.get("99", 0.0)}


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def start(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)  # fmt: skip


def stop(proc: subprocess.Popen[bytes]) -> int:
    proc.terminate()
    try:
        return proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def wait_logged(log: Path, event: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Until the agent's JSON log holds ``event``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the agent exited with {proc.returncode}; see {log}")
        for line in log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):  # a line still being written
                if line.startswith("{") and json.loads(line).get("event") == event:
                    return
        time.sleep(0.1)
    raise TimeoutError(f"the agent did not log {event} within {timeout:.0f}s; see {log}")


def start_logging_agent(
    model: Path, env: dict[str, str], work: Path, stack: ExitStack
) -> tuple[subprocess.Popen[bytes], str, int]:
    """The embedded stack, the model published to it with an edge added, and an agent with
    that edge's bundle (log + shipper); the agent, its /pipelines URL and port."""
    from edgepub import Client
    from edgepub.demo import start_stack
    from edgepub.shared.stack_file import load_stack_info

    home = work / "stack"
    home.mkdir()
    start_stack(home, stack)
    info = load_stack_info(home)
    client = stack.enter_context(Client(data_dir=home))
    uploaded = client.upload_model("gbr", model)
    name = f"bench-on-{uuid.uuid4().hex[:6]}"
    publish = client.build_pipeline(name).add_model_step(uploaded).publish(progress=False)
    assert publish.status == "Published", publish.status
    bundle = publish.add_edge("bench-inference-edge").docker_run_variables["EDGE_BUNDLE"]
    port = free_port()
    agent_env = dict(env, PIPELINE_URL=publish.pipeline_url or "", EDGE_BUNDLE=bundle,
                     OCI_USERNAME=info.registry_username or "",
                     OCI_PASSWORD=info.registry_password or "", CONFIG_CPUS="1",
                     EDGEPUB_PORT=str(port), EDGEPUB_HOST="127.0.0.1",
                     EDGEPUB_PERSIST_DIR=str(work / "persist-on"),
                     EDGEPUB_LOG_FORMAT="json")  # fmt: skip
    log = work / "agent-on.log"
    agent = start([sys.executable, "-m", "edgepub.edge_agent"], agent_env, log)
    stack.callback(stop, agent)
    wait_ready(f"http://127.0.0.1:{port}/v2/health/ready", agent)
    wait_logged(log, "ops_connected", agent)
    return agent, f"http://127.0.0.1:{port}/pipelines/{name}", port


def status_of(port: int) -> dict[str, Any]:
    with _OPENER.open(f"http://127.0.0.1:{port}/status", timeout=5) as resp:
        return dict(json.loads(resp.read()))


def _median(runs: list[dict[str, float]], key: str) -> float:
    return float(np.median([r[key] for r in runs]))


def measure(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """Both servers up at once, wrk runs alternating between them (the box is shared:
    alternating spreads any other load over both), medians reported."""
    model = work / "gbr.onnx"
    make_model(model, args.trees)
    row = np.random.default_rng(1).normal(size=(1, FEATURES)).astype(np.float32)
    body = json.dumps([{"tensor": [round(float(v), 5) for v in row[0]]}])
    results: dict[str, Any] = {"raw_ort_us": round(raw_ort_us(model, row, args.raw_seconds), 2)}

    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGEPUB_", "OCI_"))}
    env.pop("EDGE_BUNDLE", None)
    persist = work / "persist"
    pipeline_url = seed_cache(persist, model, free_port())
    agent_port, base_port = free_port(), free_port()
    agent_env = dict(env, PIPELINE_URL=pipeline_url, CONFIG_CPUS="1", EDGEPUB_PORT=str(agent_port),
                     EDGEPUB_HOST="127.0.0.1", EDGEPUB_PERSIST_DIR=str(persist),
                     EDGEPUB_LOG_FORMAT="json", EDGEPUB_LOCAL_LOG="false")  # fmt: skip
    agent = start([sys.executable, "-m", "edgepub.edge_agent"], agent_env, work / "agent.log")
    baseline = None
    stack = ExitStack()
    try:
        ready = f"http://127.0.0.1:{agent_port}/v2/health/ready"
        results["cold_start_s"] = round(wait_ready(ready, agent), 3)
        logging_agent, on_url, on_port = start_logging_agent(model, env, work, stack)
        baseline = start([sys.executable, __file__, "--serve-baseline", str(base_port),
                          str(model)], env, work / "baseline.log")  # fmt: skip
        wait_ready(f"http://127.0.0.1:{base_port}/", baseline)
        urls = {name: f"http://127.0.0.1:{port}/pipelines/{PIPELINE}"
                for name, port in (("agent", agent_port), ("baseline", base_port))}  # fmt: skip
        runs: dict[tuple[str, int], list[dict[str, float]]] = {}
        for url in (*urls.values(), on_url):
            wrk(url, body, 4, args.warmup, work)
        shipped_before = status_of(on_port)["shipping"]["rows"]
        for _ in range(args.rounds):
            for connections in (1, 16):
                for name, url in urls.items():
                    result = wrk(url, body, connections, args.duration, work)
                    runs.setdefault((name, connections), []).append(result)
            # logging on, c16, right after the agent's c16 run (logging off)
            runs.setdefault(("agent_on", 16), []).append(wrk(on_url, body, 16, args.duration, work))
        time.sleep(0.5)  # settle before reading idle memory (a measurement, not a sync)
        results["rss_mb"] = round(rss_mb(agent.pid), 1)
        results["logging_on_rss_mb"] = round(rss_mb(logging_agent.pid), 1)
        on_status = status_of(on_port)
        results["logging_on_shipped_rows"] = on_status["shipping"]["rows"] - shipped_before
        results["logging_on_backlog_rows"] = on_status["log"]["backlog"]
        results["logging_on_dropped"] = on_status["log"]["handoff_dropped"]
    finally:
        results["agent_exit"] = stop(agent)
        if baseline is not None:
            stop(baseline)
        stack.close()
    agent_c16, base_c16 = _median(runs["agent", 16], "rps"), _median(runs["baseline", 16], "rps")
    results.update(
        agent_rps=round(agent_c16),
        baseline_rps=round(base_c16),
        ratio=round(agent_c16 / base_c16, 3),
        p50_ms=round(_median(runs["agent", 1], "p50_ms"), 3),
        p99_ms=round(_median(runs["agent", 1], "p99_ms"), 3),
        agent_c1_rps=round(_median(runs["agent", 1], "rps")),
        baseline_c1_rps=round(_median(runs["baseline", 1], "rps")),
        baseline_p50_ms=round(_median(runs["baseline", 1], "p50_ms"), 3),
        rounds=args.rounds,
        seconds_per_run=args.duration,
    )
    on_c16 = _median(runs["agent_on", 16], "rps")
    results.update(
        logging_on_rps=round(on_c16),
        logging_off_rps=round(agent_c16),
        logging_on_off_ratio=round(on_c16 / agent_c16, 3),
        logging_on_p99_ms=round(_median(runs["agent_on", 16], "p99_ms"), 3),
        logging_off_p99_ms=round(_median(runs["agent", 16], "p99_ms"), 3),
        logging_off_mode="no EDGE_BUNDLE, EDGEPUB_LOCAL_LOG=false",
    )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short runs (under a minute)")
    parser.add_argument("--trees", type=int, default=100, help="trees in the model")
    parser.add_argument("--duration", type=float, help="seconds per wrk run")
    parser.add_argument("--serve-baseline", nargs=2, metavar=("PORT", "MODEL"),
                        help=argparse.SUPPRESS)  # fmt: skip
    args = parser.parse_args()
    if args.serve_baseline:
        serve_baseline(int(args.serve_baseline[0]), args.serve_baseline[1])
        return
    if shutil.which("wrk") is None:
        sys.exit("bench/inference.py needs wrk (Debian: apt-get install wrk)")
    args.duration = args.duration or (3.0 if args.quick else 10.0)
    args.rounds = 2 if args.quick else 3
    args.warmup = 1.0 if args.quick else 3.0
    args.raw_seconds = 1.0 if args.quick else 3.0
    with tempfile.TemporaryDirectory(prefix="edgepub-bench-") as tmp:
        results = measure(args, Path(tmp))
    order = ["agent_rps", "baseline_rps", "ratio", "p50_ms", "p99_ms", "raw_ort_us", "rss_mb",
             "cold_start_s", "logging_on_rps", "logging_off_rps",
             "logging_on_off_ratio"]  # fmt: skip
    print("details:", json.dumps({k: v for k, v in results.items() if k not in order}))
    print(json.dumps({k: results[k] for k in order}))


if __name__ == "__main__":
    main()
