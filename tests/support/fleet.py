"""A published pipeline and real edge agents on it, started as their Docker Run says,
for the tests that count rows end to end: what each edge sent against what Ops holds."""

from __future__ import annotations

import time
from pathlib import Path

from edgepub import Client
from edgepub.samples import N_FEATURES, house_price_model

from .edge import EdgeAgent, http
from .ops_log import OpsLog, ops_log
from .servers import NatsCluster, NatsServer, RegistryServer
from .waiting import wait_for

PIPELINE = "matrix"


class Fleet:
    """One published pipeline, and edge agents on it started as their Docker Run says."""

    def __init__(
        self,
        client: Client,
        registry: RegistryServer,
        nats: NatsServer | NatsCluster,
        work: Path,
    ) -> None:
        self.client, self.registry, self.nats, self.work = client, registry, nats, work
        model = client.upload_model("rf", house_price_model(work / "m.onnx", n_estimators=3))
        self.input = model.inputs[0].name
        self.publish = client.build_pipeline(PIPELINE).add_model_step(model).publish(progress=False)
        self.agents: list[EdgeAgent] = []

    def bundle(self, edge: str) -> str:
        return self.publish.add_edge(edge).docker_run_variables["EDGE_BUNDLE"]

    def agent(self, edge: str, bundle: str | None, **env: str) -> EdgeAgent:
        settings = {
            "PIPELINE_URL": self.publish.pipeline_url or "",
            "OCI_USERNAME": self.registry.username,
            "OCI_PASSWORD": self.registry.password,
            "EDGEPUB_HEARTBEAT_S": "0.5",
            "LOCAL_INFERENCE_STORAGE": "64Mi",
            "PLATEAU_PAGE_SIZE": "20",
            **env,
        }
        if bundle is not None:
            settings["EDGE_BUNDLE"] = bundle
        agent = EdgeAgent(self.work / edge, settings).start()
        self.agents.append(agent)
        agent.wait_ready()
        return agent

    def send(self, agent: EdgeAgent, requests: int, rows: int = 5) -> int:
        body = [{self.input: [0.01 * i] * N_FEATURES} for i in range(rows)]
        session = http()
        for _ in range(requests):
            resp = session.post(f"{agent.url}/pipelines/{PIPELINE}", json=body, timeout=10)
            assert resp.status_code == 200, resp.text
        return requests * rows

    def logged(self, agent: EdgeAgent, rows: int) -> None:
        """Wait until the edge's local log committed ``rows`` (a crash loses at most the
        batch not yet committed: the cells kill after the commit, during the shipping)."""

        def committed() -> bool:
            view = http().get(f"{agent.url}/status", timeout=5).json()["log"]
            return int(view["rows_written"]) >= rows

        wait_for(committed, 30, f"{rows} rows committed to the edge's local log")

    def at_ops(self, expected: dict[str, int], timeout: float = 90.0) -> OpsLog:
        """Wait until Ops accounts for every row of every edge, then check the data."""

        def complete() -> OpsLog | None:
            log = ops_log(self.nats)
            return log if all(log.total(e) >= n for e, n in expected.items()) else None

        held = wait_for(complete, timeout, f"Ops to account for {expected}")
        time.sleep(1.0)  # anything still in flight would show up as a duplicate now
        held = ops_log(self.nats)
        held.check_order()
        for edge, sent in expected.items():
            assert held.total(edge) == sent, (edge, held.rows[edge], held.lost[edge], sent)
        return held
