"""Logs of a replaced publish stay readable, across a replace that changed the rows' schema:
a real edge agent serves a random forest (input from the training data, output
``variable`` [N, 1]), the publish is replaced with ``replaces=[old]`` by a scaler (input
``tensor``, output ``scaled`` [N, 18]), and ``pipeline.logs()`` reads the rows of both
versions back at Ops, each with its own version, model and the edge as its partition.

nats-server, docker-registry, publish, registry-push, token, log-collector and
``edgepub-edge`` all run as processes on 127.0.0.1.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pytest
from structlog.testing import capture_logs

from edgepub import Client
from edgepub.samples import N_FEATURES, house_price_model
from support.edge import EdgeAgent, http, make_scaler
from support.ops_log import ops_log
from support.servers import NatsServer, RegistryServer
from support.waiting import wait_for

PIPELINE = "reshaped"
EDGE = "depot-r"


def send(agent: EdgeAgent, input_name: str, requests: int, rows: int) -> int:
    body = [{input_name: [0.01 * i] * N_FEATURES} for i in range(rows)]
    session = http()
    for _ in range(requests):
        resp = session.post(f"{agent.url}/pipelines/{PIPELINE}", json=body, timeout=10)
        assert resp.status_code == 200, resp.text
    return requests * rows


def logs(pipeline: Any, **kwargs: Any) -> tuple[Any, list[str]]:
    """What ``pipeline.logs`` returned and warned; every page the edge shipped was read
    whole by Arrow (none needed the line-by-line fallback)."""
    with warnings.catch_warnings(record=True) as caught, capture_logs() as events:
        warnings.simplefilter("always")
        got = pipeline.logs(**kwargs)
    assert [e for e in events if e["event"] == "log_page_read_by_lines"] == []
    return got, [str(w.message) for w in caught]


def test_rows_of_both_versions_read_back_after_a_replace_changed_their_schema(
    client: Client,
    nats_server: NatsServer,
    registry: RegistryServer,
    agents: list[EdgeAgent],
    tmp_path: Path,
) -> None:
    forest = client.upload_model("rf", house_price_model(tmp_path / "rf.onnx", n_estimators=3))
    pipeline = client.build_pipeline(PIPELINE).add_model_step(forest)
    first = pipeline.publish(progress=False)
    bundle = first.add_edge(EDGE).docker_run_variables["EDGE_BUNDLE"]
    agent = EdgeAgent(
        tmp_path / "edge",
        {
            "PIPELINE_URL": first.pipeline_url or "",
            "EDGE_BUNDLE": bundle,
            "OCI_USERNAME": registry.username,
            "OCI_PASSWORD": registry.password,
            "EDGEPUB_HEARTBEAT_S": "0.5",
            "LOCAL_INFERENCE_STORAGE": "64Mi",
            "PLATEAU_PAGE_SIZE": "20",
        },
    ).start()
    agents.append(agent)
    agent.wait_ready()
    agent.wait_event("Node attestation was successful.", timeout=30)
    (forest_in,) = (t.name for t in forest.inputs)
    before = send(agent, forest_in, requests=12, rows=5)

    scaler = client.upload_model("scaler", make_scaler(tmp_path / "scaler.onnx"))
    assert [t.name for t in scaler.inputs] == ["tensor"] != [forest_in]
    second = pipeline.clear().add_model_step(scaler).publish(replaces=[first], progress=False)
    assert second.pipeline_version_name != first.pipeline_version_name
    agent.wait_event("pipeline_swapped", timeout=60)
    wait_for(
        lambda: (
            [e.running_version for e in pipeline.list_edges()] == [second.pipeline_version_name]
        ),
        20,
        "the edge to report the new version",
    )
    after = send(agent, "tensor", requests=9, rows=4)

    held = wait_for(
        lambda: (log := ops_log(nats_server)).total(EDGE) >= before + after and log,
        60,
        "every row of both versions at Ops",
    )
    assert held.rows[EDGE] == before + after and held.lost[EDGE] == 0
    held.check_order()

    df, said = logs(pipeline, limit=1000, dataset=["*", "metadata"])
    assert isinstance(df, pd.DataFrame) and len(df) == before + after and said == []
    assert set(df["metadata.partition"]) == {EDGE}
    versions = df["metadata.pipeline_version"].value_counts().to_dict()
    assert versions == {first.pipeline_version_name: before, second.pipeline_version_name: after}
    old = df[df["metadata.pipeline_version"] == first.pipeline_version_name]
    new = df[df["metadata.pipeline_version"] == second.pipeline_version_name]
    assert df.index[: len(new)].equals(new.index)  # newest first: the scaler's rows on top
    assert old["out.variable"].map(len).eq(1).all() and old["out.scaled"].isna().all()
    assert new["out.scaled"].map(len).eq(N_FEATURES).all() and new["out.variable"].isna().all()
    assert old[f"in.{forest_in}"].notna().all() and old["in.tensor"].isna().all()
    assert new["in.tensor"].notna().all() and new[f"in.{forest_in}"].isna().all()
    assert list(new["out.scaled"].iloc[0]) == pytest.approx([0.015] * N_FEATURES)  # 0.03 / 2
    models = {(m["model_name"], m["model_sha"]) for m in map(json.loads, df["metadata.last_model"])}
    assert models == {("rf", forest.sha), ("scaler", scaler.sha)}

    start, end = df["time"].min(), df["time"].max() + pd.Timedelta(milliseconds=1)
    window, said = logs(
        pipeline,
        start_datetime=start.to_pydatetime(),
        end_datetime=end.to_pydatetime(),
        dataset=["time", "out", "metadata"],
        partition=EDGE,
        arrow=True,
    )
    assert isinstance(window, pa.Table) and said == []
    assert window.num_rows == before + after
    assert set(window.column("metadata.pipeline_version").to_pylist()) == {
        first.pipeline_version_name,
        second.pipeline_version_name,
    }
    assert logs(pipeline, partition="elsewhere")[0].empty
