"""A failed disk at the edge, across a real agent process: its local log cannot be written
(the log's directory is a file, as good as a dead disk to SQLite). Inference keeps serving;
the failure is counted and visible in /status and /metrics."""

from __future__ import annotations

from pathlib import Path

from support.edge import FEATURES, EdgeAgent, http, make_model, model_version, publish
from support.servers import RegistryServer
from support.waiting import wait_for


def test_a_failed_disk_never_stops_inference_and_says_so(
    registry: RegistryServer, agents: list[EdgeAgent], tmp_path: Path
) -> None:
    model = make_model(tmp_path / "gbr.onnx")
    url = publish(registry, "disk", [(model_version("gbr", model), model)])
    (tmp_path / "edge" / "persist").mkdir(parents=True)
    (tmp_path / "edge" / "persist" / "logs").write_text("not a directory")
    agent = EdgeAgent(
        tmp_path / "edge",
        {"PIPELINE_URL": url, "OCI_USERNAME": registry.username, "OCI_PASSWORD": registry.password},
    ).start()
    agents.append(agent)
    agent.wait_ready()
    body = [{"tensor": [0.5] * FEATURES}]
    for _ in range(20):
        resp = http().post(f"{agent.url}/pipelines/disk", json=body, timeout=10)
        assert resp.status_code == 200, resp.text

    def failing() -> dict[str, object] | None:
        log = http().get(f"{agent.url}/status", timeout=5).json()["log"]
        return log if log and not log["healthy"] and int(log["failed_rows"]) >= 20 else None

    log = wait_for(failing, 20, "the local log's failure in /status")
    assert log["last_error"]
    metrics = http().get(f"{agent.url}/metrics", timeout=5).text
    line = next(x for x in metrics.splitlines() if x.startswith("edgepub_edge_log_write_failures"))
    assert float(line.split()[-1]) >= 1
    assert agent.child.running()
