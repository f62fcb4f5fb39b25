"""A failed disk at the edge, across real processes.

- A dead disk: the local log's directory is a file, as good as a dead disk to SQLite, from
  the start. Inference keeps serving; the failure is counted and visible in /status and
  /metrics.
- A disk that fills up while inferences flow, then has room again (a cell of the fault
  matrix): an agent joined to a real stack, its file size limit (RLIMIT_FSIZE, set from
  outside with prlimit: ``support.full_disk``) lowered under its inference log's WAL
  mid-traffic and raised again. Inference never fails, the failed writes are counted and
  shown while the disk is full, the log recovers by itself, and Ops holds every row once,
  in order, with one ``write_failed`` gap of exactly the rows whose writes failed.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from support.edge import FEATURES, EdgeAgent, http, make_model, model_version, publish
from support.fleet import Fleet
from support.full_disk import FullDisk, sizes
from support.servers import RegistryServer
from support.waiting import wait_for

# What the agent's own log (its stdout, a file in tests, under the same limit) may grow by
# while the disk is full: far more than it writes then (a warning per failed write), far
# less than the WAL's 4 MiB share of the 64 MiB bound, so the WAL reaches the limit.
LOG_ROOM = 256 << 10


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
    assert write_failures_metric(agent) >= 1
    assert agent.child.running()


def write_failures_metric(agent: EdgeAgent) -> float:
    metrics = http().get(f"{agent.url}/metrics", timeout=5).text
    line = next(x for x in metrics.splitlines() if x.startswith("edgepub_edge_log_write_failures"))
    return float(line.split()[-1])


def accounted(sent: int, *, healthy: bool = False) -> Callable[[dict[str, Any]], bool]:
    """The edge's log view counts every row sent as written or as failed (and, with
    ``healthy``, has written the gap line of those that failed)."""

    def check(view: dict[str, Any]) -> bool:
        log = view["log"]
        done = int(log["rows_written"]) + int(log["failed_rows"]) == sent
        return done and (bool(log["healthy"]) or not healthy)

    return check


def figures(log: dict[str, Any]) -> dict[str, Any]:
    keys = ("healthy", "rows_written", "write_failures", "failed_rows", "backlog", "last_error")
    return {k: log[k] for k in keys}


def test_a_disk_filling_up_mid_traffic_loses_only_what_it_counts(fleet: Fleet) -> None:
    agent = fleet.agent("sdcard", fleet.bundle("sdcard"))
    agent.wait_event("Node attestation was successful.", timeout=30)
    sent = fleet.send(agent, 20)
    fleet.logged(agent, sent)
    db = agent.persist / "logs" / "inference.db"
    files = [db, Path(f"{db}-wal"), Path(f"{db}-shm"), agent.child.log_path]
    assert agent.child.pid is not None
    disk = FullDisk(agent.child.pid)
    disk.fill(agent.child.log_path.stat().st_size + LOG_ROOM)
    print(f"disk full at {disk.limit} bytes; files: {sizes(*files)}")
    try:
        # inferences go on (Fleet.send asserts every answer is a 200) until the WAL reaches
        # the limit, then for a while with every write failing
        for _ in range(200):
            sent += fleet.send(agent, 5)
            if fleet.log_view(agent)["log"]["write_failures"] > 0:
                break
        else:
            raise AssertionError(f"no write failed under a {disk.limit} B limit: {sizes(*files)}")
        sent += fleet.send(agent, 30)
        full = fleet.watch(agent, accounted(sent), "every row sent written or failed")["log"]
        print(f"while full: {figures(full)}; files: {sizes(*files)}")
        assert not full["healthy"] and int(full["failed_rows"]) >= 30 * 5, full
        assert "disk" in str(full["last_error"]), full  # disk I/O error, or disk is full
        assert write_failures_metric(agent) == full["write_failures"] > 0
    finally:
        disk.free()
    sent += fleet.send(agent, 20)  # the next write after room is back succeeds
    recovered = fleet.watch(agent, accounted(sent, healthy=True), "the log to recover")["log"]
    held = fleet.at_ops({"sdcard": sent})
    print(f"recovered: {figures(recovered)}; gaps at Ops: {dict(held.gaps['sdcard'])}")
    # (a fresh log starts with a `reset` gap line of count 0: nothing lost)
    assert +held.gaps["sdcard"] == {"write_failed": recovered["failed_rows"]}
    assert held.rows["sdcard"] == recovered["rows_written"]
    assert agent.child.running()
