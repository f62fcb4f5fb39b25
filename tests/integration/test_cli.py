"""The `edgepub` command for shell users, as a real process against real services."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from edgepub.demo import LOGS_STEP
from edgepub.samples import house_price_model
from edgepub.shared.stack_file import load_stack_info
from support.servers import NatsServer
from support.services import OpsServices, clean_environ
from support.waiting import wait_for

pytestmark = pytest.mark.timeout(240)
EDGEPUB = [sys.executable, "-c", "from edgepub.cli import main; main()"]


def run(args: list[str], nats: NatsServer, **kw: object) -> subprocess.CompletedProcess[str]:
    env = clean_environ()
    s = nats.settings()
    env.update(
        EDGEPUB_NATS_URL=s.url,
        EDGEPUB_NATS_USER=s.user or "",
        EDGEPUB_NATS_PASSWORD=s.password or "",
    )
    return subprocess.run(
        [*EDGEPUB, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_cli_upload_publish_list_show(
    ops: OpsServices, nats_server: NatsServer, tmp_path: Path
) -> None:
    model = house_price_model(tmp_path / "rf.onnx", n_estimators=3)
    up = run(["model", "upload", "rf", str(model), "--json"], nats_server)
    assert up.returncode == 0, up.stderr
    version = json.loads(up.stdout)["version"]

    pub = run(
        [
            "pipeline",
            "publish",
            "cli-demo",
            "--model",
            f"rf:{version}",
            "--cpus",
            "0.5",
            "--memory",
            "900Mi",
            "--json",
        ],
        nats_server,
    )
    assert pub.returncode == 0, pub.stderr
    record = json.loads(pub.stdout)
    assert record["status"] == "Published"
    assert record["engine_config"]["engine"]["resources"]["limits"] == {
        "cpu": 0.5,
        "memory": "900Mi",
    }

    listed = run(["pipeline", "publishes", "cli-demo", "--json"], nats_server)
    assert [p["id"] for p in json.loads(listed.stdout)] == [record["id"]]
    shown = run(["publish", "show", str(record["id"])], nats_server)
    assert shown.returncode == 0 and "Published" in shown.stdout and "docker run" in shown.stdout

    human = run(["pipeline", "publish", "cli-demo", "--model", "rf"], nats_server)
    assert "Waiting for pipeline publish" in human.stdout and "Published." in human.stdout


def test_cli_errors_name_the_problem(
    ops: OpsServices, nats_server: NatsServer, tmp_path: Path
) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00not onnx")
    out = run(["model", "upload", "bad", str(bad)], nats_server)
    assert out.returncode == 2
    assert "error [invalid_model]" in out.stderr and "bad.onnx" in out.stderr
    out = run(["pipeline", "publish", "x", "--model", "ghost"], nats_server)
    assert out.returncode == 2 and "error [not_found]" in out.stderr and "ghost" in out.stderr


def test_cli_without_a_stack_says_how_to_start_one(tmp_path: Path) -> None:
    env = clean_environ()
    env["EDGEPUB_HOME"] = str(tmp_path / "nowhere")
    out = subprocess.run(
        [*EDGEPUB, "pipeline", "publishes", "x"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2
    assert "edgepub up" in out.stderr


def test_readme_demo_runs_end_to_end(tmp_path: Path) -> None:
    """The README's first command, minus the setup it shares with this test run."""
    env = clean_environ()
    out = subprocess.run(
        [*EDGEPUB, "demo", "--data-dir", str(tmp_path / "demo")],
        env=env,
        capture_output=True,
        text=True,
        timeout=200,
        check=False,
        cwd=os.getcwd(),
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Published." in out.stdout
    assert "verified" in out.stdout and "MISMATCH" not in out.stdout
    assert "edge agent ready" in out.stdout
    assert '"out": {"variable": [' in out.stdout  # pandas-records answer
    assert '"outputs": [{"name": "variable"' in out.stdout  # Open Inference Protocol answer
    assert "demo complete" in out.stdout
    # It ends reading the rows back at Ops, after the edge was removed, with their partition
    # and both pipeline versions (the publish and its replace): 3 rows each.
    *before, last = out.stdout.split(f"==> {LOGS_STEP}\n")
    assert "still serves its cached pipeline locally" in before[-1]
    section = last.split("\n==> ")[0].strip().splitlines()
    header, frame, counts = section[0].split(), section[1:7], section[7:]
    assert header[-2:] == ["metadata.partition", "metadata.pipeline_version"]
    shown = [tuple(line.split()[-2:]) for line in frame]
    assert {partition for partition, _ in shown} == {"demo-edge"}
    versions = {version for _, version in shown}
    assert len(versions) == 2 and len(shown) == 6
    newest, oldest = shown[0][1], shown[-1][1]  # newest first: the replace's rows on top
    assert counts == [
        f"3 rows from demo-edge served by pipeline version {oldest} (publish 1)",
        f"3 rows from demo-edge served by pipeline version {newest} (publish 2, the replace)",
    ]
    assert last.split("\n==> ")[1].startswith("demo complete")


def test_the_demo_kept_up_shows_its_edge_and_traffic_on_the_dashboard(tmp_path: Path) -> None:
    """What a new user does after the demo (on a terminal it stays up): open the printed
    dashboard URL, log in as the SDK user, and see the demo's edge with traffic arriving."""
    home = tmp_path / "demo"
    proc = subprocess.Popen(
        [*EDGEPUB, "demo", "--keep", "--data-dir", str(home)],
        env=clean_environ() | {"PYTHONUNBUFFERED": "1"},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=os.getcwd(),
        start_new_session=True,  # its stack and agents with it: a failure kills them all
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        deadline = time.monotonic() + 200
        while not any("Ctrl-C stops" in x for x in lines):
            line = proc.stdout.readline()
            assert line and time.monotonic() < deadline, "".join(lines[-40:])
            lines.append(line)
        info = load_stack_info(home)
        assert info.dashboard_url and any(info.dashboard_url in x for x in lines)
        assert not any(info.sdk_password and info.sdk_password in x for x in lines)
        auth = base64.b64encode(f"{info.sdk_user}:{info.sdk_password}".encode()).decode()

        def get(path: str) -> Any:
            req = urllib.request.Request(
                info.dashboard_url.rstrip("/") + path, headers={"Authorization": f"Basic {auth}"}
            )
            with urllib.request.urlopen(req, timeout=10) as resp:
                return json.loads(resp.read())

        def edge_with_traffic() -> bool:
            rows = {r["name"]: r for r in get("/api/fleet")["rows"]}
            row = rows.get("demo-edge-2")
            return bool(row and row["connection"] == "online" and (row["requests"] or 0) > 0)

        wait_for(edge_with_traffic, 60, "demo-edge-2 online with traffic on the dashboard")
        traffic = get("/api/pipelines/house-price-demo")
        assert "demo-edge-2" in traffic["edges"] and traffic["rows"] > 0
        assert any(r["edge"] == "demo-edge-2" for r in traffic["latest"])
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # what a clean Ctrl-C left: nothing
        proc.wait()
