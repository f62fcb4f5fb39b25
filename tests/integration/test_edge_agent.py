"""The edge agent end to end across real processes: a registry holding a pipeline pushed as
registry-push pushes it, ``edgepub-edge`` pulling it, and HTTP clients speaking the three
protocols (pandas-records JSON, Arrow IPC, Open Inference Protocol via tritonclient)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pyarrow as pa
import pytest
import tritonclient.http as triton

from support.edge import EdgeAgent, http, make_model, make_scaler, model_version, publish
from support.servers import RegistryServer

PIPELINE = "house-price"
ROWS = np.random.default_rng(7).normal(size=(5, 18)).astype(np.float32)


class Deployment:
    def __init__(self, agent: EdgeAgent, url: str, model: Path) -> None:
        self.agent = agent
        self.pipeline_url = url
        self.model = model
        self.session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])

    def expected(self, rows: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
        return self.session.run(None, {"tensor": rows})[0]  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    work = tmp_path_factory.mktemp("edge")
    registry = RegistryServer(work / "registry")
    agent: EdgeAgent | None = None
    try:
        registry.start()
        model = make_model(work / "gbr.onnx")
        url = publish(registry, PIPELINE, [(model_version("gbr", model), model)])
        agent = EdgeAgent(
            work,
            {
                "PIPELINE_URL": url,
                "OCI_USERNAME": registry.username,
                "OCI_PASSWORD": registry.password,
                "CONFIG_CPUS": "2",
            },
        ).start()
        agent.wait_ready()
        yield Deployment(agent, url, model)
    finally:
        if agent is not None:
            agent.kill()
        registry.kill()


def records(rows: np.ndarray[Any, Any]) -> list[dict[str, Any]]:
    return [{"tensor": row.tolist()} for row in rows]


def test_start_up_tells_the_seed_story(deployment: Deployment) -> None:
    names = deployment.agent.event_names()
    story = [
        "fetching_manifest_and_config",
        "fetching_model_layers",
        "model_layer",
        "fetched",
        "starting_engine",
        "engine_ready",
    ]
    positions = [names.index(n) for n in story]
    assert positions == sorted(positions)
    layer = next(e for e in deployment.agent.events() if e["event"] == "model_layer")
    assert layer["name"] == "gbr" and layer["runtime"] == "onnx" and layer["type"] == "model"
    assert layer["digest"].startswith("sha256:") and layer["filename"] == "gbr.onnx"
    assert layer["pipeline"] == PIPELINE and layer["pipeline_version"]
    engine = next(e for e in deployment.agent.events() if e["event"] == "starting_engine")
    assert engine["intra_op_threads"] == 2  # CONFIG_CPUS
    assert engine["max_inflight"] == 16  # 8 per worker thread
    ready = next(e for e in deployment.agent.events() if e["event"] == "engine_ready")
    assert ready["run_ns_per_element"] > 0  # measured at load, before the first request
    log = deployment.agent.child.log_text()
    assert deployment.agent.env["OCI_PASSWORD"] not in log


@pytest.mark.parametrize("path", [f"/pipelines/{PIPELINE}", "/infer"])
def test_pandas_records(deployment: Deployment, path: str) -> None:
    resp = http().post(
        deployment.agent.url + path,
        data=json.dumps(records(ROWS)),
        headers={"Content-Type": "application/json; format=pandas-records"},
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    body = resp.json()
    assert len(body) == len(ROWS)
    expected = deployment.expected(ROWS)
    for i, rec in enumerate(body):
        assert set(rec) >= {"time", "in", "out", "metadata", "check_failures"}
        assert rec["in"]["tensor"] == pytest.approx(ROWS[i].tolist())
        assert rec["out"]["variable"] == pytest.approx(expected[i].tolist(), rel=1e-5)
        meta = rec["metadata"]
        assert json.loads(meta["last_model"])["model_name"] == "gbr"
        assert meta["pipeline_version"] == deployment.pipeline_url.rsplit(":", 1)[1]
        assert len(meta["elapsed"]) == 1


@pytest.mark.parametrize("kind", ["file", "stream"])
def test_arrow_in_and_out(deployment: Deployment, kind: str) -> None:
    flat = pa.array(ROWS.reshape(-1))
    table = pa.table({"tensor": pa.FixedSizeListArray.from_arrays(flat, 18)})
    sink = pa.BufferOutputStream()
    opener = pa.ipc.new_file if kind == "file" else pa.ipc.new_stream
    with opener(sink, table.schema) as writer:
        writer.write_table(table)
    media = f"application/vnd.apache.arrow.{kind}"
    resp = http().post(
        deployment.agent.url + "/infer",
        data=sink.getvalue().to_pybytes(),
        headers={"Content-Type": media},
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == media
    buf = pa.py_buffer(resp.content)
    out = (pa.ipc.open_file(buf) if kind == "file" else pa.ipc.open_stream(buf)).read_all()
    assert out.num_rows == len(ROWS)
    assert set(out.column_names) >= {"time", "in", "out", "metadata"}
    got = np.array([row["variable"] for row in out.column("out").to_pylist()])
    assert got == pytest.approx(deployment.expected(ROWS), rel=1e-5)


def test_json_in_arrow_out_by_accept(deployment: Deployment) -> None:
    resp = http().post(
        deployment.agent.url + "/infer",
        json=records(ROWS[:2]),
        headers={"Accept": "application/vnd.apache.arrow.stream"},
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    table = pa.ipc.open_stream(pa.py_buffer(resp.content)).read_all()
    assert table.num_rows == 2


@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_infers(deployment: Deployment, binary: bool) -> None:
    host = deployment.agent.url.removeprefix("http://")
    client = triton.InferenceServerClient(url=host)
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.is_model_ready(PIPELINE)
        meta = client.get_model_metadata(PIPELINE)
        assert meta["inputs"][0] == {"name": "tensor", "datatype": "FP32", "shape": [-1, 18]}
        tensor = triton.InferInput("tensor", list(ROWS.shape), "FP32")
        tensor.set_data_from_numpy(ROWS, binary_data=binary)
        outputs = [triton.InferRequestedOutput("variable", binary_data=binary)]
        result = client.infer(PIPELINE, [tensor], outputs=outputs, request_id="r-1")
        got = result.as_numpy("variable")
        assert got is not None and got.shape == (len(ROWS), 1)
        assert got == pytest.approx(deployment.expected(ROWS), rel=1e-5)
        assert result.get_response()["id"] == "r-1"
        # no outputs named: tritonclient asks for every output in binary
        default = client.infer(PIPELINE, [tensor])
        assert default.as_numpy("variable") == pytest.approx(got)
        # the one step of the pipeline is a model too
        assert client.infer("gbr", [tensor]).as_numpy("variable") == pytest.approx(got)
    finally:
        client.close()


def test_lists_and_health(deployment: Deployment) -> None:
    s, url = http(), deployment.agent.url
    assert s.get(url + "/pipelines").json() == {
        "pipelines": [{"id": PIPELINE, "status": "Running"}]
    }
    models = s.get(url + "/models").json()["models"]
    assert [(m["name"], m["status"]) for m in models] == [("gbr", "Running")]
    assert len(models[0]["sha"]) == 64 and models[0]["version"]
    assert s.get(url + "/v2/health/live").status_code == 200
    assert s.get(url + "/v2/health/ready").status_code == 200
    assert s.get(url + "/v2/models/nope/ready").status_code == 404
    assert s.get(url + "/v2").json()["extensions"] == ["binary_tensor_data"]


def test_metrics_count_requests_latency_and_errors(deployment: Deployment) -> None:
    s, url = http(), deployment.agent.url
    s.post(url + "/infer", json=records(ROWS[:1]), timeout=10).raise_for_status()
    assert s.post(url + "/infer", data=b"{", timeout=10).status_code == 400
    text = s.get(url + "/metrics").text
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            samples[key] = float(value)
    assert samples['edgepub_edge_requests_total{protocol="records",status="200"}'] >= 1
    assert (
        samples['edgepub_edge_request_errors_total{protocol="records",code="invalid_request"}'] >= 1
    )
    assert samples['edgepub_edge_request_duration_seconds_count{protocol="records"}'] >= 2
    assert samples["edgepub_edge_pipeline_ready"] == 1
    assert "# TYPE edgepub_edge_request_duration_seconds histogram" in text


def test_steps_chain_output_to_input(tmp_path: Path) -> None:
    """scaler (tensor -> scaled) then gbr (tensor): chained by position, answer = gbr(x/2)."""
    registry = RegistryServer(tmp_path / "registry")
    agent: EdgeAgent | None = None
    try:
        registry.start()
        scaler = make_scaler(tmp_path / "scaler.onnx")
        gbr = make_model(tmp_path / "gbr.onnx", seed=3)
        url = publish(
            registry,
            "two-steps",
            [(model_version("scaler", scaler), scaler), (model_version("gbr", gbr), gbr)],
        )
        agent = EdgeAgent(
            tmp_path,
            {
                "PIPELINE_URL": url,
                "OCI_USERNAME": registry.username,
                "OCI_PASSWORD": registry.password,
            },
        ).start()
        agent.wait_ready()
        resp = http().post(agent.url + "/pipelines/two-steps", json=records(ROWS), timeout=10)
        assert resp.status_code == 200, resp.text
        got = np.array([r["out"]["variable"] for r in resp.json()])
        session = ort.InferenceSession(str(gbr), providers=["CPUExecutionProvider"])
        expected = session.run(None, {"tensor": ROWS * 0.5})[0]
        assert got == pytest.approx(expected, rel=1e-5)
        assert len(resp.json()[0]["metadata"]["elapsed"]) == 2
        assert json.loads(resp.json()[0]["metadata"]["last_model"])["model_name"] == "gbr"
        assert agent.stop() == 0
    finally:
        if agent is not None:
            agent.kill()
        registry.kill()
