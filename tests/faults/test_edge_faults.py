"""The edge agent's bad days, across real processes: a registry that is down or serves
tampered bytes, clients that send garbage, a bad environment, SIGTERM under load."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests

from support.edge import (
    EdgeAgent,
    blob_data_path,
    http,
    make_model,
    model_version,
    publish,
    serving,
)
from support.servers import HOST, RegistryServer
from support.services import clean_environ
from support.waiting import wait_for

PIPELINE = "fraud"
GOOD = [{"tensor": [0.5] * 18}]


def infer(agent: EdgeAgent, body: Any = None, path: str = "/infer", **kw: Any) -> requests.Response:
    data = body if isinstance(body, bytes) else json.dumps(GOOD if body is None else body)
    headers = kw.pop("headers", {"Content-Type": "application/json; format=pandas-records"})
    return http().post(agent.url + path, data=data, headers=headers, timeout=30, **kw)


def creds(registry: RegistryServer, url: str) -> dict[str, str]:
    return {
        "PIPELINE_URL": url,
        "OCI_USERNAME": registry.username,
        "OCI_PASSWORD": registry.password,
    }


def current_digest(agent: EdgeAgent) -> str:
    link = agent.persist / "pipelines" / "current"
    return os.readlink(link).rsplit("/", 1)[-1]


def test_registry_down_at_first_start_then_at_restart(tmp_path: Path) -> None:
    registry = RegistryServer(tmp_path / "registry").start()
    agent = None
    try:
        model = make_model(tmp_path / "m.onnx")
        url = publish(registry, PIPELINE, [(model_version("m", model), model)])
        registry.stop()
        agent = EdgeAgent(tmp_path, creds(registry, url)).start()
        waiting = agent.wait_event("waiting_for_registry", count=2)
        assert "unreachable" in waiting["reason"] and waiting["retry_in_s"] > 0
        ready = http().get(agent.url + "/v2/health/ready", timeout=5)
        assert ready.status_code == 503 and "unreachable" in ready.json()["reason"]
        assert http().get(agent.url + "/v2/health/live", timeout=5).status_code == 200
        assert infer(agent).status_code == 503

        registry.start()  # same port, same storage
        agent.wait_ready(timeout=60)
        assert infer(agent).status_code == 200
        assert agent.stop() == 0

        registry.stop()  # restart offline: the cache serves
        agent.start()
        agent.wait_ready()
        assert infer(agent).status_code == 200
        served = agent.wait_event("serving_cached_pipeline")
        assert "unreachable" in served["reason"]
        assert "using_cached_pipeline" in agent.event_names()
        assert agent.stop() == 0
    finally:
        if agent is not None:
            agent.kill()
        registry.kill()


def _tamper(path: Path) -> bytes:
    original = path.read_bytes()
    middle = len(original) // 2
    path.write_bytes(original[:middle] + bytes([original[middle] ^ 0xFF]) + original[middle + 1 :])
    return original


def test_digest_mismatch_is_refused_and_the_cache_kept(tmp_path: Path) -> None:
    registry = RegistryServer(tmp_path / "registry").start()
    agent = fresh = None
    try:
        (tmp_path / "v1").mkdir()
        v1 = make_model(tmp_path / "v1" / "m.onnx", seed=1)
        tag = "6c3d9899-1335-456b-aaa0-52d03a017cc4"
        url = publish(registry, PIPELINE, [(model_version("m", v1), v1)], version=tag)
        agent = EdgeAgent(tmp_path, creds(registry, url)).start()
        agent.wait_ready()
        answer_v1 = infer(agent).json()[0]["out"]
        cached = current_digest(agent)
        assert agent.stop() == 0

        # The same tag now names another model whose bytes were altered in storage.
        (tmp_path / "v2").mkdir()
        v2 = make_model(tmp_path / "v2" / "m.onnx", seed=2, trees=25)
        mv2 = model_version("m", v2)
        publish(registry, PIPELINE, [(mv2, v2)], version=tag)
        original = _tamper(blob_data_path(registry, mv2.sha256))

        agent.start()
        agent.wait_ready()
        served = agent.wait_event("serving_cached_pipeline")
        assert "digest mismatch" in served["reason"] and mv2.sha256 in served["reason"]
        assert infer(agent).json()[0]["out"] == answer_v1
        assert current_digest(agent) == cached
        pipelines = agent.persist / "pipelines"
        assert [p.name for p in (pipelines / "store").iterdir()] == [cached]
        assert not list(pipelines.glob(".staging-*"))
        assert agent.stop() == 0

        # A first start on the tampered artifact refuses it, then serves once it is fixed.
        fresh_dir = tmp_path / "fresh"
        fresh_dir.mkdir()
        fresh = EdgeAgent(fresh_dir, creds(registry, url)).start()
        waiting = fresh.wait_event("waiting_for_registry")
        assert "digest mismatch" in waiting["reason"]
        assert not (fresh.persist / "pipelines" / "current").exists()
        assert http().get(fresh.url + "/v2/health/ready", timeout=5).status_code == 503
        blob_data_path(registry, mv2.sha256).write_bytes(original)
        fresh.wait_ready(timeout=60)
        assert infer(fresh).json()[0]["out"] != answer_v1
        assert fresh.stop() == 0
    finally:
        for a in (agent, fresh):
            if a is not None:
                a.kill()
        registry.kill()


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EdgeAgent]:
    work = tmp_path_factory.mktemp("edge-bad-input")
    registry = RegistryServer(work / "registry").start()
    agent = None
    try:
        model = make_model(work / "m.onnx")
        url = publish(registry, PIPELINE, [(model_version("m", model), model)])
        agent = EdgeAgent(work, creds(registry, url)).start()
        agent.wait_ready()
        yield agent
    finally:
        if agent is not None:
            agent.kill()
        registry.kill()


BAD_REQUESTS = [
    # (name, path, body, content type, status, words the error must contain)
    ("wrong shape", "/infer", [{"tensor": [0.5] * 17}], None, 400, ["tensor", "[17]", "[18]"]),
    ("wrong dtype", "/infer", [{"tensor": ["a"] * 18}], None, 400, ["tensor", "float32"]),
    ("bool dtype", "/infer", [{"tensor": [True] * 18}], None, 400, ["tensor", "float32"]),
    (
        "ragged",
        "/infer",
        [{"tensor": [1.0] * 18}, {"tensor": [1.0] * 3}],
        None,
        400,
        ["tensor", "record 1"],
    ),
    ("missing input", "/infer", [{"tensr": [0.5] * 18}], None, 400, ["record 0", "'tensor'"]),
    ("not records", "/infer", {"tensor": [0.5] * 18}, None, 400, ["list of records"]),
    ("malformed JSON", "/infer", b'[{"tensor": [1, 2', None, 400, ["not valid JSON"]),
    ("unknown pipeline", "/pipelines/nope", GOOD, None, 404, ["'nope'", f"'{PIPELINE}'"]),
    ("unknown model", "/v2/models/nope/infer", b"{}", None, 404, ["'nope'"]),
    ("media type", "/infer", b"x", "text/csv", 415, ["text/csv"]),
    ("not arrow", "/infer", b"garbage", "application/vnd.apache.arrow.file", 400, ["Arrow"]),
    (
        "oip datatype",
        f"/v2/models/{PIPELINE}/infer",
        {"inputs": [{"name": "tensor", "shape": [1, 18], "datatype": "FP64", "data": [0.5] * 18}]},
        "application/json",
        400,
        ["tensor", "FP64", "FP32"],
    ),
    (
        "oip shape",
        f"/v2/models/{PIPELINE}/infer",
        {"inputs": [{"name": "tensor", "shape": [1, 17], "datatype": "FP32", "data": [0.5] * 17}]},
        "application/json",
        400,
        ["tensor", "[1, 17]"],
    ),
    (
        "oip count",
        f"/v2/models/{PIPELINE}/infer",
        {"inputs": [{"name": "tensor", "shape": [2, 18], "datatype": "FP32", "data": [0.5] * 18}]},
        "application/json",
        400,
        ["tensor", "36"],
    ),
    (
        "oip unknown input",
        f"/v2/models/{PIPELINE}/infer",
        {"inputs": [{"name": "x", "shape": [1, 18], "datatype": "FP32", "data": [0.5] * 18}]},
        "application/json",
        400,
        ["'x'", "tensor"],
    ),
    (
        "oip schema",
        f"/v2/models/{PIPELINE}/infer",
        {"inputs": [{"name": "tensor"}]},
        "application/json",
        400,
        ["inputs"],
    ),
    ("wrong method", "/models", b"", None, 405, ["GET"]),
]


@pytest.mark.parametrize("case", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_requests_get_a_4xx_naming_the_problem(live: EdgeAgent, case: tuple[Any, ...]) -> None:
    _, path, body, content_type, status, words = case
    headers = {"Content-Type": content_type or "application/json; format=pandas-records"}
    resp = infer(live, body, path=path, headers=headers)
    assert resp.status_code == status, resp.text
    message = resp.json()["error"]
    for word in words:
        assert word in message, message
    assert infer(live).status_code == 200  # and it keeps serving


def test_a_100_mb_body_is_refused_before_it_is_read(live: EdgeAgent) -> None:
    size = 100 * 1024 * 1024
    with socket.create_connection((HOST, live.port), timeout=30) as sock:
        sock.sendall(
            b"POST /infer HTTP/1.1\r\nHost: edge\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {size}\r\n\r\n".encode()
            + b"["
            + b" " * 65536
        )
        reply = b""
        while b"\r\n\r\n" not in reply or not reply.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), reply[:200]
    assert b"connection: close" in head.lower()
    assert "EDGEPUB_MAX_BODY" in json.loads(body)["error"]
    assert infer(live).status_code == 200


def run_agent_with(env: dict[str, str], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    full = clean_environ()
    full.update(
        EDGEPUB_PERSIST_DIR=str(tmp_path),
        EDGEPUB_HOST=HOST,
        EDGEPUB_PORT="1",
        PIPELINE_URL="127.0.0.1:5000/edgepub/pipelines/p:1",
    )
    full.update(env)
    return subprocess.run(
        [sys.executable, "-m", "edgepub.edge_agent"],
        env=full,
        text=True,
        capture_output=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


BAD_ENV = [
    ({"LOCAL_INFERENCE_STORAGE": "1Gi"}, ["PLATEAU_PAGE_SIZE", "LOCAL_INFERENCE_STORAGE='1Gi'"]),
    ({"PLATEAU_PAGE_SIZE": "100"}, ["LOCAL_INFERENCE_STORAGE", "PLATEAU_PAGE_SIZE='100'"]),
    (
        {"LOCAL_INFERENCE_STORAGE": "1GB", "PLATEAU_PAGE_SIZE": "100"},
        ["LOCAL_INFERENCE_STORAGE='1GB'", "Ki, Mi, Gi, Ti"],
    ),
    ({"LOCAL_INFERENCE_STORAGE": "1Gi", "PLATEAU_PAGE_SIZE": "0"}, ["PLATEAU_PAGE_SIZE='0'"]),
    ({"LOCAL_INFERENCE_STORAGE": "1Gi", "PLATEAU_PAGE_SIZE": "ten"}, ["PLATEAU_PAGE_SIZE='ten'"]),
    (
        {"LOCAL_INFERENCE_STORAGE": "12Ki", "PLATEAU_PAGE_SIZE": "10"},
        ["LOCAL_INFERENCE_STORAGE='12Ki'", "1Mi"],
    ),
    ({"CONFIG_CPUS": "many"}, ["CONFIG_CPUS='many'"]),
    ({"OCI_USERNAME": "bob"}, ["OCI_PASSWORD=not set", "'bob'"]),
]


@pytest.mark.parametrize("env,words", BAD_ENV, ids=[" ".join(e) for e, _ in BAD_ENV])
def test_a_bad_environment_stops_the_start_with_one_line(
    env: dict[str, str], words: list[str], tmp_path: Path
) -> None:
    done = run_agent_with(env, tmp_path)
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    for word in words:
        assert word in lines[0], lines[0]


def test_secrets_stay_out_of_the_one_line(tmp_path: Path) -> None:
    token = "26fc1cb8-2512-4be7-94de-6464b50d638b"
    bundle = f"export BUNDLE_VERSION=2\nexport JOIN_TOKEN={token}\n"
    done = run_agent_with(
        {
            "EDGE_BUNDLE": base64.b64encode(bundle.encode()).decode(),
            "OCI_PASSWORD": "hunter2-secret",
        },
        tmp_path,
    )
    assert done.returncode == 2
    assert token not in done.stderr and "hunter2" not in done.stderr
    assert "EDGE_BUNDLE" in done.stderr


def test_sigterm_during_load_lets_in_flight_requests_finish(tmp_path: Path) -> None:
    """Its own agent, which it stops: the module's ``live`` agent is left serving, so this
    test may run in any order."""
    model = make_model(tmp_path / "m.onnx")
    with serving(tmp_path, PIPELINE, [(model_version("m", model), model)], {}) as live:
        sigterm_during_load(live)


def sigterm_during_load(live: EdgeAgent) -> None:
    rows = np.random.default_rng(0).normal(size=(40_000, 18)).round(4).tolist()
    big = json.dumps([{"tensor": r} for r in rows]).encode()
    results: list[Any] = []
    lock = threading.Lock()

    def send_big() -> None:
        try:
            resp = infer(live, big)
            outcome: Any = (resp.status_code, len(resp.json()))
        except requests.RequestException as exc:
            outcome = exc
        with lock:
            results.append(outcome)

    small_statuses: list[int] = []
    stop_small = threading.Event()

    small = {
        "inputs": [
            {"name": "tensor", "shape": [1, 18], "datatype": "FP32", "data": GOOD[0]["tensor"]}
        ]
    }

    def send_small() -> None:  # OIP, so the records gauge counts only the big ones
        session = http()
        while not stop_small.is_set():
            try:
                url = f"{live.url}/v2/models/{PIPELINE}/infer"
                small_statuses.append(session.post(url, json=small, timeout=30).status_code)
            except requests.RequestException:
                return  # new requests after the stop may be refused: that is fine

    def big_in_flight() -> float:
        wanted = 'edgepub_edge_inference_requests_in_flight{protocol="records"} '
        for line in http().get(live.url + "/metrics", timeout=30).text.splitlines():
            if line.startswith(wanted):
                return float(line.split()[1])
        return 0.0

    loaders = [threading.Thread(target=send_small) for _ in range(2)]
    bigs = [threading.Thread(target=send_big) for _ in range(3)]
    for t in loaders + bigs:
        t.start()
    try:
        wait_for(lambda: big_in_flight() >= 3, timeout=60, what="3 big requests in flight")
        live.child.signal(signal.SIGTERM)
        for t in bigs:
            t.join(timeout=120)
        assert results == [(200, len(rows))] * 3
        assert live.child.proc is not None and live.child.proc.wait(timeout=60) == 0
    finally:
        stop_small.set()
        for t in loaders:
            t.join(timeout=60)
    assert small_statuses and set(small_statuses) == {200}
    assert "engine_stopped" in live.event_names()
