"""A published pipeline and real edge agents on it, started as their Docker Run says,
for the tests that count rows end to end: what each edge sent against what Ops holds."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edgepub import Client
from edgepub.samples import N_FEATURES, house_price_model

from .edge import EdgeAgent, http
from .log_pages import owner, pages_pending
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
        model_path: Path | None = None,
    ) -> None:
        self.client, self.registry, self.nats, self.work = client, registry, nats, work
        if model_path is None:
            model_path = house_price_model(work / "m.onnx", n_estimators=3)
        model = client.upload_model("rf", model_path)
        self.input = model.inputs[0].name
        self.publish = client.build_pipeline(PIPELINE).add_model_step(model).publish(progress=False)
        self.agents: list[EdgeAgent] = []

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        """Every agent it started is killed, pass or fail."""
        for agent in self.agents:
            agent.kill()

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

    def log_view(self, agent: EdgeAgent) -> dict[str, Any]:
        """The edge's own account of its log and its shipping (``GET /status``), as
        ``{"log": ..., "shipping": ...}``."""
        view = http().get(f"{agent.url}/status", timeout=5).json()
        return {"log": view["log"], "shipping": view["shipping"]}

    def watch(
        self,
        agent: EdgeAgent,
        until: Callable[[dict[str, Any]], bool],
        what: str,
        timeout: float = 60.0,
    ) -> dict[str, Any]:
        """Poll the edge's ``log_view`` every 10 ms (``wait_for`` backs off to 0.25 s: a
        replay can be over in less) until ``until(view)``; the view it saw."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                view: dict[str, Any] | None = self.log_view(agent)
            except (OSError, ValueError):  # a restarting agent: not yet
                view = None
            if view is not None and view["log"] is not None and until(view):
                return view
            if time.monotonic() >= deadline:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}: {view}")
            time.sleep(0.01)

    def mid_shipping(self, agent: EdgeAgent, timeout: float = 60.0) -> dict[str, Any]:
        """Once Ops acknowledged some of the edge's rows (not only a gap line) and not all
        of its log."""

        def shipping(view: dict[str, Any]) -> bool:
            log, shipper = view["log"], view["shipping"] or {}
            return int(shipper.get("rows", 0)) > 0 and log["watermark"] < log["last_seq"]

        return self.watch(agent, shipping, "the edge to be shipping its log", timeout)

    def pages_waiting(self) -> int:
        """Messages in the pages stream: pages the stream acked that no collector took."""

        async def count() -> int:
            nc = await owner(self.nats)
            try:
                return await pages_pending(nc)
            finally:
                await nc.close()

        return asyncio.run(count())

    def drained(self, timeout: float = 60.0) -> OpsLog:
        """What Ops holds once the collectors took every page the stream holds (with the
        edges stopped or quiet, it no longer changes)."""
        wait_for(lambda: self.pages_waiting() == 0, timeout, "the pages stream to drain")
        return ops_log(self.nats)
